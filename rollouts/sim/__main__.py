"""`python -m rollouts.sim`: run the simulated model server."""

from rollouts.sim.server import main

if __name__ == "__main__":
    main()

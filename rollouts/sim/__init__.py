"""A simulated OpenAI-compatible model server that stands in for vLLM in demos, tests and benchmarks."""

from rollouts.sim.launch import SimServer, serve_in_thread, start_sim_server
from rollouts.sim.server import SimConfig

__all__ = ["SimConfig", "SimServer", "serve_in_thread", "start_sim_server"]

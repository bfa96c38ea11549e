"""`python -m rollouts.tokens`: the `rollouts tokens` command."""

import sys

from rollouts.tokens.command import main

if __name__ == "__main__":
    sys.exit(main())

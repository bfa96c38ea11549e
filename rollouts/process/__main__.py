"""`python -m rollouts.process INPUT... --objective ... --out URL`: the `rollouts process` command on its own."""

import sys

from .cli import main

sys.exit(main())

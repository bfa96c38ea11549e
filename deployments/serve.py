"""Serve the collect-rollouts flow as a deployment of this process: runs started from the Prefect UI, the API or
`prefect deployment run 'collect-rollouts/collect-rollouts'` execute here, with a CollectConfig as parameter.

    PREFECT_API_URL=http://127.0.0.1:4200/api python deployments/serve.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from commands.collect import prefect_defaults  # noqa: E402

if __name__ == "__main__":
    prefect_defaults(verbose=True)
    from flows.collect import collect_rollouts

    collect_rollouts.serve(name="collect-rollouts")

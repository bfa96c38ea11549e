"""Serve the collect-rollouts flow from this process, without a work pool: runs started from the Prefect UI, the API
or `prefect deployment run 'collect-rollouts/collect-rollouts'` execute here, with the given options as defaults.

    PREFECT_API_URL=http://127.0.0.1:4200/api python deployments/serve.py "$PWD/prompts.jsonl" --model-block sim
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from commands.collect import prefect_defaults  # noqa: E402
from deployments.deploy import config_parameters  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Every option of `rollouts collect` sets the served deployment's default.",
    )
    _, config = config_parameters(parser)
    prefect_defaults(verbose=True)
    from flows.sections import collect_from_sections

    # Default parameters for every required option, so a run started with no parameters is valid; a run gives only
    # what it changes, merged onto these.
    collect_from_sections.serve(name="collect-rollouts", parameters=config)

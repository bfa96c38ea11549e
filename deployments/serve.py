"""Serve the collect-rollouts flow from this process, without a work pool: runs started from the Prefect UI, the API
or `prefect deployment run 'collect-rollouts/collect-rollouts'` execute here, with the given options as defaults.

    PREFECT_API_URL=http://127.0.0.1:4200/api python deployments/serve.py --input "$PWD/prompts.jsonl" --model-block sim
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from commands.collect import prefect_defaults  # noqa: E402
from deployments.deploy import base_config  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True, help="prompts JSONL (path or URL): the default of config.input")
    parser.add_argument("--model-block", help="ModelEndpoint block name")
    parser.add_argument("--storage-block", help="RolloutStorage block name")
    parser.add_argument("--model-url", help="OpenAI-compatible base URL (without a model block)")
    parser.add_argument("--model", help="model name (without a model block)")
    parser.add_argument("--out", help="where runs go (without a storage block)")
    args = parser.parse_args()
    prefect_defaults(verbose=True)
    from flows.collect import collect_rollouts

    # Default parameters for every required option, so a run started with no parameters is valid.
    config = base_config(args.input, model_block=args.model_block, storage_block=args.storage_block,
                         model_url=args.model_url, model=args.model, out=args.out)
    collect_rollouts.serve(name="collect-rollouts", parameters={"config": config})

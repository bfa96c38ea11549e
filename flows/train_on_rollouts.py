"""`train-on-rollouts`: an example downstream flow, triggered by `rollouts.run.completed`, that reads the run's RL
training file named in the event and logs its row count. Replace its body with your trainer: the deployment in
deployments/deploy.py hands it the file's URL (and the storage block whose options open it)."""

import polars as pl
from prefect import flow, get_run_logger

from blocks import resolve_storage
from rollouts.storage import filesystem


@flow(name="train-on-rollouts", log_prints=False)
def train_on_rollouts(rl_file: str = "", storage_block: str = "") -> int:
    """Read the RL training file of a finished collection and report its rows (a stand-in for a trainer).

    Args:
        rl_file: the run's RL file (`train/rl/rollouts.parquet`), a local path or fsspec URL: the event's
            `outputs.rl[0]`
        storage_block: a RolloutStorage block whose filesystem options open `rl_file` (object storage)
    """
    logger = get_run_logger()
    if not rl_file:
        logger.warning("the run wrote no RL training file (it was collected without the rl objective): nothing to do")
        return 0
    options = resolve_storage(storage_block).storage_options if storage_block else {}
    fs, path = filesystem(rl_file, options)
    with fs.open(path, "rb") as fh:
        rows = pl.read_parquet(fh).height
    logger.info("training on %d rollouts from %s", rows, rl_file)
    return rows


if __name__ == "__main__":
    train_on_rollouts()

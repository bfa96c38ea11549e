"""Filter stage: load a run's rollouts once, then apply each objective's rules (RL, SFT, DPO) to them.

The rules themselves live in `rollouts.process` (shared with `rollouts process`); this is the run-level step the flow
calls. Selections are Parquet files in the run's `train/.work/`, so tasks pass them around cheaply.
"""

from __future__ import annotations

from rollouts.process.readers import load_rollouts
from rollouts.run import RunRef, run_store
from rollouts.storage import join
from rollouts.training.api import Selection, select


def filter_run(run: RunRef) -> list[Selection]:
    options = run.config.storage.options
    run_store(run).remove("train", ".work")  # an earlier attempt's intermediate frame: rebuilt from the rollouts
    workdir = join(run.run_url, "train", ".work")
    configs = run.config.process_configs()
    loaded = load_rollouts(
        [run.run_url], storage_options=options, workdir=workdir, skip_bad_rows=run.config.train.skip_bad_rows
    )
    return [select(loaded, config, workdir=workdir, storage_options=options) for config in configs]

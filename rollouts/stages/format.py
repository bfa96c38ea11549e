"""Format stage: write one objective's selection of a run as training files, with its data card, under
`<run>/train/`."""

from __future__ import annotations

from rollouts.run import RunRef
from rollouts.storage import join
from rollouts.training.api import ProcessResult, Selection, write_outputs


def format_run(run: RunRef, selection: Selection) -> ProcessResult:
    config = run.config.train.for_objective(selection.objective)
    return write_outputs(selection, config, join(run.run_url, "train"), storage_options=run.config.storage.options)

"""Provider batch APIs (OpenAI Batch and Files APIs and compatible servers): half-price requests, answered within 24 h.

BatchAPI     the HTTP calls (api.py)          BatchState  the resumable record (state.py)
BatchRunner  plan, submit, poll, collect, resubmit, resume, cancel (runner.py)
build_files  request lines split by BatchLimits (jsonl.py); classify: replies and typed failures (results.py)
"""

from rollouts.batch.api import BatchAPI, BatchAPIError, BatchObject, RequestCounts
from rollouts.batch.jsonl import CHAT, RESPONSES, BatchFile, BatchInputError, BatchLimits, build_files, request_line
from rollouts.batch.results import JobResults, RequestFailure, classify
from rollouts.batch.runner import BatchOutcome, BatchRunError, BatchRunner
from rollouts.batch.state import BatchJob, BatchState

__all__ = [
    "CHAT",
    "RESPONSES",
    "BatchAPI",
    "BatchAPIError",
    "BatchFile",
    "BatchInputError",
    "BatchJob",
    "BatchLimits",
    "BatchObject",
    "BatchOutcome",
    "BatchRunError",
    "BatchRunner",
    "BatchState",
    "JobResults",
    "RequestCounts",
    "RequestFailure",
    "build_files",
    "classify",
    "request_line",
]

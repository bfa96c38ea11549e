"""Exceptions, named after the boundary where they happen.

    RolloutsError
    ├── ConfigError          bad options, unknown environment, run-name clash, a secret where it would be stored
    │   └── RunLockedError   another command holds the run's lock (its host, pid and start are in the message)
    ├── InputError           the input as a whole is empty or unreadable (bad single rows are rejects, not errors)
    │   └── RowError         one input row is malformed; becomes a line of rejects.jsonl
    ├── ProviderError        the model endpoint answered with an error status (status_code) or not at all
    │   ├── ProviderTimeout     no complete answer within --request-timeout (connect to last byte)
    │   ├── ResponseParseError  the endpoint answered 2xx with a body we cannot read (retried like a 5xx)
    │   │   └── TokenFieldsError   token ids were asked for and the reply has none we can read
    │   ├── ResponseTooLarge    the body passed --max-response-bytes (not retried)
    │   └── ModelOutputError    the server could not read the model's own output, e.g. its tool-call parser refused
    │                           it (not retried: the agent loop ends the rollout with end reason `unparseable_output`)
    ├── VerifierError        an environment could not score a rollout (remote verifier down, bad reply)
    ├── ToolError            a tool call failed; the model sees the message as the tool's output
    ├── RolloutTimeout       the whole rollout (session, model and tool calls, retries) passed --rollout-timeout
    ├── InternalError        an unexpected exception inside the collector; its message names the Python type
    ├── WorkerLost           a collector process ended with shards in flight (killed, out of memory)
    ├── StorageError         reading or writing the run's files failed
    ├── Interrupted          a stop was requested (SIGINT/SIGTERM): the stage ended early, finished work is kept
    ├── RunFailedError       too many failed rollouts: the run ends Failed (`summary`: the run's final counts)
    ├── ConversionError      a Responses item cannot become a chat message (also a ValueError)
    └── TokenDataError       a rollout's token fields are inconsistent (also a ValueError)

Every error declares what it carries: `status_code`, `retryable` (None: the class's default), `attempts`,
`retry_after_s`, and `context` for details of one boundary (the missing key, the route). It pickles with all of
them (`__reduce__`), because Prefect moves exceptions across threads and processes. A failed rollout stores
`error.as_record(stage)`: type, message, status_code, stage, retryable (whether the same command run again may
succeed) and attempts (tries of the request that failed).
"""

from __future__ import annotations

from typing import Any, ClassVar, Self


class RolloutsError(Exception):
    # Whether running the same command again may succeed; subclasses and the `retryable` attribute refine it.
    retryable_by_default: ClassVar[bool] = True

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        retryable: bool | None = None,
        attempts: int | None = None,
        retry_after_s: float | None = None,
        **context: Any,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.retryable = retryable
        self.attempts = attempts
        self.retry_after_s = retry_after_s
        self.context: dict[str, Any] = context

    def add(
        self,
        *,
        status_code: int | None = None,
        retryable: bool | None = None,
        attempts: int | None = None,
        **context: Any,
    ) -> Self:
        """Attach more context (the attempt count, the status) on the way up; None leaves a value as it is."""
        if status_code is not None:
            self.status_code = status_code
        if retryable is not None:
            self.retryable = retryable
        if attempts is not None:
            self.attempts = attempts
        self.context.update(context)
        return self

    def _state(self) -> dict[str, Any]:
        return {
            "status_code": self.status_code,
            "retryable": self.retryable,
            "attempts": self.attempts,
            "retry_after_s": self.retry_after_s,
            **self.context,
        }

    def __reduce__(self) -> tuple[Any, ...]:  # keep every attribute through pickling
        return (_rebuild, (type(self), self.message, self._state()))

    @property
    def is_retryable(self) -> bool:
        return self.retryable_by_default if self.retryable is None else bool(self.retryable)

    def as_record(self, stage: str | None = None) -> dict[str, Any]:
        record: dict[str, Any] = {"type": type(self).__name__, "message": self.message, "status_code": self.status_code}
        if stage:
            record["stage"] = stage
        record["retryable"] = self.is_retryable
        record["attempts"] = int(self.attempts or 1)
        return record


def _rebuild(cls: type[RolloutsError], message: str, state: dict[str, Any]) -> RolloutsError:
    return cls(message, **state)


class ConfigError(RolloutsError):
    retryable_by_default = False


class RunLockedError(ConfigError):
    """The run is being written by another command: one writer per run (rollouts/lock.py)."""


class InputError(RolloutsError):
    """`file` and `line` name the row that made the input unreadable, when one did."""

    retryable_by_default = False

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None, **fields: Any) -> None:
        super().__init__(message, **fields)
        self.file, self.line = file, line

    def _state(self) -> dict[str, Any]:
        return {**super()._state(), "file": self.file, "line": self.line}


class RowError(InputError):
    """One input row is malformed; it becomes a line of rejects.jsonl."""


class ProviderError(RolloutsError):
    """`status_code` is None for connection errors and timeouts; `retryable` says whether a retry may help."""


class ProviderTimeout(ProviderError):
    pass


class ResponseParseError(ProviderError):
    pass


class TokenFieldsError(ResponseParseError):
    """Token ids were asked for and the reply lacks them or contradicts itself; `missing` names the absent fields."""

    def __init__(self, message: str, *, missing: list[str] | None = None, **fields: Any) -> None:
        super().__init__(message, **fields)
        self.missing = missing or []

    def _state(self) -> dict[str, Any]:
        return {**super()._state(), "missing": self.missing}

    @property
    def only_prompt_missing(self) -> bool:
        """Generation ids came (e.g. as `token_id:N` logprobs) but prompt ids did not: `/tokenize` can supply them."""
        return self.missing == ["prompt_token_ids"]


class ResponseTooLarge(ProviderError):
    retryable_by_default = False


class ModelOutputError(ProviderError):
    """The server answered an error because it could not read what the model generated (llama.cpp's HTTP 500 "The
    model produced output that does not match the expected ... format"): a fault of the model's output, not of the
    server, so the request is not repeated (at temperature 0 it would generate the same text)."""

    retryable_by_default = False


class VerifierError(RolloutsError):
    pass


class ToolError(RolloutsError):
    """A tool call that cannot run (unknown tool, bad arguments, the tool raised): the model gets the message as the
    tool's output and the rollout goes on."""


class RolloutTimeout(RolloutsError):
    pass


class InternalError(RolloutsError):
    retryable_by_default = False  # a bug does not fix itself on a re-run


class WorkerLost(RolloutsError):
    """A collector process ended with shards in flight (killed, or out of memory): they are generated again."""


class StorageError(RolloutsError):
    pass


class Interrupted(RolloutsError):
    pass


class RunFailedError(RolloutsError):
    """The run ended Failed; `summary` is its final summary (a dict), when the run got far enough to have one."""

    def __init__(self, message: str, *, summary: dict[str, Any] | None = None, **fields: Any) -> None:
        super().__init__(message, **fields)
        self.summary = summary

    def _state(self) -> dict[str, Any]:
        return {**super()._state(), "summary": self.summary}


class ConversionError(RolloutsError, ValueError):
    """A Responses item that cannot become a chat message (an unknown item type, a call without its id)."""

    retryable_by_default = False


class TokenDataError(RolloutsError, ValueError):
    """A rollout's token fields are inconsistent (lengths disagree, ids missing on one call)."""

    retryable_by_default = False


def typed(exc: BaseException, boundary: type[RolloutsError] = InternalError) -> RolloutsError:
    """The project's own error for any exception: ours as they are, a foreign one wrapped in `boundary` with its
    Python type in the message only, so no raw exception type reaches a failure row."""
    if isinstance(exc, RolloutsError):
        return exc
    detail = str(exc) or repr(exc)
    return boundary(f"{type(exc).__name__}: {detail[:500]}", python_type=type(exc).__name__)


def error_record(exc: BaseException, stage: str) -> dict[str, Any]:
    """A typed error record (`records.FailureRecord`) for any exception."""
    return typed(exc).as_record(stage)

"""Exceptions, named after the boundary where they happen.

    RolloutsError
    ├── ConfigError          bad options, unknown environment, run-name clash, a secret where it would be stored
    ├── InputError           the input as a whole is empty or unreadable (bad single rows are rejects, not errors)
    ├── RowError             one input row is malformed; becomes a line of rejects.jsonl
    ├── ProviderError        the model endpoint answered with an error status (status_code) or not at all
    │   ├── ProviderTimeout     no complete answer within --request-timeout (connect to last byte)
    │   ├── ResponseParseError  the endpoint answered 2xx with a body we cannot read (retried like a 5xx)
    │   └── ResponseTooLarge    the body passed --max-response-bytes (not retried)
    ├── VerifierError        an environment could not score a rollout (remote verifier down, bad reply)
    ├── RolloutTimeout       the whole rollout (session, model and tool calls, retries) passed --rollout-timeout
    ├── InternalError        an unexpected exception inside the collector; its message names the Python type
    ├── StorageError         reading or writing the run's files failed
    ├── Interrupted          a stop was requested (SIGINT/SIGTERM): the stage ended early, finished work is kept
    └── RunFailedError       too many failed rollouts: the run ends Failed

Every error pickles with its fields (`__reduce__`), because Prefect moves exceptions across threads and processes.
A failed rollout stores `error.as_record(stage)`: type, message, status_code, stage, retryable (whether the same
command run again may succeed) and attempts (tries of the request that failed).
"""

from __future__ import annotations

from typing import Any


class RolloutsError(Exception):
    # Whether running the same command again may succeed; subclasses and the `retryable` field refine it.
    retryable_by_default = True

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields
        for key, value in fields.items():
            setattr(self, key, value)

    def add(self, **fields: Any) -> RolloutsError:
        """Attach more context (e.g. the attempt count) on the way up."""
        self.fields.update(fields)
        for key, value in fields.items():
            setattr(self, key, value)
        return self

    def __reduce__(self):  # keep fields through pickling
        return (_rebuild, (type(self), self.message, self.fields))

    @property
    def is_retryable(self) -> bool:
        value = self.fields.get("retryable")
        return self.retryable_by_default if value is None else bool(value)

    def as_record(self, stage: str | None = None) -> dict[str, Any]:
        record: dict[str, Any] = {"type": type(self).__name__, "message": self.message}
        record["status_code"] = self.fields.get("status_code")
        if stage:
            record["stage"] = stage
        record["retryable"] = self.is_retryable
        record["attempts"] = int(self.fields.get("attempts") or 1)
        return record


def _rebuild(cls: type[RolloutsError], message: str, fields: dict[str, Any]) -> RolloutsError:
    return cls(message, **fields)


class ConfigError(RolloutsError):
    retryable_by_default = False


class InputError(RolloutsError):
    retryable_by_default = False


class RowError(RolloutsError):
    retryable_by_default = False


class ProviderError(RolloutsError):
    """`status_code` is None for connection errors and timeouts; `retryable` says whether a retry may help."""

    pass


class ProviderTimeout(ProviderError):
    pass


class ResponseParseError(ProviderError):
    pass


class ResponseTooLarge(ProviderError):
    retryable_by_default = False


class VerifierError(RolloutsError):
    pass


class RolloutTimeout(RolloutsError):
    pass


class InternalError(RolloutsError):
    retryable_by_default = False  # a bug does not fix itself on a re-run


class StorageError(RolloutsError):
    pass


class Interrupted(RolloutsError):
    pass


class RunFailedError(RolloutsError):
    pass


def typed(exc: BaseException, boundary: type[RolloutsError] = InternalError) -> RolloutsError:
    """The project's own error for any exception: ours as they are, a foreign one wrapped in `boundary` with its
    Python type in the message only, so no raw exception type reaches a failure row."""
    if isinstance(exc, RolloutsError):
        return exc
    detail = str(exc) or repr(exc)
    return boundary(f"{type(exc).__name__}: {detail[:500]}", python_type=type(exc).__name__)


def error_record(exc: BaseException, stage: str) -> dict[str, Any]:
    """A typed error record (`records.RolloutError`) for any exception."""
    return typed(exc).as_record(stage)

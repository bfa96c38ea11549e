"""Exceptions, named after the boundary where they happen.

    RolloutsError
    ├── ConfigError          bad options, unknown environment, run-name clash (the user must change something)
    ├── InputError           the input as a whole is empty or unreadable (bad single rows are rejects, not errors)
    ├── RowError             one input row is malformed; becomes a line of rejects.jsonl
    ├── ProviderError        the model endpoint answered with an error status (status_code) or not at all
    │   └── ResponseParseError  the endpoint answered 2xx with a body we cannot read
    ├── VerifierError        an environment could not score a rollout (remote verifier down, bad reply)
    ├── StorageError         reading or writing the run's files failed
    └── RunFailedError       too many failed rollouts: the run ends Failed

Every error pickles with its fields (`__reduce__`), because Prefect moves exceptions across threads and processes.
A failed rollout stores `error.as_record()`.
"""

from __future__ import annotations

from typing import Any


class RolloutsError(Exception):
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

    def as_record(self, stage: str | None = None) -> dict[str, Any]:
        record: dict[str, Any] = {"type": type(self).__name__, "message": self.message}
        record["status_code"] = self.fields.get("status_code")
        if stage:
            record["stage"] = stage
        return record


def _rebuild(cls: type[RolloutsError], message: str, fields: dict[str, Any]) -> RolloutsError:
    return cls(message, **fields)


class ConfigError(RolloutsError):
    pass


class InputError(RolloutsError):
    pass


class RowError(RolloutsError):
    pass


class ProviderError(RolloutsError):
    """`status_code` is None for connection errors and timeouts; `retryable` says whether a retry may help."""

    pass


class ResponseParseError(ProviderError):
    pass


class VerifierError(RolloutsError):
    pass


class StorageError(RolloutsError):
    pass


class RunFailedError(RolloutsError):
    pass


def error_record(exc: BaseException, stage: str) -> dict[str, Any]:
    """A typed error record (`records.RolloutError`) for any exception (foreign ones keep their class name)."""
    if isinstance(exc, RolloutsError):
        return exc.as_record(stage)
    return {"type": type(exc).__name__, "message": str(exc) or repr(exc), "status_code": None, "stage": stage}

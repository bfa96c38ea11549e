"""Exit codes and the one way a command reports a user's mistake: one line on stderr, no traceback unless --verbose."""

from __future__ import annotations

import contextlib
import sys
import traceback
from collections.abc import Iterator
from typing import TYPE_CHECKING

from rollouts.errors import ConfigError, InputError, RolloutsError

if TYPE_CHECKING:
    from rich.console import Console

EXIT_OK, EXIT_RUN_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def error(message: str, console: Console | None = None) -> None:
    """`error: <message>` on stderr (through a rich console when the command has one, never as markup)."""
    if console is None:
        print(f"error: {message}", file=sys.stderr, flush=True)
        return
    console.print("[red]error:[/] ", end="")
    console.print(message, markup=False, highlight=False, soft_wrap=True)


class Guard:
    code = EXIT_OK


@contextlib.contextmanager
def usage_guard(
    verbose: bool = False,
    usage: tuple[type[RolloutsError], ...] = (ConfigError, InputError),
    interrupted: str = "interrupted: run the same command again to resume where it stopped",
) -> Iterator[Guard]:
    """Turn the project's own errors into one clear line and an exit code (`usage` ones: 2, others: 1; Ctrl-C: 130
    with the `interrupted` line); anything else keeps its traceback."""
    guard = Guard()
    try:
        yield guard
    except usage as exc:
        if verbose:
            traceback.print_exc()
        error(exc.message)
        guard.code = EXIT_USAGE
    except RolloutsError as exc:
        if verbose:
            traceback.print_exc()
        error(exc.message)
        guard.code = EXIT_RUN_FAILED
    except KeyboardInterrupt:
        error(interrupted)
        guard.code = EXIT_INTERRUPTED

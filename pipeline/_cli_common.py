"""Pieces shared by every CLI command: the ``--json`` option, one-line errors and exit codes.

Exit codes: 0 ok, 1 unexpected failure, 2 bad input, 3 privacy refusal (nothing released, nothing charged).
Library code never prints or exits; commands call :func:`user_errors` and :func:`emit`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer

from accountant.errors import AccountantError
from index.errors import IndexStoreError
from pipeline.errors import PipelineError

JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]

DPRDM_ERRORS = (IndexStoreError, AccountantError, PipelineError)


def error_line(message: str, *, json_mode: bool = False, kind: str = "InputError") -> str:
    """The one stderr line of an error: ``Error: <message>``, or ``{"error": {...}}`` with ``--json``."""
    message = " ".join(str(message).split())  # always one line
    if json_mode:
        return json.dumps({"error": {"type": kind, "message": message}})
    return f"Error: {message}"


def fail(
    message: str, *, exit_code: int = 2, json_mode: bool = False, kind: str = "InputError"
) -> typer.Exit:
    """Print a one-line error on stderr (JSON with ``--json``) and return the ``typer.Exit`` to raise."""
    typer.echo(error_line(message, json_mode=json_mode, kind=kind), err=True)
    return typer.Exit(code=exit_code)


@contextmanager
def user_errors(json_mode: bool = False) -> Iterator[None]:
    """Translate dprdm errors (and OS errors on user paths) into one stderr line and their exit code."""
    try:
        yield
    except DPRDM_ERRORS as err:
        raise fail(str(err), exit_code=err.exit_code, json_mode=json_mode, kind=type(err).__name__) from None
    except (FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError) as err:
        raise fail(
            f"{err.filename or err}: {err.strerror or err}; check the path and its permissions",
            exit_code=2,
            json_mode=json_mode,
            kind=type(err).__name__,
        ) from None
    except KeyboardInterrupt:
        raise fail("interrupted; nothing partial was written", exit_code=130, json_mode=json_mode) from None


def emit(payload: Any, *, json_mode: bool, human: Callable[[Any], str]) -> None:
    """Print ``payload`` as one JSON document (``--json``) or as the human text ``human(payload)``."""
    if json_mode:
        sys.stdout.write(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    else:
        typer.echo(human(payload))

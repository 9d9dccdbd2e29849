"""Pieces shared by every CLI command: the one Typer configuration, the shared options, output and error lines.

Exit codes: 0 ok, 1 unexpected failure, 2 bad input, 3 privacy refusal (nothing released, nothing charged),
130 interrupted. Commands never print errors or pick exit codes: they raise dprdm's typed errors and the root
group in :mod:`pipeline.cli` turns every error into one stderr line and its exit code.

This module stays light (typer and the standard library only) so that ``dprdm --help``, ``--version`` and the
read-only budget commands start without importing torch, diffusers, faiss or open_clip.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from pipeline._files import LEDGER_NAME

EXIT_CODES = "Exit codes: 0 ok, 1 unexpected failure, 2 bad input, 3 privacy refusal (nothing released or charged)."

# -- the shared options, each defined once ------------------------------------------------------------------------
_INDEX = typer.Option(
    "--index", metavar="DIR", show_default=False,
    help=f"Private index folder (from 'dprdm index build'); it is bound to its one ledger (default DIR/{LEDGER_NAME}).",
)  # fmt: skip
IndexOption = Annotated[Path, _INDEX]
OptionalIndexOption = Annotated[Path | None, _INDEX]
LedgerOption = Annotated[
    str | None,
    typer.Option("--ledger", metavar="PATH|URL", show_default=False,
                 help=f"Budget ledger: a file, or postgresql://USER@HOST/DB[?schema=NAME] with the 'scale' extra "
                      f"(default: the index's one ledger, INDEX/{LEDGER_NAME})."),
]  # fmt: skip
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
ThreadsOption = Annotated[
    int | None,
    typer.Option("--threads", metavar="N", min=1, show_default=False, help="Torch threads (default: torch's)."),
]
_SHARD = typer.Option(
    "--shard", metavar="NAME",
    help="Shard: a privacy compartment with its own budget scope (index build/add: 'default'; budget init: "
    "every shard; audit: the only one).",
)  # fmt: skip
ShardOption = Annotated[str, _SHARD]
OptionalShardOption = Annotated[str | None, _SHARD]
ShardsOption = Annotated[
    list[str] | None,
    typer.Option("--shard", metavar="NAME", show_default=False,
                 help="Shard to query (repeat for several); default: every shard."),
]  # fmt: skip
DEFAULT_SHARD = "default"


class PlainHelpCommand(TyperCommand):
    """A command whose ``--help`` shows no Python types: ``SOURCE`` rather than ``{SOURCE}`` / ``SOURCE <str>``."""

    _ARGUMENT_TYPE = re.compile(r"^(  [A-Z][A-Z0-9_]*) <[^>\n]*>", re.MULTILINE)  # "  SOURCE <str>  help"
    _REQUIRED_ARGUMENT = re.compile(r"\{([A-Z][A-Z0-9_]*)\}")  # usage line "{SOURCE}"

    def get_help(self, ctx: Any) -> str:
        text = self._REQUIRED_ARGUMENT.sub(r"\1", super().get_help(ctx))
        return self._ARGUMENT_TYPE.sub(lambda m: m.group(1) + " " * (len(m.group(0)) - len(m.group(1))), text)


class _Typer(typer.Typer):
    """``typer.Typer`` whose commands default to :class:`PlainHelpCommand`."""

    def command(self, *args: Any, cls: type[TyperCommand] | None = None, **kwargs: Any) -> Any:
        return super().command(*args, cls=cls or PlainHelpCommand, **kwargs)


def make_typer(*, help: str, epilog: str | None = EXIT_CODES, **settings: Any) -> typer.Typer:  # noqa: A002
    """The one Typer configuration of dprdm: plain one-line errors, no locals in tracebacks, ``-h``, no completion."""
    return _Typer(
        help=help,
        epilog=epilog,
        no_args_is_help=True,
        rich_markup_mode=None,
        pretty_exceptions_enable=False,
        pretty_exceptions_show_locals=False,
        add_completion=False,
        context_settings={"help_option_names": ["-h", "--help"]},
        **settings,
    )


def error_line(message: str, *, json_mode: bool = False, kind: str = "InputError") -> str:
    """The one stderr line of an error: ``Error: <message>``, or ``{"error": {...}}`` with ``--json``."""
    message = " ".join(str(message).split())  # always one line
    if json_mode:
        return json.dumps({"error": {"type": kind, "message": message}})
    return f"Error: {message}"


def emit(payload: Any, *, json_mode: bool, human: Callable[[Any], str]) -> None:
    """Print ``payload`` as one JSON document (``--json``) or as the human text ``human(payload)``."""
    if json_mode:
        sys.stdout.write(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    else:
        typer.echo(human(payload))


class after_commit:  # noqa: N801  (a context manager used like a statement)
    """Make a Ctrl-C that lands after a commit say so: print ``done`` on stderr and exit 0 instead of 130.

    Wrap what a command still does once the library call has committed (printing the report), e.g.
    ``with after_commit("the build of shard 'a' committed"): emit(...)``.
    """

    def __init__(self, done: str) -> None:
        self.done = done

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: Any) -> bool:
        if kind is not None and issubclass(kind, KeyboardInterrupt):
            typer.echo(f"interrupted after the commit: {self.done}; nothing is lost", err=True)
            return True  # swallowed: the command's work is committed, exit 0
        return False

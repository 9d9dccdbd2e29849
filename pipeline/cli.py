"""The ``dprdm`` command line: ``dprdm <noun> <verb>`` over the index, the budget ledger and the generator.

Exit codes: 0 ok, 1 unexpected failure, 2 bad input, 3 privacy refusal (nothing released, nothing charged),
130 interrupted. Each command group lives in its own module (``cli_index``, ``cli_budget``, ``cli_generate``,
``cli_audit``, ``cli_train``); this module assembles them and is **the one place that turns errors into output**:

* usage errors (bad value, unknown or missing option) -> one ``Error:`` line (JSON with ``--json``), exit 2;
* dprdm's errors (``IndexStoreError``, ``AccountantError``, ``PipelineError`` and their subclasses) -> their
  message on one line and their ``exit_code``;
* an ``OSError`` about a path the user typed on the command line (``--index DIR``, ``--out``, a SOURCE ...)
  -> one line, exit 2; the same error about any other path comes from inside the library: a bug, exit 1;
* anything else is unexpected -> one line, exit 1 (``dprdm --debug ...`` re-raises it with the traceback);
* Ctrl-C -> one line, exit 130.

Commands raise typed errors and never print them. The demo (``make demo``) goes through the same function.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

import typer
from typer.core import TyperGroup

from pipeline import (
    cli_attribute,
    cli_audit,
    cli_budget,
    cli_compartments,
    cli_data,
    cli_finetune,
    cli_generate,
    cli_index,
    cli_train,
)
from pipeline._cli_common import EXIT_CODES, error_line, make_typer
from pipeline._files import expand_user
from pipeline.cli_serve import register as register_serve
from pipeline.errors import PipelineInputError

# typer vendors click privately (typer._click); its UsageError is reachable through public names only as the
# base class of the public ``typer.BadParameter``.
_UsageError: type[Exception] = typer.BadParameter.__base__
assert _UsageError.__name__ == "UsageError"  # noqa: S101  (import-time check of the line above)
_FLAGS_KEY = "dprdm.flags"
# (module, base class) of dprdm's error hierarchies; looked up in sys.modules so that mapping an error never
# imports a package (if the package was never imported, none of its errors can have been raised).
_ERROR_BASES = (("index.errors", "IndexStoreError"), ("accountant.errors", "AccountantError"),
                ("pipeline.errors", "PipelineError"))  # fmt: skip
_INTERRUPTED = "interrupted (Ctrl-C); files are written atomically and charges are all-or-none, so nothing partial was written"


@dataclass(frozen=True, slots=True)
class _Flags:
    """What the root group knows of the command line before any command runs."""

    json: bool = False
    debug: bool = False
    argv: tuple[str, ...] = ()


def _dprdm_error(err: BaseException) -> bool:
    for module_name, base_name in _ERROR_BASES:
        module = sys.modules.get(module_name)
        if module is not None and isinstance(err, getattr(module, base_name)):
            return True
    return False


def _user_paths(argv: Iterable[str]) -> set[str]:
    """Absolute forms of every command-line token (and ``--opt=value`` value) that could name a path."""
    paths: set[str] = set()
    for token in argv:
        for candidate in (token, token.partition("=")[2]):
            if candidate and not candidate.startswith("-"):
                try:
                    paths.add(os.path.abspath(expand_user(candidate)))
                except (PipelineInputError, ValueError):  # '~nosuchuser', NUL byte: not a usable path anyway
                    continue
    return paths


def _is_user_path_error(err: BaseException, argv: Iterable[str]) -> bool:
    """True for an ``OSError`` about a path the user typed (not one the library derived from it)."""
    if not isinstance(err, OSError):
        return False
    names = [name for name in (err.filename, err.filename2) if name is not None]
    user = _user_paths(argv)
    return any(os.path.abspath(os.fsdecode(name)) in user for name in names)


def _classify(err: Exception, argv: Iterable[str]) -> tuple[int, str, str]:
    """``(exit code, error type, one-line message)`` of an error raised by a command."""
    if _dprdm_error(err):
        return int(err.exit_code), type(err).__name__, str(err)
    if _is_user_path_error(err, argv):
        assert isinstance(err, OSError)  # noqa: S101  (narrowing for the type checker)
        name = os.fsdecode(err.filename)
        return 2, type(err).__name__, f"{name}: {err.strerror or err}; check the path and its permissions"
    return 1, "InternalError", (
        f"unexpected internal error ({type(err).__name__}: {err}); this is a bug in dprdm, not in your input; "
        "re-run with 'dprdm --debug ...' for the traceback and report it"
    )


@contextmanager
def errors_to_exit(*, json_mode: bool = False, argv: Iterable[str] = (), debug: bool = False) -> Iterator[None]:
    """THE translation of errors into output: one stderr line (JSON with ``--json``) and ``typer.Exit(code)``.

    Args:
        json_mode: print ``{"error": {"type", "message"}}`` instead of ``Error: <message>``.
        argv: the command line; an ``OSError`` naming one of its paths is bad input (2), any other is a bug (1).
        debug: re-raise unexpected errors (exit 1) with their traceback instead of the one line.
    """
    try:
        yield
    except (typer.Exit, typer.Abort, typer.TyperException):  # typer's own control flow and usage errors
        raise
    except KeyboardInterrupt:
        typer.echo(error_line(_INTERRUPTED, json_mode=json_mode, kind="Interrupted"), err=True)
        raise typer.Exit(code=130) from None
    except Exception as err:
        code, kind, message = _classify(err, tuple(argv))
        if code == 1 and debug:
            raise
        typer.echo(error_line(message, json_mode=json_mode, kind=kind), err=True)
        raise typer.Exit(code=code) from None


class _OneLineUsageError(_UsageError):
    """A usage error shown as dprdm's one stderr line (``Error: ...``, or JSON with ``--json``); exit code 2."""

    def __init__(self, message: str, *, json_mode: bool) -> None:
        super().__init__(message)
        self.json_mode = json_mode

    def show(self, file: IO[Any] | None = None) -> None:
        typer.echo(error_line(self.message, json_mode=self.json_mode, kind="UsageError"), file=file, err=True)


@contextmanager
def _one_line_usage_errors(json_mode: bool) -> Iterator[None]:
    """Re-raise click/typer usage errors (bad value, unknown option, missing option) as one-line errors."""
    try:
        yield
    except _OneLineUsageError:
        raise
    except _UsageError as err:
        if type(err).__name__ == "NoArgsIsHelpError":  # bare 'dprdm' / 'dprdm budget' print their help
            raise
        message = err.format_message()
        ctx = getattr(err, "ctx", None)
        if ctx is not None:
            message = f"{message.rstrip('.')}; see '{ctx.command_path} --help'"
        raise _OneLineUsageError(message, json_mode=json_mode) from None


class _DprdmGroup(TyperGroup):
    """The root group: every error of every subcommand ends as ONE stderr line and its exit code.

    Click parses the root's options in ``make_context`` and each subcommand's inside ``invoke``, so catching
    there covers the console script and ``CliRunner().invoke(app, ...)`` alike; ``--help`` is untouched.
    """

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        flags = _Flags(json="--json" in args, debug="--debug" in args, argv=tuple(args))
        with _one_line_usage_errors(flags.json):
            ctx = super().make_context(info_name, args, parent=parent, **extra)
        ctx.meta[_FLAGS_KEY] = flags
        return ctx

    def invoke(self, ctx: Any) -> Any:
        flags: _Flags = ctx.meta.get(_FLAGS_KEY, _Flags())
        with (
            _one_line_usage_errors(flags.json),
            errors_to_exit(json_mode=flags.json, argv=flags.argv, debug=flags.debug),
        ):
            return super().invoke(ctx)


app = make_typer(
    name="dprdm", cls=_DprdmGroup, help="Differentially private retrieval-augmented diffusion.", epilog=EXIT_CODES
)
app.add_typer(cli_index.app, name="index")
app.add_typer(cli_budget.app, name="budget")
cli_generate.register(app)
cli_audit.register(app)
cli_train.register(app)
cli_finetune.register(app)
cli_attribute.register(app)
register_serve(app)
cli_data.register(app)
cli_compartments.register(app)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"dprdm {version('dprdm')}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version."
    ),
    debug: bool = typer.Option(
        False, "--debug", help="Show the traceback of an unexpected error (exit 1) instead of one line."
    ),
) -> None:
    """Differentially private retrieval-augmented diffusion."""
    # dp-accounting logs one warning per RDP order it drops (e.g. at q=0.5); dropping an order only loosens
    # the minimum over orders, never the guarantee, and those lines would break the one-line stderr rule.
    logging.getLogger("absl").setLevel(logging.ERROR)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()

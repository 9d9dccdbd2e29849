"""The ``dprdm`` command line: ``dprdm <noun> <verb>`` over the index, the budget ledger and the generator.

Exit codes: 0 ok, 1 unexpected failure, 2 bad input, 3 privacy refusal (nothing released, nothing charged).
Each command group lives in its own module (``cli_index``, ``cli_budget``, ``cli_generate``, ``cli_audit``);
this module only assembles them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

import typer
from typer._click.exceptions import NoArgsIsHelpError, UsageError  # typer vendors click as typer._click
from typer.core import TyperGroup

from pipeline import cli_audit, cli_budget, cli_generate, cli_index, cli_train
from pipeline._cli_common import error_line

EPILOG = (
    "Exit codes: 0 ok, 1 unexpected failure, 2 bad input, 3 privacy refusal (nothing released or charged)."
)
_JSON_KEY = "dprdm.json"


class _OneLineUsageError(UsageError):
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
    except (NoArgsIsHelpError, _OneLineUsageError):  # bare 'dprdm' / 'dprdm budget' print their help
        raise
    except UsageError as err:
        message = err.format_message()
        if err.ctx is not None:
            message = f"{message.rstrip('.')}; see '{err.ctx.command_path} --help'"
        raise _OneLineUsageError(message, json_mode=json_mode) from None


class _DprdmGroup(TyperGroup):
    """The root group: every usage error of every subcommand ends as ONE stderr line and exit code 2.

    Click parses the root's options in ``make_context`` and each subcommand's inside ``invoke``, so catching
    there covers the console script and ``CliRunner().invoke(app, ...)`` alike; ``--help`` is untouched.
    """

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        json_mode = "--json" in args
        with _one_line_usage_errors(json_mode):
            ctx = super().make_context(info_name, args, parent=parent, **extra)
        ctx.meta[_JSON_KEY] = json_mode
        return ctx

    def invoke(self, ctx: Any) -> Any:
        with _one_line_usage_errors(bool(ctx.meta.get(_JSON_KEY))):
            return super().invoke(ctx)


app = typer.Typer(
    name="dprdm",
    cls=_DprdmGroup,
    help="Differentially private retrieval-augmented diffusion.",
    epilog=EPILOG,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(cli_index.app, name="index")
app.add_typer(cli_budget.app, name="budget")
cli_generate.register(app)
cli_audit.register(app)
cli_train.register(app)


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

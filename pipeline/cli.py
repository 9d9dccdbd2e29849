"""The ``dprdm`` command line: ``dprdm <noun> <verb>`` over the index, the budget ledger and the generator.

Exit codes: 0 ok, 1 unexpected failure, 2 bad input, 3 privacy refusal (nothing released, nothing charged).
Each command group lives in its own module (``cli_index``, ``cli_budget``, ``cli_generate``, ``cli_audit``);
this module only assembles them.
"""

from __future__ import annotations

import typer

from pipeline import cli_audit, cli_budget, cli_generate, cli_index, cli_train

EPILOG = "Exit codes: 0 ok, 1 unexpected failure, 2 bad input, 3 privacy refusal (nothing released or charged)."

app = typer.Typer(
    name="dprdm",
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
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """Differentially private retrieval-augmented diffusion."""


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()

"""``dprdm train``: placeholder until the bundled-default issue lands."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the ``train`` command group to the root app."""

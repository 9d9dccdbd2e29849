"""Errors raised by ``pipeline``. One base class; every class carries the CLI exit code it maps to."""

from __future__ import annotations


class PipelineError(Exception):
    """Base class of every error raised by the ``pipeline`` package."""

    exit_code: int = 2


class PipelineInputError(PipelineError, ValueError):
    """A bad prompt, image, parameter or path."""

    exit_code = 2


class PrivacyRefusal(PipelineError):
    """The pipeline refuses to run a query (e.g. mismatched mechanisms across shards); nothing was released."""

    exit_code = 3


class AuditFailed(PipelineError):
    """``dprdm audit``: the empirical ε lower bound exceeds the claimed ε (or σ = 0 claims none); the report is printed."""

    exit_code = 3

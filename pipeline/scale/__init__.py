"""Scale-out engines (issue 14). Optional: Ray comes with the ``scale`` extra (``pip install 'dprdm[scale]'``).

Importing this package never imports Ray; :func:`require_ray` does, and says in one line how to install it.
"""

from __future__ import annotations

from pipeline.errors import PipelineInputError

__all__ = ["RAY_INSTALL_HINT", "require_ray"]

RAY_INSTALL_HINT = "the Ray engine needs Ray, which is not installed; install it with: pip install 'dprdm[scale]'"


def require_ray():
    """Return the ``ray`` module, or raise a one-line :class:`PipelineInputError` (exit 2) saying how to install it."""
    try:
        import ray
    except ImportError:
        raise PipelineInputError(RAY_INSTALL_HINT) from None
    return ray

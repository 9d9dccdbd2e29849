"""``dprdm serve``: private generation over HTTP for many callers (API keys, access sets, quotas, a web page).

The DP guarantee stays per record over all callers together (each shard's ledger scope); keys only divide it.
Needs the ``serve`` extra (``pip install 'dprdm[serve]'``): FastAPI and uvicorn. Light to import: the web
framework and the models load only in :func:`create_app`.
"""

from pipeline.serve.keys import KEYS_NAME, ApiKey, KeyStore
from pipeline.serve.service import ServeConfig

__all__ = ["KEYS_NAME", "ApiKey", "KeyStore", "ServeConfig", "create_app"]


def create_app(*args, **kwargs):  # noqa: ANN002, ANN003, ANN201
    """:func:`pipeline.serve.app.create_app` (imported lazily: FastAPI is an optional extra)."""
    from pipeline.serve.app import create_app as _create_app

    return _create_app(*args, **kwargs)

"""``dprdm keys add|list|revoke`` (API keys of an index) and ``dprdm serve`` (the HTTP service).

Exit codes: 0 ok; 2 bad input (bad name, existing name, unknown shard, conflicting quota flags); 3 privacy refusal
(no ledger, a shard without budget scope, a damaged key store).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline._cli_common import (
    EXIT_CODES,
    IndexOption,
    JsonOption,
    LedgerOption,
    ThreadsOption,
    emit,
    make_typer,
)
from pipeline.errors import PipelineInputError, PrivacyRefusal

app = make_typer(help="API keys of an index for 'dprdm serve': each key reaches some shards, with a quota.")

SERVE_HELP = f"""Serve private generation over HTTP (FastAPI + uvicorn; needs the 'serve' extra).

Callers authenticate with a key from 'dprdm keys add' (Authorization: Bearer TOKEN). Every generation is charged to
the index's one ledger and committed before the response is sent. Binds 127.0.0.1 unless --host says otherwise.
Open http://HOST:PORT/ for the web page and /docs for the API. --engine ray answers each shard from a Ray actor
(one per shard, shared by every request; needs the 'scale' extra); it runs one server process.

{EXIT_CODES}"""


def register(root: typer.Typer) -> None:
    """Add ``keys`` and ``serve`` to the root app."""
    root.add_typer(app, name="keys")
    root.command("serve", help=SERVE_HELP)(serve)


def _index_shards(index_dir: Any) -> tuple[Any, list[str]]:
    from index import PrivateIndex

    if not index_dir.is_dir():
        raise PipelineInputError(f"--index {index_dir} is not a directory; build it with 'dprdm index build'")
    idx = PrivateIndex.open(index_dir)
    return idx, list(idx.shard_names)


def _quota_from_epsilon(idx: Any, shards: list[str], epsilon: float) -> int:
    """Queries a key may make so that its own queries alone spend at most ``epsilon`` on each of its shards."""
    from accountant import max_queries
    from pipeline.ledgers import index_ledger

    ledger = index_ledger(idx, read_only=True)
    try:
        scopes = set(ledger.scopes())
        counts = []
        for shard in shards:
            if shard not in scopes:
                raise PrivacyRefusal(
                    f"shard {shard!r} has no budget scope; run 'dprdm budget init --index DIR --shard {shard}' first"
                )
            status = ledger.status(shard)
            counts.append(max_queries(ledger.mechanism(shard), epsilon=epsilon, delta=status.delta))
        return min(counts)
    finally:
        ledger.close()


@app.command("add")
def add(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Label of the key (shown in logs and 'keys list').")],
    index_dir: IndexOption = ...,  # type: ignore[assignment]
    shard: Annotated[list[str] | None, typer.Option("--shard", metavar="NAME", show_default=False,
                                                    help="Shard the key may query (repeat; default: every shard).")] = None,
    max_queries: Annotated[int | None, typer.Option("--max-queries", metavar="N", min=0, show_default=False,
                                                    help="The key's quota in queries.")] = None,
    max_epsilon: Annotated[float | None, typer.Option("--max-epsilon", metavar="E", show_default=False,
                                                      help="The key's quota as an epsilon: as many queries as one "
                                                           "key alone may make within E at each shard's delta.")] = None,
    json_mode: JsonOption = False,
) -> None:
    """Create a key; its token is printed ONCE (only a salted scrypt hash is stored, in DIR/keys.sqlite)."""
    from pipeline.serve.keys import KeyStore

    if max_queries is not None and max_epsilon is not None:
        raise PipelineInputError("pass at most one of --max-queries and --max-epsilon")
    if max_epsilon is not None and not (max_epsilon > 0 and max_epsilon < float("inf")):
        raise PipelineInputError(f"--max-epsilon must be a finite number > 0; found {max_epsilon}")
    idx, names = _index_shards(index_dir)
    chosen = list(dict.fromkeys(shard)) if shard else names
    unknown = [s for s in chosen if s not in names]
    if unknown:
        raise PipelineInputError(f"shard {unknown[0]!r} is not in index {index_dir} (shards: {', '.join(names)}); pass one of them")
    if not chosen:
        raise PipelineInputError(f"index {index_dir} has no shard; build it first with 'dprdm index build'")
    quota = max_queries if max_epsilon is None else _quota_from_epsilon(idx, chosen, max_epsilon)
    store = KeyStore.for_index(index_dir, create=True)
    key, token = store.add(name, shards=chosen, max_queries=quota, max_epsilon=max_epsilon)
    payload = key.to_dict() | {"token": token}
    emit(payload, json_mode=json_mode, human=lambda p: (
        f"key '{p['name']}' for shards {', '.join(p['shards'])}, quota "
        f"{'unlimited' if p['max_queries'] is None else p['max_queries']} queries\n"
        f"token (shown once, store it now): {p['token']}"
    ))  # fmt: skip


@app.command("list")
def list_keys(index_dir: IndexOption = ..., json_mode: JsonOption = False) -> None:  # type: ignore[assignment]
    """List the keys of an index (names, shards, quota, usage, revoked; never tokens)."""
    from pipeline.serve.keys import KEYS_NAME, KeyStore

    if not (index_dir / KEYS_NAME).exists():
        emit([], json_mode=json_mode, human=lambda _: "no keys")
        return
    keys = [k.to_dict() for k in KeyStore.for_index(index_dir).list()]

    def human(rows: list[dict[str, Any]]) -> str:
        lines = [f"{'name':<20} {'shards':<24} {'used':>6} {'quota':>8}  state"]
        for r in rows:
            quota = "-" if r["max_queries"] is None else str(r["max_queries"])
            state = "revoked" if r["revoked"] else "active"
            lines.append(f"{r['name']:<20} {','.join(r['shards']):<24} {r['used']:>6} {quota:>8}  {state}")
        return "\n".join(lines)

    emit(keys, json_mode=json_mode, human=human)


@app.command("revoke")
def revoke(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The key to revoke.")],
    index_dir: IndexOption = ...,  # type: ignore[assignment]
    json_mode: JsonOption = False,
) -> None:
    """Revoke a key; the next request with it is refused (401 key_revoked)."""
    from pipeline.serve.keys import KEYS_NAME, KeyStore

    if not (index_dir / KEYS_NAME).exists():
        raise PipelineInputError(f"index {index_dir} has no keys; nothing to revoke")
    key = KeyStore.for_index(index_dir).revoke(name)
    emit(key.to_dict(), json_mode=json_mode, human=lambda p: f"key '{p['name']}' revoked")


def serve(
    index_dir: IndexOption = ...,  # type: ignore[assignment]
    host: Annotated[str, typer.Option("--host", metavar="HOST", help="Address to bind (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", metavar="PORT", min=0, max=65535, help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option("--workers", metavar="N", min=1, help="Server processes.")] = 1,
    max_batch: Annotated[int, typer.Option("--max-batch", metavar="B", min=1,
                                           help="Most conditions per decoder call (1 = no dynamic batching).")] = 16,
    no_group_commit: Annotated[bool, typer.Option("--no-group-commit",
                                                  help="One ledger transaction per charge (for benchmarks).")] = False,
    decoder: Annotated[Path | None, typer.Option("--decoder", metavar="DIR", show_default=False,
                                         help="Decoder folder (default: the bundled tiny decoder).")] = None,
    max_body: Annotated[int, typer.Option("--max-body-bytes", metavar="N", min=1024,
                                          help="Request body limit (413 above it).")] = 8 * 1024 * 1024,
    cors_origin: Annotated[list[str] | None, typer.Option("--cors-origin", metavar="URL", show_default=False,
                                                          help="Allow this browser origin (repeat); no CORS by default.")] = None,
    threads: ThreadsOption = None,
    ledger: LedgerOption = None,
    engine: Annotated[str, typer.Option("--engine", metavar="ENGINE",
                                        help="local, or ray: each shard answered by a Ray actor, one per shard shared "
                                             "by all requests (same mechanism; pip install 'dprdm[scale]').")] = "local",
    ray_address: Annotated[str | None, typer.Option("--ray-address", metavar="ADDR", show_default=False,
                                                    help="Ray cluster to join with --engine ray (e.g. auto); default: "
                                                         "start a local Ray, shut down with the server.")] = None,
    json_mode: JsonOption = False,
) -> None:
    """Run the HTTP service until interrupted (--json: start-up errors as one JSON line)."""
    from pipeline.serve.service import ServeConfig

    try:
        import uvicorn
    except ImportError:
        raise PipelineInputError("dprdm serve needs the 'serve' extra: pip install 'dprdm[serve]'") from None
    if engine not in ("local", "ray"):
        raise PipelineInputError(f"--engine must be 'local' or 'ray', found {engine!r}; pass one of them")
    if engine == "ray":
        from pipeline.scale import require_ray

        if workers > 1:
            raise PipelineInputError(
                "--engine ray runs one server process (its shard actors are shared by every request; each worker "
                "would start its own copy of every shard); drop --workers, scale with Ray nodes instead"
            )
        require_ray()  # the one-line install hint (exit 2), before anything is opened or started
    if ray_address is not None and engine != "ray":
        raise PipelineInputError("--ray-address needs --engine ray; pass both or neither")
    if not index_dir.is_dir():
        raise PipelineInputError(f"--index {index_dir} is not a directory; build it with 'dprdm index build'")
    config = ServeConfig(
        index_dir=Path(index_dir).absolute(), decoder=None if decoder is None else Path(decoder),
        max_batch=max_batch, group_commit=not no_group_commit, max_body_bytes=max_body,
        cors_origins=tuple(cors_origin or ()), threads=threads, ledger=ledger, engine=engine,
        ray_address=ray_address,
    )  # fmt: skip
    settings = {"host": host, "port": port, "access_log": False, "log_level": "info", "timeout_graceful_shutdown": 10}
    if workers == 1:
        from pipeline.serve.app import create_app

        application = create_app(config)  # opens everything now: refusals surface as CLI errors (exit 2/3)
        typer.echo(f"dprdm serve: http://{host}:{port}/ (docs at /docs, engine {engine})", err=True)
        uvicorn.run(application, **settings)
    else:
        os.environ["DPRDM_SERVE_CONFIG"] = json.dumps(config.to_env())
        typer.echo(f"dprdm serve: http://{host}:{port}/ with {workers} workers", err=True)
        uvicorn.run("pipeline.serve.app:create_app_from_environment", factory=True, workers=workers, **settings)

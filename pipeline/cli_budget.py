"""``dprdm budget``: plan a privacy budget, create the ledger scopes of an index, and inspect the ledger.

Every DP statement here is about one retrieval query: a Poisson-subsampled (q) Gaussian (sigma) over the mean of
k unit-norm neighbours, L2 sensitivity 2/k under add/remove-one adjacency (noise multiplier sigma * k / 2),
accounted with the dp-accounting RDP accountant. The ledger of an index is ``<index>/budget.sqlite`` unless
``--ledger`` says otherwise. ``show``, ``history``, ``verify`` and ``plot`` open it read-only and never create it.

Exit codes: 0 ok, 2 bad input, 3 ledger missing/corrupt/tampered or budget refusal, 1 unexpected failure.
"""

from __future__ import annotations

import io
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline._cli_common import (
    JsonOption,
    LedgerOption,
    OptionalIndexOption,
    OptionalShardOption,
    emit,
    make_typer,
)
from pipeline._files import LEDGER_NAME, atomic_write_bytes
from pipeline.errors import PipelineInputError

EPILOG = "Exit codes: 0 ok, 2 bad input, 3 ledger missing/corrupt/tampered or budget refused, 1 unexpected."

app = make_typer(
    help="Privacy budget: plan (epsilon <-> sigma), create the ledger of an index, inspect and verify it.",
    epilog=EPILOG,
)

KOpt = Annotated[int | None, typer.Option("--k", metavar="K", show_default=False, help="Neighbours averaged per query (>= 1).")]
QOpt = Annotated[
    float | None,
    typer.Option("--q", metavar="Q", show_default=False, help="Poisson sampling rate of each record, in (0, 1]."),
]
SigmaOpt = Annotated[
    float | None,
    typer.Option("--sigma", metavar="SIGMA", show_default=False, help="Noise std per coordinate of the mean (> 0)."),
]
EpsOpt = Annotated[
    float | None, typer.Option("--epsilon", metavar="EPS", show_default=False, help="Epsilon budget / target (> 0).")
]
DeltaOpt = Annotated[
    float | None,
    typer.Option("--delta", metavar="DELTA", show_default=False, help="Delta, in (0, 1) and below 1/N."),
]
QueriesOpt = Annotated[
    int | None,
    typer.Option("--queries", metavar="T", show_default=False, help="Planned number of queries T (>= 1)."),
]


def _require(**options: Any) -> None:
    missing = [f"--{name}" for name, value in options.items() if value is None]
    if missing:
        raise PipelineInputError(f"missing {', '.join(missing)}; see 'dprdm budget <command> --help'")


def _open_read_only(index: Path | None, ledger: Path | None):
    """Open read-only: ``--ledger`` alone as is; with ``--index``, only the index's own ledger (id checked)."""
    from accountant import Ledger

    if index is None or not (index / "manifest.json").is_file():  # no index there: its ledger is not either
        if index is None and ledger is None:
            raise PipelineInputError("pass --index DIR (its one ledger) or --ledger PATH")
        return Ledger(ledger or index / LEDGER_NAME, create=False, read_only=True)
    from index import IndexStoreError, PrivateIndex
    from pipeline.ledgers import index_ledger

    try:
        idx = PrivateIndex.open(index)
    except IndexStoreError:  # a damaged index must not hide its ledger: read (never charge) DIR/budget.sqlite
        return Ledger(ledger or index / LEDGER_NAME, create=False, read_only=True)
    return index_ledger(idx, ledger, read_only=True)


def _iso_times(charge: dict[str, Any]) -> dict[str, Any]:
    """A charge with its time (UNIX seconds in the ledger) as the ISO-8601 UTC text of the table and the JSON."""
    when = datetime.fromtimestamp(charge["time"], tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return charge | {"time": when}


def _num(value: float | None, digits: int = 6) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


# -- plan -------------------------------------------------------------------------------------------------------
def _plan_human(p: dict[str, Any]) -> str:
    lines = [
        f"mechanism         Poisson-subsampled Gaussian, k={p['k']}, q={p['q']:g}; L2 sensitivity 2/k = "
        f"{2 / p['k']:.4g} (add/remove-one); OpenDP Gaussian noise; dp-accounting RDP",
        f"sigma             {p['sigma']:.7g}",
        f"noise multiplier  {p['noise_multiplier']:.7g}  (what OpenDP's privacy map states; <= sigma * k / 2)",
        f"epsilon           {p['epsilon']:.6g} at delta={p['delta']:g} after {p['queries']} queries "
        f"(RDP order {_num(p['optimal_order'])}, the scope's filter order)",
    ]
    if p["epsilon_target"] is not None:
        lines.append(
            f"target            epsilon <= {p['epsilon_target']:g} (sigma rounded up, never overshoots)"
        )
    if p["records"] is not None:
        lines.append(
            f"delta             recommended <= {p['recommended_delta']:g} (1/(10 N), N = {p['records']}); "
            "delta >= 1/N is refused"
        )
    return "\n".join(lines)


def _plan_warnings(mech: Any, *, records: int | None, dim: int | None) -> list[str]:
    """One-line warnings: noise that dwarfs the signal, or k so close to q*N that the mean is the corpus mean."""
    warnings = []
    if dim is not None:
        noise = mech.sigma * dim**0.5
        if noise > 2.0:
            warnings.append(
                f"noise norm sigma*sqrt(d) = {noise:.3g} (sigma={mech.sigma:.4g}, d={dim}) dwarfs the aggregate's "
                "norm (<= 1): generations will mostly follow the prompt; raise k, epsilon or q, or use fewer queries"
            )
    if records is not None and mech.k >= 0.5 * mech.q * records:
        warnings.append(
            f"k={mech.k} is close to q*N = {mech.q * records:.4g} (q={mech.q:g}, N={records}): a query then averages "
            "most of its sample, so the aggregate is close to the corpus mean; lower k or raise q"
        )
    return warnings


@app.command("plan")
def plan(
    epsilon: EpsOpt = None,
    delta: DeltaOpt = None,
    queries: QueriesOpt = None,
    k: KOpt = None,
    q: QOpt = None,
    sigma: SigmaOpt = None,
    records: Annotated[
        int | None,
        typer.Option("--records", metavar="N", show_default=False,
                     help="Records N of the shard: recommends delta <= 1/(10N), refuses delta >= 1/N, warns when k >~ qN."),
    ] = None,
    dim: Annotated[
        int | None,
        typer.Option("--dim", metavar="D", show_default=False,
                     help="Embedding width d: warns when the noise norm sigma*sqrt(d) dwarfs the signal (norm <= 1)."),
    ] = None,
    json_mode: JsonOption = False,
) -> None:
    """Plan: --epsilon gives the smallest sigma for T queries; --sigma gives the epsilon after T queries."""
    from accountant import Mechanism, calibrate_sigma, event_rdp, recommended_delta
    from accountant.budget import check_delta, epsilon_and_order

    if (epsilon is None) == (sigma is None):
        raise PipelineInputError("pass exactly one of --epsilon (to calibrate sigma) or --sigma (to compute epsilon)")
    _require(delta=delta, queries=queries, k=k, q=q)
    if dim is not None and dim < 1:
        raise PipelineInputError(f"--dim must be >= 1; found {dim}; pass the index's embedding width")
    check_delta(delta, records=records)
    if sigma is None:
        sigma = calibrate_sigma(k=k, q=q, queries=queries, epsilon=epsilon, delta=delta)
    mech = Mechanism(k=k, q=q, sigma=sigma)
    spent, order = epsilon_and_order(event_rdp(mech.dp_event()), queries, delta=check_delta(delta))
    warnings = _plan_warnings(mech, records=records, dim=dim)
    payload = {
        "sigma": mech.sigma,
        "noise_multiplier": mech.noise_multiplier,
        "epsilon": spent,
        "optimal_order": order,
        "epsilon_target": epsilon,
        "delta": delta,
        "queries": queries,
        "k": mech.k,
        "q": mech.q,
        "sensitivity": mech.sensitivity,
        "records": records,
        "recommended_delta": None if records is None else recommended_delta(records),
        "noise_norm": None if dim is None else mech.sigma * dim**0.5,
        "warnings": warnings,
    }
    for line in warnings:
        typer.echo(f"Warning: {line}", err=True)
    emit(payload, json_mode=json_mode, human=_plan_human)


# -- init -------------------------------------------------------------------------------------------------------
def _status_table(scopes: dict[str, dict[str, Any]]) -> str:
    if not scopes:
        return "(no scopes)"
    header = ("scope", "eps spent", "eps budget", "delta", "charged", "remaining", "trainings", "k", "q", "sigma")
    rows = [header] + [
        (
            name,
            f"{s['epsilon_spent']:.4g}",
            f"{s['epsilon_budget']:.4g}",
            f"{s['delta']:.3g}",
            str(s["queries_charged"]),
            str(s["queries_remaining"]),
            str(s.get("events_charged", 0)),
            str(s["k"]),
            f"{s['q']:g}",
            f"{s['sigma']:.6g}",
        )
        for name, s in sorted(scopes.items())
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def _ledger_human(payload: dict[str, Any]) -> str:
    return f"ledger {payload['ledger']}\n{_status_table(payload['scopes'])}"


@app.command("init")
def init(
    index: OptionalIndexOption = None,
    shard: OptionalShardOption = None,
    epsilon: EpsOpt = None,
    delta: DeltaOpt = None,
    sigma: SigmaOpt = None,
    queries: QueriesOpt = None,
    k: KOpt = None,
    q: QOpt = None,
    ledger: LedgerOption = None,
    records: Annotated[
        int | None,
        typer.Option("--records", metavar="N", show_default=False, help="Records N of the scope when there is no --index."),
    ] = None,
    alpha: Annotated[
        float | None,
        typer.Option("--alpha", metavar="ORDER", show_default=False,
                     help="The scope's fixed RDP order for its filter (default: the order optimal for the query plan; "
                          "pick one that suits DP fine-tuning when training will spend most of the budget; --queries still "
                          "calibrates sigma at the best order, so check queries_remaining)."),
    ] = None,
    json_mode: JsonOption = False,
) -> None:
    """Create one budget scope per shard (same epsilon, delta, k, q, sigma), refusing delta >= 1/N.

    With --index the scopes go into the index's one ledger (created and bound to the index by the first init;
    any other --ledger is refused, exit 3). Each new scope starts from the worst loss its records carry from
    shards they left (tombstones), so moving records never resets their budget. Empty shards are skipped.
    """
    from accountant import Ledger, Mechanism, ScopeSpec, calibrate_sigma

    _require(epsilon=epsilon, delta=delta, k=k, q=q)
    if (sigma is None) == (queries is None):
        raise PipelineInputError("pass exactly one of --sigma or --queries (calibrates sigma so T queries fit)")
    if index is not None and records is not None:
        raise PipelineInputError("--records is read from --index; drop --records")
    if index is None and (shard is None or ledger is None):
        raise PipelineInputError("without --index pass --shard NAME and --ledger PATH (and --records N to check delta < 1/N)")
    if index is not None and not index.is_dir():
        raise PipelineInputError(f"--index {index} is not a directory; build it with 'dprdm index build'")
    members: dict[str, Any] = {}
    skipped: list[str] = []
    if index is not None:
        from index import PrivateIndex

        idx = PrivateIndex.open(index)
        available = {name: idx.shard(name) for name in idx.shard_names}
        if shard is not None and shard not in available:
            raise PipelineInputError(
                f"shard '{shard}' is not in index {index} (shards: {', '.join(sorted(available))}); "
                "pass one of them to --shard"
            )
        if shard is not None and available[shard].num_records == 0:
            raise PipelineInputError(
                f"shard '{shard}' of index {index} is empty (its images are stored in other shards); nothing to "
                "protect: budget another shard, or drop it with 'dprdm index drop-shard'"
            )
        chosen = [shard] if shard is not None else sorted(available)
        skipped = [name for name in chosen if available[name].num_records == 0]
        counts: dict[str, int | None] = {name: available[name].num_records for name in chosen if name not in skipped}
        members = {name: available[name].ids for name in counts}
        if not counts:
            raise PipelineInputError(f"every shard of index {index} is empty; build it first")
    else:
        counts = {shard: records}
    if sigma is None:
        sigma = calibrate_sigma(k=k, q=q, queries=queries, epsilon=epsilon, delta=delta)
    mech = Mechanism(k=k, q=q, sigma=sigma)
    specs = [
        ScopeSpec(name=name, epsilon=epsilon, delta=delta, mechanism=mech, records=n, members=members.get(name),
                  alpha=alpha)
        for name, n in sorted(counts.items())
    ]
    if index is None:
        book, created = Ledger.initialise(ledger, specs)
    elif idx.ledger_binding is not None or (idx.path / LEDGER_NAME).exists():
        from pipeline.ledgers import index_ledger

        book = index_ledger(idx, ledger)  # the index's one ledger (id checked); a second one is refused
        created = book.create_scopes(specs)
    else:
        book, created = Ledger.initialise(ledger or idx.path / LEDGER_NAME, specs)
        try:
            idx.bind_ledger(book.ledger_id, book.location)
        except BaseException:
            book.discard()  # removes the file only if this call created it
            raise
    statuses = {status.scope: status.to_dict() for status in created}
    location = book.location
    book.close()
    for name in skipped:
        typer.echo(f"Warning: shard '{name}' is empty (all its images are stored in other shards); no scope created", err=True)
    emit({"ledger": location, "scopes": statuses, "skipped_empty": skipped}, json_mode=json_mode, human=_ledger_human)


# -- show / history / verify ----------------------------------------------------------------------------------------
@app.command("show")
def show(index: OptionalIndexOption = None, ledger: LedgerOption = None, json_mode: JsonOption = False) -> None:
    """Epsilon spent, budget and exact queries remaining of every scope (read-only)."""
    with _open_read_only(index, ledger) as book:
        path, scopes = book.location, {name: book.status(name).to_dict() for name in book.scopes()}
    emit({"ledger": str(path), "scopes": scopes}, json_mode=json_mode, human=_ledger_human)


def _history_human(payload: dict[str, Any]) -> str:
    if not payload["charges"]:
        return "(no charges)"
    lines = []
    for c in payload["charges"]:
        lines.append(
            f"{c['id']:>6}  {c['time']}  {c['scope']}  x{c['count']}  group={c['group_id'][:12]}  "
            f"caller={c['caller'] or '-'}  purpose={c['purpose'] or '-'}"
        )
    return "\n".join(lines)


@app.command("history")
def history(
    index: OptionalIndexOption = None,
    ledger: LedgerOption = None,
    scope: Annotated[
        str | None, typer.Option("--scope", metavar="NAME", show_default=False, help="Only this scope.")
    ] = None,
    json_mode: JsonOption = False,
) -> None:
    """The append-only charge log, oldest first (read-only); times are ISO-8601 UTC in the table and the JSON."""
    with _open_read_only(index, ledger) as book:
        path = book.location
        if scope is not None and scope not in book.scopes():
            raise PipelineInputError(f"scope '{scope}' is not in ledger {path}; see 'dprdm budget show'")
        charges = [_iso_times(c.to_dict()) for c in book.history(scope)]
    emit({"ledger": str(path), "charges": charges}, json_mode=json_mode, human=_history_human)


def _verify_human(report: dict[str, Any]) -> str:
    lines = [f"ledger {report['path']}: integrity {report['integrity']}, schema v{report['schema_version']}"]
    for name, check in sorted(report["scopes"].items()):
        lines.append(
            f"  {name}: {check['detail']} ({check['queries_logged']} queries recomputed from the log)"
        )
    lines.append("OK" if report["ok"] else "MISMATCH")
    return "\n".join(lines)


@app.command("verify")
def verify(index: OptionalIndexOption = None, ledger: LedgerOption = None, json_mode: JsonOption = False) -> None:
    """Recompute every scope from the charge log; exit 3 if the ledger is corrupt or tampered with."""
    with _open_read_only(index, ledger) as book:
        report = book.verify().to_dict()
    emit(report, json_mode=json_mode, human=_verify_human)


# -- plot -------------------------------------------------------------------------------------------------------
def _curve(status: dict[str, Any], mech: Any) -> tuple[list[int], list[float]]:
    """Epsilon at the scope's delta after x queries, at the scope's filter order (the guarantee it enforces)."""
    import numpy as np

    from accountant import event_rdp
    from accountant.budget import epsilon_and_order

    charged, remaining = status["queries_charged"], status["queries_remaining"]
    end = charged + remaining
    if remaining >= 2**53:  # no practical limit: show a window around the current position
        end = max(2 * charged, 1000)
    end = max(end, 1)
    xs = sorted({round(end * i / 200) for i in range(201)} | {charged})
    order = (float(status["filter_order"]),)
    per_query = float(event_rdp(mech.dp_event(), order)[0])
    other = max(0.0, float(status["rdp_spent"]) - charged * per_query)  # training runs and carried-in loss
    ys = [
        epsilon_and_order(np.array([other + x * per_query]), 1, delta=status["delta"], orders=order)[0] for x in xs
    ]
    return xs, ys


@app.command("plot")
def plot(
    scope: Annotated[
        str,
        typer.Option("--shard", "--scope", metavar="NAME", show_default=False,
                     help="Shard (its budget scope) to plot; --scope is the same option."),
    ],
    out: Annotated[Path, typer.Option("--out", metavar="PNG", show_default=False, help="PNG file to write.")],
    index: OptionalIndexOption = None,
    ledger: LedgerOption = None,
    json_mode: JsonOption = False,
) -> None:
    """PNG of epsilon spent vs queries for the scope's mechanism up to its budget, current position marked."""
    if index is None and ledger is None:
        raise PipelineInputError("pass --index DIR (its one ledger) or --ledger PATH")
    if not out.parent.is_dir():
        raise PipelineInputError(f"--out directory {out.parent} does not exist; create it first")
    with _open_read_only(index, ledger) as book:
        if scope not in book.scopes():
            raise PipelineInputError(f"scope '{scope}' is not in the ledger; see 'dprdm budget show'")
        status, mech = book.status(scope).to_dict(), book.mechanism(scope)
    xs, ys = _curve(status, mech)

    from matplotlib.figure import Figure  # Agg canvas, no pyplot global state

    figure = Figure(figsize=(6.4, 4.0))
    axes = figure.subplots()
    axes.plot(xs, ys, color="tab:blue", label="epsilon after n queries (RDP)")
    axes.axhline(status["epsilon_budget"], color="tab:red", linestyle="--", label="budget")
    axes.plot([status["queries_charged"]], [status["epsilon_spent"]], "o", color="black", label="now")
    axes.set_xlabel("queries charged")
    axes.set_ylabel(f"epsilon at delta={status['delta']:g}")
    axes.set_title(
        f"scope '{scope}': k={mech.k}, q={mech.q:g}, sigma={mech.sigma:.4g} (z={mech.noise_multiplier:.4g})"
    )
    axes.legend(loc="lower right")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    atomic_write_bytes(out, buffer.getvalue())
    payload = {
        "out": str(out),
        "scope": scope,
        "queries_charged": status["queries_charged"],
        "epsilon_spent": status["epsilon_spent"],
        "epsilon_budget": status["epsilon_budget"],
        "points": len(xs),
    }
    emit(payload, json_mode=json_mode, human=lambda p: f"wrote {p['out']} ({p['points']} points)")

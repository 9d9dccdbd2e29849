"""``dprdm audit``: attack the DP retrieval mechanism with a canary and bound its ε from below.

The audit releases only the attack's rates and bounds, never scores, ids or aggregates of records.

``--index`` is an OPERATOR-ONLY check: it runs the mechanism, uncharged, on the private shard's own embeddings,
so it needs direct read access to the index files (which only the data owner has) and its output is for the
operator, never for analysts. Its output leaves out the shard's record count N (``records`` is null), says
"operator-only" and releases no score, id or aggregate; the rates it prints come from a mechanism run on the
private rows and are not covered by the ledger's budget, so do not pass them on.
Exit codes: 0 the lower bound is within the claim, 2 bad input, 3 the audit failed (the lower bound
exceeds the claimed ε, or σ = 0 claims no finite ε), 1 unexpected failure.
"""

from __future__ import annotations

import math
from typing import Annotated

import typer

from pipeline._cli_common import JsonOption, OptionalIndexOption, OptionalShardOption, emit
from pipeline.errors import AuditFailed, PipelineInputError

EPILOG = (
    "Exit codes: 0 lower bound within the claim, 2 bad input, 3 audit failed "
    "(lower bound above the claimed epsilon, or sigma = 0), 1 unexpected failure."
)
OPERATOR_ONLY = (
    "operator-only check: --index runs the mechanism uncharged on the private shard (direct read access to the "
    "index files required); the shard size is withheld and nothing here may be released to analysts"
)
HELP = (
    "Audit the DP retrieval mechanism: empirical epsilon lower bound vs the claimed epsilon.\n\n"
    "Without --index the audit runs on synthetic CLIP-like data. With --index it is an OPERATOR-ONLY check: it "
    "runs the mechanism, uncharged, on the private shard's embeddings, so it needs direct read access to the index "
    "files (the data owner's), withholds the shard size N and releases nothing to analysts."
)


def _fmt(value: float) -> str:
    return "inf (no finite claim)" if math.isinf(value) else f"{value:.4g}"


def _human(report: dict) -> str:
    claim = report["claimed_epsilon"]
    claim_t = report["claimed_epsilon_queries"]
    verdict = "PASS (lower bound <= claimed epsilon)" if report["passed"] else "FAIL"
    z = report["k"] * report["sigma"] / 2
    data = "private shard (size withheld)" if report["records"] is None else f"{report['records']} records"
    header = ["DP retrieval audit: canary membership inference, one canary, one query"]
    if report.get("operator_only"):
        header.append(f"  {OPERATOR_ONLY}")
    return "\n".join(
        [
            *header,
            f"  mechanism      k={report['k']} q={report['q']:g} sigma={report['sigma']:g} "
            f"(noise multiplier k*sigma/2 = {z:.4g}; L2 sensitivity 2/k; add/remove-one)",
            f"  claimed eps    {_fmt(math.inf if claim is None else claim)} for 1 query, "
            f"{_fmt(math.inf if claim_t is None else claim_t)} for {report['queries']} queries "
            f"at delta={report['delta']:g} (dp-accounting RDP)",
            f"  empirical eps  >= {report['empirical_epsilon_lower_bound']:.4g} "
            f"at {report['confidence']:.0%} confidence (lower bound)",
            f"  attack         FPR {report['fpr']:.4f} (<= {report['fpr_upper']:.4f}), "
            f"FNR {report['fnr']:.4f} (<= {report['fnr_upper']:.4f}) on {report['evaluation_trials']} "
            f"of {report['trials']} runs per world; {data}, canary {report['canary']}",
            f"  verdict        {verdict}",
        ]
    )


def audit(
    index: OptionalIndexOption = None,
    shard: OptionalShardOption = None,
    k: Annotated[int | None, typer.Option("--k", metavar="K", show_default=False, help="Neighbours per query (without --index).")] = None,
    q: Annotated[float | None, typer.Option("--q", metavar="Q", show_default=False, help="Poisson sampling rate in (0, 1].")] = None,
    sigma: Annotated[float | None, typer.Option("--sigma", metavar="S", show_default=False, help="Noise std per coordinate, >= 0.")] = None,
    delta: Annotated[
        float | None,
        typer.Option("--delta", metavar="D", show_default=False, help="Delta of the claim (default: scope's, or 1e-6)."),
    ] = None,
    trials: Annotated[
        int, typer.Option("--trials", metavar="N", help="Mechanism runs on each of D and D + canary.")
    ] = 2000,
    queries: Annotated[
        int | None,
        typer.Option("--queries", metavar="T", show_default=False,
                     help="T for the T-query claim (default: scope's plan, or 1)."),
    ] = None,
    confidence: Annotated[float, typer.Option("--confidence", metavar="C", help="Confidence of the lower bound.")] = 0.95,
    json_mode: JsonOption = False,
) -> None:
    """Audit the DP retrieval mechanism: empirical epsilon lower bound vs the claimed epsilon."""
    manual = [name for name, value in (("--k", k), ("--q", q), ("--sigma", sigma)) if value is not None]
    if index is not None and manual:
        raise PipelineInputError(
            f"--index reads k, q and sigma from the ledger; drop {', '.join(manual)} or drop --index"
        )
    if index is None and shard is not None:
        raise PipelineInputError("--shard needs --index DIR")
    embeddings = None
    if index is not None:
        from pipeline.audit.source import scope_and_embeddings

        scope, embeddings = scope_and_embeddings(index, shard)
        k, q, sigma = scope["k"], scope["q"], scope["sigma"]
        delta = scope["delta"] if delta is None else delta
        queries = scope["queries"] if queries is None else queries
    elif len(manual) < 3:
        missing = [name for name in ("--k", "--q", "--sigma") if name not in manual]
        raise PipelineInputError(
            f"audit needs the mechanism: missing {', '.join(missing)}; pass --k K --q Q --sigma S "
            "or --index DIR --shard NAME"
        )
    from pipeline.audit import run_audit

    report = run_audit(
        k=k,
        q=q,
        sigma=sigma,
        delta=1e-6 if delta is None else delta,
        trials=trials,
        embeddings=embeddings,
        queries=1 if queries is None else queries,
        confidence=confidence,
    )
    payload = report.to_dict()
    if index is not None:  # operator-only: the private shard's size is withheld from the output
        payload |= {"records": None, "operator_only": True, "note": OPERATOR_ONLY}
    emit(payload, json_mode=json_mode, human=_human)
    if not report.passed:
        if math.isinf(report.claimed_epsilon):
            reason = "sigma = 0 adds no noise, so the mechanism claims no finite epsilon"
        else:
            reason = (
                f"empirical epsilon lower bound {report.empirical_epsilon_lower_bound:.4g} exceeds the claimed "
                f"{report.claimed_epsilon:.4g} for one query"
            )
        raise AuditFailed(
            f"audit failed: {reason}; do not use this configuration and check the mechanism's noise and sensitivity"
        )


def register(app: typer.Typer) -> None:
    """Add the ``audit`` command to the root app."""
    app.command("audit", help=HELP, epilog=EPILOG)(audit)

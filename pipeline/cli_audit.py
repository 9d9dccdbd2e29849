"""``dprdm audit``: attack the DP retrieval mechanism with a canary and bound its ε from below.

The audit releases only the attack's rates and bounds, never scores, ids or aggregates of records.
Exit codes: 0 the lower bound is within the claim, 2 bad input, 3 the audit failed (the lower bound
exceeds the claimed ε, or σ = 0 claims no finite ε), 1 unexpected failure.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from pipeline._cli_common import JsonOption, emit, fail, user_errors

EPILOG = (
    "Exit codes: 0 lower bound within the claim, 2 bad input, 3 audit failed "
    "(lower bound above the claimed epsilon, or sigma = 0), 1 unexpected failure."
)


def _fmt(value: float) -> str:
    return "inf (no finite claim)" if math.isinf(value) else f"{value:.4g}"


def _human(report: dict) -> str:
    claim = report["claimed_epsilon"]
    claim_t = report["claimed_epsilon_queries"]
    verdict = "PASS (lower bound <= claimed epsilon)" if report["passed"] else "FAIL"
    z = report["k"] * report["sigma"] / 2
    return "\n".join(
        [
            "DP retrieval audit: canary membership inference, one canary, one query",
            f"  mechanism      k={report['k']} q={report['q']:g} sigma={report['sigma']:g} "
            f"(noise multiplier k*sigma/2 = {z:.4g}; L2 sensitivity 2/k; add/remove-one)",
            f"  claimed eps    {_fmt(math.inf if claim is None else claim)} for 1 query, "
            f"{_fmt(math.inf if claim_t is None else claim_t)} for {report['queries']} queries "
            f"at delta={report['delta']:g} (dp-accounting RDP)",
            f"  empirical eps  >= {report['empirical_epsilon_lower_bound']:.4g} "
            f"at {report['confidence']:.0%} confidence (lower bound)",
            f"  attack         FPR {report['fpr']:.4f} (<= {report['fpr_upper']:.4f}), "
            f"FNR {report['fnr']:.4f} (<= {report['fnr_upper']:.4f}) on {report['evaluation_trials']} "
            f"of {report['trials']} runs per world; {report['records']} records, canary {report['canary']}",
            f"  verdict        {verdict}",
        ]
    )


def audit(
    index: Annotated[
        Path | None,
        typer.Option("--index", help="Index directory; read (k, q, sigma, delta) from its ledger."),
    ] = None,
    shard: Annotated[str | None, typer.Option("--shard", help="Shard of --index to audit.")] = None,
    k: Annotated[int | None, typer.Option("--k", help="Neighbours per query (without --index).")] = None,
    q: Annotated[float | None, typer.Option("--q", help="Poisson sampling rate in (0, 1].")] = None,
    sigma: Annotated[float | None, typer.Option("--sigma", help="Noise std per coordinate, >= 0.")] = None,
    delta: Annotated[
        float | None, typer.Option("--delta", help="Delta of the claim (default: scope's, or 1e-6).")
    ] = None,
    trials: Annotated[
        int, typer.Option("--trials", help="Mechanism runs on each of D and D + canary.")
    ] = 2000,
    queries: Annotated[
        int | None, typer.Option("--queries", help="T for the T-query claim (default: scope's plan, or 1).")
    ] = None,
    confidence: Annotated[float, typer.Option("--confidence", help="Confidence of the lower bound.")] = 0.95,
    json_mode: JsonOption = False,
) -> None:
    """Audit the DP retrieval mechanism: empirical epsilon lower bound vs the claimed epsilon."""
    with user_errors(json_mode):
        manual = [name for name, value in (("--k", k), ("--q", q), ("--sigma", sigma)) if value is not None]
        if index is not None and manual:
            raise fail(
                f"--index reads k, q and sigma from the ledger; drop {', '.join(manual)} or drop --index",
                json_mode=json_mode,
            )
        if index is None and shard is not None:
            raise fail("--shard needs --index DIR", json_mode=json_mode)
        embeddings = None
        if index is not None:
            from pipeline.audit.source import scope_and_embeddings

            scope, embeddings = scope_and_embeddings(index, shard)
            k, q, sigma = scope["k"], scope["q"], scope["sigma"]
            delta = scope["delta"] if delta is None else delta
            queries = scope["queries"] if queries is None else queries
        elif len(manual) < 3:
            missing = [name for name in ("--k", "--q", "--sigma") if name not in manual]
            raise fail(
                f"audit needs the mechanism: missing {', '.join(missing)}; pass --k K --q Q --sigma S "
                "or --index DIR --shard NAME",
                json_mode=json_mode,
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
    emit(payload, json_mode=json_mode, human=_human)
    if not report.passed:
        if math.isinf(report.claimed_epsilon):
            reason = "sigma = 0 adds no noise, so the mechanism claims no finite epsilon"
        else:
            reason = (
                f"empirical epsilon lower bound {report.empirical_epsilon_lower_bound:.4g} exceeds the claimed "
                f"{report.claimed_epsilon:.4g} for one query"
            )
        raise fail(
            f"audit failed: {reason}; do not use this configuration and check the mechanism's noise and sensitivity",
            exit_code=3,
            json_mode=json_mode,
            kind="AuditFailed",
        )


def register(app: typer.Typer) -> None:
    """Add the ``audit`` command to the root app."""
    app.command("audit", epilog=EPILOG)(audit)

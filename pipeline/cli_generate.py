"""``dprdm generate``: one private query (charged first), decoded into images written under ``--out``.

Exit codes: 0 ok; 2 bad input; 3 privacy refusal (budget exhausted, missing or unusable ledger, mismatched shard
mechanisms): nothing was released and nothing new was written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline._cli_common import JsonOption, emit, fail, user_errors

HELP = """Generate images conditioned on a differentially private retrieval from a private index.

One call is one private query of every targeted shard's budget (all images of the call share it). The ledger is
charged before anything is retrieved; if the budget is exhausted nothing is retrieved or written (exit 3).

Exit codes: 0 ok, 1 unexpected failure, 2 bad input, 3 privacy refusal (nothing released or charged)."""


def register(app: typer.Typer) -> None:
    """Add the ``generate`` command to the root app."""
    app.command("generate", help=HELP)(generate)


def generate(
    prompt: Annotated[str | None, typer.Argument(metavar="PROMPT", help="Text query (public). Leave out with --image.", show_default=False)] = None,
    index_dir: Annotated[Path, typer.Option("--index", metavar="DIR", help="Private index folder (from 'dprdm index build').",
                                            show_default=False)] = ...,  # type: ignore[assignment]
    shard: Annotated[list[str] | None, typer.Option("--shard", metavar="NAME", help="Shard to query (repeat for several); default all.")] = None,
    image: Annotated[Path | None, typer.Option("--image", metavar="PATH", help="Image query (public) instead of a prompt.")] = None,
    n_images: Annotated[int, typer.Option("--n-images", metavar="N", help="Images decoded from the one query.")] = 4,
    lambda_: Annotated[float, typer.Option("--lambda", metavar="L", help="Weight of the private retrieval: c = λ·noisy + (1−λ)·query; 0 = prompt only, not charged.")] = 1.0,
    steps: Annotated[int, typer.Option("--steps", metavar="N", help="Decoder denoising steps.")] = 25,
    guidance: Annotated[float, typer.Option("--guidance", metavar="W", help="Classifier-free guidance scale.")] = 2.0,
    out: Annotated[Path, typer.Option("--out", metavar="DIR", help="Folder for the PNGs, the grid and the JSON record.")] = Path("dprdm-output"),
    ledger_path: Annotated[Path | None, typer.Option("--ledger", metavar="PATH", help="Budget ledger (default: INDEX/budget.sqlite).",
                                                     show_default=False)] = None,
    decoder_dir: Annotated[Path | None, typer.Option("--decoder", metavar="DIR", help="Decoder folder (default: the bundled tiny decoder).",
                                                     show_default=False)] = None,
    seed: Annotated[int | None, typer.Option("--seed", metavar="INT", help="Seed of the decoder's noise only (retrieval noise is always "
                                                            "drawn from the OS CSPRNG).", show_default=False)] = None,
    json_mode: JsonOption = False,
) -> None:
    """Generate images conditioned on a differentially private retrieval."""
    if (prompt is None) == (image is None):
        raise fail("pass exactly one query: a PROMPT argument or --image PATH", json_mode=json_mode)
    with user_errors(json_mode):
        payload = _run(prompt, index_dir, shard, image, n_images, lambda_, steps, guidance, out, ledger_path,
                       decoder_dir, seed)
    emit(payload, json_mode=json_mode, human=_human)


def _run(prompt, index_dir, shards, image_path, n_images, lambda_, steps, guidance, out, ledger_path, decoder_dir,
         seed) -> dict[str, Any]:
    """Open everything, run one charged query and write the outputs (only after the charge committed)."""
    import torch
    from diffusers.utils import logging as diffusers_logging

    from accountant import BudgetExceeded
    from index import PrivateIndex
    from pipeline.decoders import TinyDecoder
    from pipeline.generate import Generator
    from pipeline.outputs import save_generation
    from pipeline.retrieve import PrivateRetriever

    diffusers_logging.set_verbosity_error()  # keep stderr to progress and one-line errors
    query_image = _open_image(image_path) if image_path is not None else None
    _check_out(out)
    index = PrivateIndex.open(index_dir)
    ledger = _open_ledger(ledger_path or Path(index_dir) / "budget.sqlite")
    retriever = PrivateRetriever(index, ledger, shards=shards or None)
    retriever.mechanism()  # refuse missing / mismatched scopes before loading any model
    _refuse_if_exhausted(retriever)
    generator = Generator(retriever, index.load_encoder(), TinyDecoder.from_pretrained(decoder_dir))
    torch_generator = None if seed is None else torch.Generator().manual_seed(seed)
    try:
        result = generator(prompt, image=query_image, num_images=n_images, lambda_=lambda_, steps=steps,
                           guidance_scale=guidance, generator=torch_generator, caller="dprdm generate")
    except BudgetExceeded as err:
        raise _budget_refusal(retriever, err) from None
    saved = save_generation(result, out)
    return saved.to_dict() | result.to_dict()


def _open_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except UnidentifiedImageError:
        raise _input_error(f"--image {path} is not an image PIL can read; pass a PNG or JPEG") from None


def _check_out(out: Path) -> None:
    """Refuse an unusable --out before the charge (it is only created after the charge commits)."""
    if out.exists() and not out.is_dir():
        raise _input_error(f"--out {out} is a file; pass a folder (it is created if missing)")
    existing = next(parent for parent in (out.absolute(), *out.absolute().parents) if parent.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise _input_error(f"--out {out}: cannot write under {existing}; pass a writable folder")


def _open_ledger(path: Path):
    from accountant import Ledger
    from pipeline.errors import PrivacyRefusal

    if not path.exists():
        raise PrivacyRefusal(
            f"no budget ledger at {path}; create one with 'dprdm budget init --index DIR' (or pass --ledger PATH)"
        )
    return Ledger(path, create=False)


def _refuse_if_exhausted(retriever) -> None:
    """Fail fast, before loading models, when a scope cannot take one more query (the charge re-checks)."""
    for shard in retriever.shards:
        status = retriever.ledger.status(shard)
        if status.queries_remaining < 1:
            raise _budget_message(status)


def _budget_refusal(retriever, err: Exception):
    """Restate the accountant's refusal with what was spent, the budget and what to do."""
    statuses = [retriever.ledger.status(shard) for shard in retriever.shards]
    exhausted = [s for s in statuses if s.queries_remaining < 1] or statuses
    return _budget_message(exhausted[0])


def _budget_message(status):
    from accountant import BudgetExceeded

    return BudgetExceeded(
        f"privacy budget of shard {status.scope!r} is exhausted: epsilon spent {status.epsilon_spent:.4g} of "
        f"{status.epsilon_budget:g} at delta={status.delta:g} after {status.queries_charged} queries; nothing was "
        "retrieved or written; the budget is spent for good (resetting it or re-indexing the same records would void "
        "the guarantee), so stop querying this shard"
    )


def _input_error(message: str):
    from pipeline.errors import PipelineInputError

    return PipelineInputError(message)


def _human(payload: dict[str, Any]) -> str:
    lines = [f"wrote {len(payload['images'])} images to {Path(payload['grid']).parent}",
             f"grid: {payload['grid']}",
             f"record: {payload['record']}"]
    if payload["charged"]:
        lines.append(f"epsilon spent {payload['epsilon_spent']:.4g} of {payload['epsilon_budget']:g} at "
                     f"delta={payload['delta']:g}; {payload['queries_remaining']} queries remaining")
    else:
        lines.append(f"lambda=0: no private record used, nothing charged; {payload['queries_remaining']} queries remaining")
    return "\n".join(lines)

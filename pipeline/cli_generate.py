"""``dprdm generate``: one private query (charged first), decoded into images written under ``--out``.

Exit codes: 0 ok; 2 bad input; 3 privacy refusal (budget exhausted, missing or unusable ledger, mismatched shard
mechanisms): nothing was released and nothing new was written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline._cli_common import (
    EXIT_CODES,
    IndexOption,
    JsonOption,
    LedgerOption,
    ShardsOption,
    ThreadsOption,
    emit,
)
from pipeline.errors import PipelineInputError

HELP = f"""Generate images conditioned on a differentially private retrieval from a private index.

One call is one private query of every targeted shard's budget (all images of the call share it). The ledger is
charged before anything is retrieved; if the budget is exhausted nothing is retrieved or written (exit 3).
--lambda 0 reads no private record and is never charged, so it works even once the budget is spent.

{EXIT_CODES}"""


def register(app: typer.Typer) -> None:
    """Add the ``generate`` command to the root app."""
    app.command("generate", help=HELP)(generate)


def generate(
    prompt: Annotated[str | None, typer.Argument(metavar="PROMPT", help="Text query (public). Leave out with --image.", show_default=False)] = None,
    index_dir: IndexOption = ...,  # type: ignore[assignment]
    shard: ShardsOption = None,
    image: Annotated[Path | None, typer.Option("--image", metavar="PATH", help="Image query (public) instead of a prompt.", show_default=False)] = None,
    n_images: Annotated[int, typer.Option("--n-images", metavar="N", help="Images decoded from the one query.")] = 4,
    lambda_: Annotated[float, typer.Option("--lambda", metavar="L", help="Weight of the private retrieval: c = λ·noisy + (1−λ)·query; 0 = prompt only, not charged.")] = 1.0,
    steps: Annotated[int, typer.Option("--steps", "--num-inference-steps", metavar="N", help="Decoder denoising steps (diffusers' num_inference_steps).")] = 25,
    guidance: Annotated[float, typer.Option("--guidance", metavar="W", help="Classifier-free guidance scale.")] = 2.0,
    out: Annotated[Path, typer.Option("--out", metavar="DIR", help="Folder for the PNGs, the grid and the JSON record.")] = Path("dprdm-output"),
    ledger_path: LedgerOption = None,
    decoder_dir: Annotated[Path | None, typer.Option("--decoder", metavar="DIR", help="Decoder folder: the bundled tiny format, a diffusers "
                                                     "Stable unCLIP or Kandinsky 2.2 pipeline folder (default: the bundled tiny decoder).",
                                                     show_default=False)] = None,
    seed: Annotated[int | None, typer.Option("--seed", metavar="INT", help="Seed of the decoder's noise only (retrieval noise is always "
                                                            "drawn from the OS CSPRNG).", show_default=False)] = None,
    noise_level: Annotated[int | None, typer.Option("--noise-level", metavar="INT", help="Stable unCLIP: noise_level added to the image "
                                                                   "embedding (diffusers' name).", show_default=False)] = None,
    embedding_norm: Annotated[float | None, typer.Option("--embedding-norm", metavar="X", help="Stable unCLIP / Kandinsky: norm the unit "
                                                                      "condition is rescaled to (default: from the decoder's own statistics).",
                                                                      show_default=False)] = None,
    embedding_scaling: Annotated[str | None, typer.Option("--embedding-scaling", metavar="MODE", help="Stable unCLIP / Kandinsky: normalize "
                                                                        "(default), multiply or none.", show_default=False)] = None,
    public_embeddings: Annotated[Path | None, typer.Option("--public-embeddings", metavar="FILE.npy", help="Stable unCLIP / Kandinsky: "
                                                                         "PUBLIC image embeddings to estimate the embedding norm from.",
                                                                         show_default=False)] = None,
    adapter: Annotated[Path | None, typer.Option("--adapter", metavar="DIR", help="Adapter from 'dprdm finetune' applied to the "
                                                 "decoder (checked against its base decoder before any charge).", show_default=False)] = None,
    compose: Annotated[bool, typer.Option("--compose", help="Decode with the targeted shards' compartments composed (CDM; "
                                          "'dprdm compartments train' first); --shard picks the access set.")] = False,
    weights: Annotated[str, typer.Option("--weights", metavar="MODE", help="With --compose: posterior (w = P(shard | x_t)) or "
                                         "naive (w = shard size, for comparison only).")] = "posterior",
    eta: Annotated[float | None, typer.Option("--eta", metavar="ETA", help="With --compose: DDIM eta in [0, 1] (default 0; 1 = "
                                              "ancestral sampling).", show_default=False)] = None,
    base_guidance: Annotated[float | None, typer.Option("--base-guidance", metavar="G", help="With --compose: push the composition "
                                                        "away from the public base decoder, eps_base + G (eps - eps_base) (default 1 "
                                                        "= off).", show_default=False)] = None,
    threads: ThreadsOption = None,
    json_mode: JsonOption = False,
    engine: Annotated[str, typer.Option("--engine", metavar="ENGINE", help="local, or ray: each shard searched by a Ray actor "
                                        "(same mechanism; pip install 'dprdm[scale]').")] = "local",
    ray_address: Annotated[str | None, typer.Option("--ray-address", metavar="ADDR", help="Ray cluster to join with --engine ray "
                                                    "(e.g. auto); default: start a local Ray.", show_default=False)] = None,
) -> None:
    """Generate images conditioned on a differentially private retrieval."""
    if (prompt is None) == (image is None):
        raise PipelineInputError("pass exactly one query: a PROMPT argument or --image PATH")
    sampler = {k: v for k, v in (("eta", eta), ("base_guidance", base_guidance)) if v is not None}
    if sampler and not compose:
        raise PipelineInputError("--eta and --base-guidance apply to composed compartments only; add --compose")
    knobs = {"noise_level": noise_level, "embedding_norm": embedding_norm, "embedding_scaling": embedding_scaling,
             "public_embeddings": public_embeddings}
    payload = _run(prompt, index_dir, shard, image, n_images, lambda_, steps, guidance, out, ledger_path,
                   decoder_dir, seed, threads, knobs, adapter, weights if compose else None, engine, ray_address,
                   sampler)
    emit(payload, json_mode=json_mode, human=_human)


def _run(prompt, index_dir, shards, image_path, n_images, lambda_, steps, guidance, out, ledger_path, decoder_dir,
         seed, threads, knobs, adapter, compose, engine="local", ray_address=None, sampler=None) -> dict[str, Any]:
    """Open everything, run one charged query and write the outputs (only after the charge committed)."""
    import torch
    from diffusers.utils import logging as diffusers_logging

    from accountant import BudgetExceeded
    from pipeline.generate import DPRDMPipeline
    from pipeline.outputs import save_generation

    diffusers_logging.set_verbosity_error()  # keep stderr to progress and one-line errors
    query_image = _open_image(image_path) if image_path is not None else None
    _check_out(out)
    pipe = DPRDMPipeline.from_index_dir(index_dir, ledger=ledger_path, decoder=decoder_dir, shards=shards or None,
                                        threads=threads, decoder_options=knobs, adapter=adapter, compose=compose,
                                        engine=engine, ray_address=ray_address, compose_sampler=sampler)
    if decoder_dir is None and adapter is None and compose is None:
        _warn_if_far_from_bundled(pipe.encoder, prompt, query_image)
    torch_generator = None if seed is None else torch.Generator().manual_seed(seed)
    try:
        result = pipe(prompt, image=query_image, num_images=n_images, lambda_=lambda_, steps=steps,
                      guidance_scale=guidance, generator=torch_generator, caller="dprdm generate")
    except BudgetExceeded as err:
        raise _budget_refusal(pipe.retriever, err) from None
    saved = save_generation(result, out)
    payload = saved.to_dict() | result.to_dict()
    if compose is not None:  # shard-level attribution of this generation: the mean of w_i over the trajectory
        payload["shard_weights"] = dict(pipe.decoder.shard_weights)
    return payload


def _warn_if_far_from_bundled(encoder, prompt, image) -> None:
    """One stderr line when the PUBLIC query is far from what the bundled digit models know (no private read)."""
    from pipeline import domain

    if domain.uses_bundled_encoder(encoder.sha256) and domain.query_is_far(encoder, prompt=prompt, image=image):
        typer.echo(f"Warning: this query is far from the digits the bundled models know; {domain.HINT}", err=True)


def _open_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise PipelineInputError(f"--image {path} is not a file; pass a PNG or JPEG")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except UnidentifiedImageError:
        raise PipelineInputError(f"--image {path} is not an image PIL can read; pass a PNG or JPEG") from None


def _check_out(out: Path) -> None:
    """Refuse an unusable --out before the charge (it is only created after the charge commits)."""
    if out.exists() and not out.is_dir():
        raise PipelineInputError(f"--out {out} is a file; pass a folder (it is created if missing)")
    existing = next(parent for parent in (out.absolute(), *out.absolute().parents) if parent.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PipelineInputError(f"--out {out}: cannot write under {existing}; pass a writable folder")


def _budget_refusal(retriever, err: Exception) -> Exception:
    """Restate the accountant's refusal of an exhausted scope with what was spent, the budget and what to do."""
    from accountant import BudgetExceeded

    exhausted = [s for s in (retriever.ledger.status(shard) for shard in retriever.shards) if s.queries_remaining < 1]
    if not exhausted:
        return err  # refused for another reason: the accountant's own message says which
    status = exhausted[0]
    return BudgetExceeded(
        f"privacy budget of shard {status.scope!r} is exhausted: epsilon spent {status.epsilon_spent:.4g} of "
        f"{status.epsilon_budget:g} at delta={status.delta:g} after {status.queries_charged} queries; nothing was "
        "retrieved or written; the budget is spent for good (resetting it or re-indexing the same records would void "
        "the guarantee), so stop querying this shard; --lambda 0 (prompt only) stays free"
    )


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

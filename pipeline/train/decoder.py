"""Train the bundled tiny retrieval-conditioned decoder on the PUBLIC half, the way DP-RDM trains "adapt".

For every public image x the condition is what a DP query would hand the decoder (shared/notes/dp-rdm.md §2.2):
the mean of the unit encoder embeddings of x's k nearest PUBLIC neighbours (x itself excluded, because at inference
the image being described is not in the retrieval set), plus Gaussian noise N(0, s² I) with one s ~ U[0, sigma_max]
per batch, dropped to the zero vector with probability ``drop_prob`` for classifier-free guidance. k is drawn per
batch from [k_min, k_max] so one decoder serves the demo's k=40 and smaller k. The UNet is a diffusers
``UNet2DConditionModel`` that sees the condition twice: as one cross-attention token and through
``class_embed_type="projection"``. DDPM noise for training, DDIM for sampling (``pipeline.decoders.TinyDecoder``).
The private half is never touched here.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import index._torchvision_compat  # noqa: F401  (before any diffusers/open_clip import: they import torchvision)
from pipeline.data import DigitSplit, load_mnist_split
from pipeline.train._io import seeded_torch, write_json_atomic


def default_decoder_dir() -> Path:
    """``pipeline/models/tiny-decoder``: where the bundled decoder lives."""
    return Path(__file__).resolve().parents[1] / "models" / "tiny-decoder"


@dataclass(frozen=True)
class DecoderSettings:
    """Architecture and optimisation settings of the tiny decoder (recorded next to the weights)."""

    image_size: int = 16
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    attention_head_dim: int = 8
    k_min: int = 10
    k_max: int = 40
    sigma_max: float = 0.6
    drop_prob: float = 0.1
    steps: int = 1500
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 50
    ema_decay: float = 0.995
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    seed: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DecoderReport:
    """What a decoder training run produced."""

    out_dir: str
    steps: int
    seconds: float
    final_loss: float
    size_bytes: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def build_unet(embedding_dim: int, *, image_size: int = 16, block_out_channels: tuple[int, ...] = (32, 64, 64),
               layers_per_block: int = 1, attention_head_dim: int = 8):
    """A grayscale ``UNet2DConditionModel`` conditioned on one ``embedding_dim`` vector; attention only at the
    lowest resolution (4×4 for 16 px with three levels; CPU attention above 8×8 is slow), ResNet blocks above.
    """
    from diffusers import UNet2DConditionModel

    levels = len(block_out_channels)
    return UNet2DConditionModel(
        sample_size=image_size,
        in_channels=1,
        out_channels=1,
        layers_per_block=layers_per_block,
        norm_num_groups=8,
        down_block_types=("DownBlock2D",) * (levels - 1) + ("CrossAttnDownBlock2D",),
        up_block_types=("CrossAttnUpBlock2D",) + ("UpBlock2D",) * (levels - 1),
        mid_block_type="UNetMidBlock2DCrossAttn",
        block_out_channels=tuple(block_out_channels),
        cross_attention_dim=embedding_dim,
        attention_head_dim=attention_head_dim,
        class_embed_type="projection",
        projection_class_embeddings_input_dim=embedding_dim,
    )


def images_to_unit_range(images: np.ndarray, image_size: int) -> torch.Tensor:
    """(n, H, W) uint8 → (n, 1, image_size, image_size) float in [-1, 1] (antialiased resize if needed)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(127.5).sub_(1.0)[:, None]
    if x.shape[-1] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    return x


def neighbour_means(embeddings: np.ndarray, k_max: int) -> np.ndarray:
    """(n, k_max, d): row i, column k-1 is the mean of the unit embeddings of i's k nearest others (self excluded).

    Exact inner-product search with faiss over the public embeddings, done once before training.
    """
    import faiss

    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    index = faiss.IndexFlatIP(emb.shape[1])
    index.add(emb)
    _, ids = index.search(emb, k_max + 1)
    others = np.stack([row[row != i][:k_max] for i, row in enumerate(ids)])  # drop self wherever it ranks
    neighbours = emb[others]  # (n, k_max, d)
    return np.cumsum(neighbours, axis=1) / np.arange(1, k_max + 1, dtype=np.float32)[None, :, None]


def _public_embeddings(encoder_dir: Path, split: DigitSplit) -> np.ndarray:
    import open_clip

    from pipeline.train.encoder import encode_image_array

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{encoder_dir}")
    return encode_image_array(model, split.public_images, preprocess)


def _save_atomic(out: Path, unet, scheduler) -> None:
    """Write ``unet/`` and ``scheduler/`` into a temp folder beside ``out``, then swap each part in by rename."""
    import shutil
    import tempfile

    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".staging-"))
    try:
        unet.save_pretrained(staging / "unet", safe_serialization=True)
        scheduler.save_pretrained(staging / "scheduler")
        for part in ("unet", "scheduler"):
            for file in (staging / part).iterdir():
                with open(file, "rb") as fh:
                    os.fsync(fh.fileno())
                os.chmod(file, 0o644)
            old = out / f".old-{part}"
            if (out / part).exists():
                os.replace(out / part, old)
            os.replace(staging / part, out / part)
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def train_decoder(
    out_dir: str | Path | None = None,
    *,
    encoder_dir: str | Path | None = None,
    settings: DecoderSettings | None = None,
    num_threads: int | None = 1,
    progress: bool = True,
    split: DigitSplit | None = None,
) -> DecoderReport:
    """Train the tiny decoder on the public half and save it with ``save_pretrained`` (unet/ + scheduler/).

    Args:
        out_dir: target folder (default: the bundled ``pipeline/models/tiny-decoder``).
        encoder_dir: open_clip ``local-dir`` checkpoint that embeds the public images (default: bundled tiny CLIP).
        settings: architecture/optimisation settings (default :class:`DecoderSettings`).
        num_threads: torch threads during training (restored afterwards); None leaves torch's setting.
        progress: show a tqdm bar on stderr.
        split: an already loaded data split (default: :func:`load_mnist_split`).

    Returns:
        A :class:`DecoderReport`.
    """
    from diffusers import DDIMScheduler, DDPMScheduler
    from tqdm.auto import tqdm

    from pipeline.train.encoder import default_encoder_dir

    settings = settings or DecoderSettings()
    out = Path(out_dir) if out_dir is not None else default_decoder_dir()
    enc_dir = Path(encoder_dir) if encoder_dir is not None else default_encoder_dir()
    split = split or load_mnist_split()
    start = time.perf_counter()
    with seeded_torch(settings.seed, num_threads) as gen:
        embeddings = _public_embeddings(enc_dir, split)
        means = torch.from_numpy(neighbour_means(embeddings, settings.k_max))
        x_all = images_to_unit_range(split.public_images, settings.image_size)
        dim = embeddings.shape[1]
        unet = build_unet(dim, image_size=settings.image_size, block_out_channels=settings.block_out_channels,
                          layers_per_block=settings.layers_per_block, attention_head_dim=settings.attention_head_dim)
        ema = copy.deepcopy(unet).requires_grad_(False)
        noise_scheduler = DDPMScheduler(num_train_timesteps=settings.num_train_timesteps,
                                        beta_schedule=settings.beta_schedule, prediction_type="epsilon")
        opt = torch.optim.AdamW(unet.parameters(), lr=settings.lr, weight_decay=0.0)

        def lr_at(step: int) -> float:  # linear warm-up, then cosine to 10 %
            if step < settings.warmup_steps:
                return (step + 1) / settings.warmup_steps
            frac = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
            return 0.1 + 0.45 * (1 + math.cos(math.pi * frac))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
        unet.train()
        bar = tqdm(total=settings.steps, desc="train decoder", disable=not progress)
        loss_value, n = float("nan"), len(x_all)
        for step in range(settings.steps):
            idx = torch.randint(0, n, (settings.batch_size,), generator=gen)
            k = int(torch.randint(settings.k_min, settings.k_max + 1, (1,), generator=gen))
            s = settings.sigma_max * float(torch.rand(1, generator=gen))  # one noise std per batch (DP-RDM)
            cond = means[idx, k - 1] + s * torch.randn(len(idx), dim, generator=gen)
            keep = (torch.rand(len(idx), 1, generator=gen) >= settings.drop_prob).float()
            cond = cond * keep  # zero vector = the unconditional branch of classifier-free guidance
            x0 = x_all[idx]
            eps = torch.randn(x0.shape, generator=gen)
            t = torch.randint(0, settings.num_train_timesteps, (len(idx),), generator=gen)
            pred = unet(noise_scheduler.add_noise(x0, eps, t), t, encoder_hidden_states=cond[:, None, :],
                        class_labels=cond).sample
            loss = F.mse_loss(pred, eps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                decay = min(settings.ema_decay, (1 + step) / (10 + step))
                for pe, p in zip(ema.parameters(), unet.parameters(), strict=True):
                    pe.lerp_(p, 1 - decay)
            loss_value = float(loss.detach())
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}")
        bar.close()
        seconds = time.perf_counter() - start
    _save_atomic(out, ema, DDIMScheduler.from_config(noise_scheduler.config))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    report = DecoderReport(out_dir=str(out), steps=settings.steps, seconds=round(seconds, 1),
                           final_loss=round(loss_value, 4), size_bytes=size)
    write_json_atomic(out / "training_settings.json", {
        "what": "tiny retrieval-conditioned UNet (DP-RDM 'adapt' training) on the PUBLIC half of MNIST-5k",
        "command": "python -m pipeline.train decoder",
        "settings": settings.to_dict(),
        "num_threads": num_threads,
        "condition": "mean of unit embeddings of k nearest public neighbours (self excluded), k~U{k_min..k_max} "
                     "per batch, + N(0, s^2 I) with s~U[0, sigma_max] per batch, zeroed with prob drop_prob",
        "weights": "EMA of the trained UNet",
        "encoder": {"dir": enc_dir.name, "embedding_dim": dim},
        "data_split": split.to_dict(),
        "train_seconds": report.seconds,
        "final_loss": report.final_loss,
        "training_scheduler": "DDPMScheduler", "sampling_scheduler": "DDIMScheduler",
        "versions": {"torch": torch.__version__},
    })
    return report

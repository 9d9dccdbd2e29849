"""``AttributionModel`` (a decoder UNet + its noise schedule + its conditioning) and ``RecordSet`` (images + conditions).

The model is called the way the decoder was trained (``pipeline.train.decoder``): the condition vector is both one
cross-attention token and the class-embedding projection input, ``unet(x_t, t, encoder_hidden_states=c[:, None],
class_labels=c)``. Any module with that call signature works (the tests use a small MLP).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.errors import PipelineInputError


def _as_unit_images(images, image_size: int | None) -> torch.Tensor:
    """uint8 (N, H, W) / (N, 1, H, W) in 0–255, or a float tensor already in [-1, 1] → (N, 1, S, S) float32."""
    if isinstance(images, torch.Tensor) and images.is_floating_point():
        x = images.detach().float()
    else:
        arr = np.asarray(images)
        if arr.dtype != np.uint8:
            raise PipelineInputError(f"images must be uint8 in 0-255 or a float tensor in [-1, 1]; found {arr.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(arr)).float().div_(127.5).sub_(1.0)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise PipelineInputError(f"images must have shape (N, H, W) or (N, C, H, W); found {tuple(x.shape)}")
    if image_size is not None and x.shape[-1] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    return x.contiguous()


@dataclass(frozen=True)
class RecordSet:
    """Records to attribute over (or queries to attribute): images, the conditions they were trained with, names.

    Attributes:
        images: (N, C, S, S) float32 in [-1, 1].
        conditions: (N, d) float32, the condition each record was (or a query is) generated/trained with.
        ids: (N,) int64 record ids (content ids of an index shard, row numbers, ...).
        sources: the source of each record (a path or a shard name), or None.
        labels: (N,) int64 class labels used to stratify the LDS subsets, or None.
    """

    images: torch.Tensor
    conditions: torch.Tensor
    ids: np.ndarray
    sources: tuple[str, ...] | None = None
    labels: np.ndarray | None = None

    @classmethod
    def from_arrays(cls, images, conditions, *, ids=None, sources: Sequence[str] | None = None, labels=None,
                    image_size: int | None = None) -> RecordSet:
        """Build a set from uint8 images (or float tensors in [-1, 1]) and their conditions.

        Raises:
            PipelineInputError: mismatched lengths or shapes.
        """
        x = _as_unit_images(images, image_size)
        c = torch.as_tensor(np.asarray(conditions) if not isinstance(conditions, torch.Tensor) else conditions)
        c = c.detach().float()
        n = len(x)
        if c.ndim != 2 or len(c) != n:
            raise PipelineInputError(f"conditions must have shape ({n}, d); found {tuple(c.shape)}")
        ids_arr = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
        if ids_arr.shape != (n,) or len(np.unique(ids_arr)) != n:
            raise PipelineInputError(f"ids must be {n} distinct integers; found shape {ids_arr.shape}")
        if sources is not None and len(sources) != n:
            raise PipelineInputError(f"sources must have {n} entries; found {len(sources)}")
        lab = None if labels is None else np.asarray(labels, dtype=np.int64)
        return cls(x, c, ids_arr, None if sources is None else tuple(str(s) for s in sources), lab)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, positions) -> RecordSet:
        """The records at ``positions`` (row numbers, not ids), in that order."""
        pos = np.asarray(positions, dtype=np.int64)
        idx = torch.from_numpy(pos)
        return RecordSet(self.images[idx], self.conditions[idx], self.ids[pos],
                         None if self.sources is None else tuple(self.sources[i] for i in pos),
                         None if self.labels is None else self.labels[pos])

    def source_of(self, position: int) -> str:
        return "" if self.sources is None else self.sources[position]


class AttributionModel:
    """A noise predictor ε_θ(x_t, t, c) with its DDPM schedule, as attribution and LDS see it.

    Args:
        unet: the denoiser, called as ``unet(x_t, t, encoder_hidden_states=c[:, None], class_labels=c)``; the
            output is the tensor itself or an object with ``.sample``.
        scheduler: any diffusers scheduler with ``alphas_cumprod`` and ``config.num_train_timesteps``.
        name: a label for reports (e.g. the decoder folder).
    """

    def __init__(self, unet: torch.nn.Module, scheduler, *, name: str = "") -> None:
        self.unet = unet.eval()
        self.scheduler = scheduler
        self.name = name
        self.alphas_cumprod = torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float32).clone()
        self.num_train_timesteps = int(scheduler.config.num_train_timesteps)
        self._hash: str | None = None

    @classmethod
    def from_decoder(cls, decoder, *, name: str = "") -> AttributionModel:
        """Wrap a ``TinyDecoder`` (its UNet and schedule; adapters loaded into it are part of the model)."""
        return cls(decoder.unet, decoder.scheduler, name=name)

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None) -> AttributionModel:
        """Load a decoder folder (None = the bundled tiny decoder) and wrap it."""
        from pipeline.decoders.tiny import BUNDLED_DECODER_DIR, TinyDecoder

        folder = Path(path) if path is not None else BUNDLED_DECODER_DIR
        return cls.from_decoder(TinyDecoder.from_pretrained(folder), name=folder.name)

    def parameters(self) -> dict[str, torch.Tensor]:
        """The trainable parameters attribution differentiates, detached (name → tensor)."""
        return {k: v.detach() for k, v in self.unet.named_parameters() if v.requires_grad}

    @property
    def num_parameters(self) -> int:
        return sum(v.numel() for v in self.parameters().values())

    @property
    def model_hash(self) -> str:
        """SHA-256 of every parameter and buffer (names, shapes, bytes) and of the noise schedule.

        Computed once per wrapper: build a new ``AttributionModel`` after changing the weights.
        """
        if self._hash is None:
            h = hashlib.sha256()
            state = self.unet.state_dict()
            for name in sorted(state):
                t = state[name].detach().cpu().contiguous()
                h.update(f"{name}:{tuple(t.shape)}:{t.dtype}\n".encode())
                h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
            h.update(self.alphas_cumprod.numpy().tobytes())
            h.update(json.dumps(sorted(p for p, v in self.unet.named_parameters() if v.requires_grad)).encode())
            self._hash = h.hexdigest()
        return self._hash

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (t of shape (B,) or a scalar)."""
        a = self.alphas_cumprod.to(x0.device)[t].reshape(-1, *([1] * (x0.ndim - 1)))
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def eps(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, params: dict | None = None) -> torch.Tensor:
        """ε_θ(x_t, t, c) for a batch; ``params`` replaces the module's parameters (``torch.func.functional_call``)."""
        kwargs = {"encoder_hidden_states": cond[:, None, :], "class_labels": cond}
        if params is None:
            out = self.unet(x_t, t, **kwargs)
        else:
            out = torch.func.functional_call(self.unet, params, (x_t, t), kwargs)
        return out.sample if hasattr(out, "sample") else out

    @property
    def image_size(self) -> int | None:
        """The UNet's ``sample_size`` when it has one (images are resized to it), else None."""
        config = getattr(self.unet, "config", None)
        size = getattr(config, "sample_size", None) if config is not None else None
        return int(size) if isinstance(size, int) else None

    def timestep_grid(self, k: int) -> torch.Tensor:
        """D-TRAK's ``uniform`` grid: range(0, T, T // K), K timesteps."""
        if not 1 <= k <= self.num_train_timesteps:
            raise PipelineInputError(f"timesteps must be in [1, {self.num_train_timesteps}]; found {k}")
        step = self.num_train_timesteps // k
        return torch.arange(0, step * k, step, dtype=torch.long)

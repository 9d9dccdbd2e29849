"""Which UNet parameters a DP fine-tuning run trains (DP-LDM, Liu et al. 2023, arXiv 2305.15759).

Modes (``TrainableMode``), on a diffusers ``UNet2DConditionModel``:

* ``attention``: every ``Transformer2DModel`` block (DP-LDM's ``SpatialTransformer``: GroupNorm, proj_in, the
  ``BasicTransformerBlock`` with self-attention ``attn1``, cross-attention ``attn2`` and its feed-forward,
  proj_out). This is what DP-LDM's released code trains (``train_condition_only``), minus the embedder.
* ``attention+conditioning``: the above plus the condition embedder, here the UNet's ``class_embedding``
  projection of the condition vector (DP-LDM trains its ``cond_stage_model`` the same way) and, when the UNet
  has one, ``encoder_hid_proj``.
* ``all``: every UNet parameter (the full fine-tuning baseline DP-LDM compares against).
* ``lora``: a PEFT LoRA (rank r, B initialised to zero, so the untrained adapter is the identity) on the
  attention projections ``to_q``, ``to_k``, ``to_v`` and ``to_out.0``; only the LoRA matrices train.

Invariant: every parameter outside the selection has ``requires_grad=False``, so DP-SGD never touches it and
it stays bit-identical (tested).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from pipeline.errors import PipelineInputError

__all__ = ["LORA_TARGETS", "TrainableMode", "TrainableSelection", "select_trainable"]

#: Attention projections a LoRA adapter wraps (diffusers ``Attention`` submodule names).
LORA_TARGETS: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
_ATTENTION_BLOCK = "Transformer2DModel"
_CONDITIONING = ("class_embedding", "encoder_hid_proj", "add_embedding")


class TrainableMode(enum.Enum):
    """What a fine-tuning run trains (``--trainable``)."""

    ATTENTION = "attention"
    ATTENTION_CONDITIONING = "attention+conditioning"
    ALL = "all"
    LORA = "lora"

    @classmethod
    def parse(cls, value: str | TrainableMode) -> TrainableMode:
        """The mode named ``value``.

        Raises:
            PipelineInputError: an unknown name.
        """
        if isinstance(value, cls):
            return value
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(m.value for m in cls)
            raise PipelineInputError(
                f"unknown trainable mode {value!r}; pass one of: {names} (e.g. --trainable attention)"
            ) from None


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainableSelection:
    """The outcome of :func:`select_trainable`.

    Attributes:
        mode: the mode applied.
        modules: dotted names of the trained modules (for ``lora``: the wrapped projections).
        parameters: dotted names of the trained parameters, in module order.
        trainable: number of trained scalars.
        total: number of scalars of the UNet as it is trained (for ``lora`` the base UNet plus the adapter).
        lora_rank, lora_alpha: the LoRA shape (None for other modes).
    """

    mode: TrainableMode
    modules: tuple[str, ...]
    parameters: tuple[str, ...]
    trainable: int
    total: int
    lora_rank: int | None = None
    lora_alpha: float | None = None

    @property
    def percent(self) -> float:
        """Trained scalars as a percentage of all scalars."""
        return 100.0 * self.trainable / self.total if self.total else 0.0


def _blocks(unet: torch.nn.Module, names: tuple[str, ...] | None, type_name: str | None) -> list[str]:
    found = []
    for name, module in unet.named_modules():
        if not name or any(name.startswith(f"{prefix}.") for prefix in found):
            continue
        if (type_name is not None and type(module).__name__ == type_name) or (names is not None and name in names):
            found.append(name)
    return found


def select_trainable(
    unet: torch.nn.Module, mode: TrainableMode | str, *, lora_rank: int = 4, lora_alpha: float | None = None
) -> TrainableSelection:
    """Freeze ``unet`` except the parameters of ``mode`` (mutates ``unet``: pass a copy you own).

    Args:
        unet: a diffusers ``UNet2DConditionModel`` (any module with ``Transformer2DModel`` attention blocks).
        mode: the :class:`TrainableMode` or its name.
        lora_rank: LoRA rank r (``lora`` only), >= 1.
        lora_alpha: LoRA scale numerator (``lora`` only); None = r (scale 1).

    Returns:
        The :class:`TrainableSelection`.

    Raises:
        PipelineInputError: unknown mode, a bad rank, or a UNet without the blocks the mode trains.
    """
    mode = TrainableMode.parse(mode)
    unet.requires_grad_(False)
    rank = alpha = None
    if mode is TrainableMode.ALL:
        modules = [""]
        unet.requires_grad_(True)
    elif mode is TrainableMode.LORA:
        if isinstance(lora_rank, bool) or not isinstance(lora_rank, int) or lora_rank < 1:
            raise PipelineInputError(f"lora rank must be an integer >= 1; found {lora_rank!r}; pass e.g. 4")
        from peft import LoraConfig, inject_adapter_in_model

        rank, alpha = lora_rank, float(lora_alpha if lora_alpha is not None else lora_rank)
        config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, init_lora_weights=True,
                            target_modules=list(LORA_TARGETS), bias="none")
        inject_adapter_in_model(config, unet)
        unet.requires_grad_(False)
        for name, param in unet.named_parameters():
            if ".lora_A." in name or ".lora_B." in name:
                param.requires_grad_(True)
        modules = sorted({n.rsplit(".lora_", 1)[0] for n, p in unet.named_parameters() if p.requires_grad})
    else:
        modules = _blocks(unet, None, _ATTENTION_BLOCK)
        if mode is TrainableMode.ATTENTION_CONDITIONING:
            modules += [n for n in _blocks(unet, _CONDITIONING, None) if n not in modules]
        for name in modules:
            unet.get_submodule(name).requires_grad_(True)
    params = [(n, p) for n, p in unet.named_parameters() if p.requires_grad]
    if not params:
        raise PipelineInputError(
            f"the decoder's UNet has no parameters for --trainable {mode.value} (no attention blocks); "
            "pass --trainable all"
        )
    return TrainableSelection(
        mode=mode,
        modules=tuple(m or "<unet>" for m in modules),
        parameters=tuple(n for n, _ in params),
        trainable=sum(p.numel() for _, p in params),
        total=sum(p.numel() for p in unet.parameters()),
        lora_rank=rank,
        lora_alpha=alpha,
    )

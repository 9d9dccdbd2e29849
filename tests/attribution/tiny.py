"""A tiny conditional ε-MLP on 8×8 digits (the seeds-anchors §C.4 replica's model), for fast attribution tests."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from pipeline.attribution import AttributionModel, RecordSet
from pipeline.attribution.retrain import ddpm_scheduler, finetune


class TinyEpsMLP(nn.Module):
    """ε_θ(x_t, t, c): [x, sinusoidal t-embedding, c] → hidden → hidden → x, SiLU; the decoder's call signature."""

    def __init__(self, side: int = 8, cond_dim: int = 2, hidden: int = 128, t_dim: int = 16) -> None:
        super().__init__()
        self.side, self.t_dim = side, t_dim
        d = side * side
        self.net = nn.Sequential(nn.Linear(d + t_dim + cond_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden),
                                 nn.SiLU(), nn.Linear(hidden, d))

    def forward(self, x, t, encoder_hidden_states=None, class_labels=None):
        half = self.t_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        ang = t.float()[:, None] * freqs[None]
        emb = torch.cat([ang.sin(), ang.cos()], dim=1)
        h = torch.cat([x.flatten(1), emb, class_labels], dim=1)
        return self.net(h).reshape(x.shape)


def digits_records(classes=(0, 1)) -> RecordSet:
    """sklearn's 8×8 digits of ``classes`` with a one-hot class condition."""
    from pipeline.data import load_digits_small

    images, labels = load_digits_small()
    keep = np.isin(labels, classes)
    images, labels = images[keep], labels[keep]
    cond = np.zeros((len(labels), len(classes)), dtype=np.float32)
    for j, c in enumerate(classes):
        cond[labels == c, j] = 1.0
    return RecordSet.from_arrays(images, cond, labels=labels)


def tiny_setting(n_train: int = 48, n_val: int = 16, backbone_steps: int = 400, steps: int = 150):
    """(backbone, full model, train set, val queries, retrain kwargs), all seeded."""
    records = digits_records()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(records))
    public = records.subset(order[n_train + n_val:])
    train = records.subset(order[:n_train])
    val = records.subset(order[n_train:n_train + n_val])
    torch.manual_seed(0)
    init = AttributionModel(TinyEpsMLP(), ddpm_scheduler(), name="tiny-mlp")
    backbone = finetune(init, public, steps=backbone_steps, batch_size=64, lr=2e-3, seed=0)
    kwargs = {"steps": steps, "batch_size": 16, "lr": 2e-3}
    full = finetune(backbone, train, seed=0, **kwargs)
    return backbone, full, train, val, kwargs

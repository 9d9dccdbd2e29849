"""Cheap retraining for LDS and counterfactual checks: fine-tune a copy of a model on some records.

The recipe is the decoder's (``pipeline.train.decoder``) shortened: ε-prediction MSE, uniform t, the condition
zeroed with probability ``drop_prob`` (classifier-free guidance), AdamW with a linear warm-up. LDS needs every
subset retrained with the full model's recipe, so build the full model with :func:`finetune` too.

Two modes: random (each run draws its own minibatches, timesteps and noise from ``seed``: what LDS's S subsets ×
seeds need), and a fixed :class:`TrainingSchedule` (:func:`fixed_schedule`) for counterfactuals: the run on D∖R
replays the run on D slot by slot and skips R's slots, so the only difference between the two models is R's
gradient terms, not a reshuffle of every minibatch.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.attribution.model import AttributionModel, RecordSet
from pipeline.errors import PipelineInputError
from pipeline.train._io import seeded_torch


def small_unet(condition_dim: int, *, image_size: int = 16, block_out_channels: tuple[int, ...] = (16, 32, 32)):
    """The bundled decoder's architecture (``build_unet``) at a quarter of its width: 0.36 M parameters at
    (16, 32, 32) against 1.41 M; per-sample gradients cost ~5.5 ms instead of ~46 ms on one CPU thread."""
    from pipeline.train.decoder import build_unet

    return build_unet(condition_dim, image_size=image_size, block_out_channels=block_out_channels)


def ddpm_scheduler(num_train_timesteps: int = 1000, beta_schedule: str = "squaredcos_cap_v2"):
    """The decoder's training schedule."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
                         prediction_type="epsilon")


@dataclass(frozen=True)
class TrainingSchedule:
    """Every random draw of a training run, fixed in advance per (step, slot), over the ids of the full set D.

    Step s trains on the records ``ids[s]`` (drawn uniformly with replacement from D), each with its own timestep
    ``t[s, slot]``, noise ``noise[s, slot]`` and condition-dropout flag ``keep[s, slot]``. A run on D∖R uses the same
    schedule and only skips the slots whose record is in R, so every kept record sees exactly the draws it saw in
    the run on D (a fixed-minibatch, leave-R-out counterfactual). Build it with :func:`fixed_schedule`.
    """

    ids: torch.Tensor  # (steps, batch) int64 record ids
    t: torch.Tensor  # (steps, batch) int64 timesteps
    noise: torch.Tensor  # (steps, batch, *image shape) float32
    keep: torch.Tensor  # (steps, batch, 1) float32, 0 where the condition is dropped
    universe: torch.Tensor  # (N,) the ids of D
    seed: int

    @property
    def steps(self) -> int:
        return int(self.ids.shape[0])

    @property
    def batch_size(self) -> int:
        return int(self.ids.shape[1])


def fixed_schedule(ids, *, steps: int = 300, batch_size: int = 32, seed: int = 0, image_shape=(1, 16, 16),
                   num_train_timesteps: int = 1000, drop_prob: float = 0.1) -> TrainingSchedule:
    """A :class:`TrainingSchedule` over the record ids of the full training set D (same draws' distribution as
    :func:`finetune`'s random mode: minibatches uniform with replacement, uniform t, Gaussian noise, dropout).

    Args:
        ids: the ids of D (``RecordSet.ids`` of the full set).
        steps, batch_size: optimisation steps and slots per step.
        seed: seed of every draw (one generator, consumed in a fixed order that does not depend on any removal).
        image_shape: (C, H, W) of the records' images.
        num_train_timesteps: T of the model's schedule.
        drop_prob: probability of zeroing a slot's condition.
    """
    ids_arr = torch.as_tensor(np.asarray(ids, dtype=np.int64))
    if ids_arr.ndim != 1 or len(ids_arr) == 0:
        raise PipelineInputError(f"ids must be a non-empty 1-d array of record ids; found shape {tuple(ids_arr.shape)}")
    gen = torch.Generator().manual_seed(seed)
    pos = torch.randint(0, len(ids_arr), (steps, batch_size), generator=gen)
    keep = (torch.rand(steps, batch_size, 1, generator=gen) >= drop_prob).float()
    noise = torch.randn((steps, batch_size, *image_shape), generator=gen)
    t = torch.randint(0, num_train_timesteps, (steps, batch_size), generator=gen)
    return TrainingSchedule(ids=ids_arr[pos], t=t, noise=noise, keep=keep, universe=ids_arr, seed=seed)


def finetune(base: AttributionModel, records: RecordSet, *, steps: int = 300, batch_size: int = 32,
             lr: float = 5e-4, warmup_steps: int = 20, drop_prob: float = 0.1, seed: int = 0,
             num_threads: int | None = 1, schedule: TrainingSchedule | None = None) -> AttributionModel:
    """Train a copy of ``base`` on ``records`` for ``steps`` minibatches; ``base`` is not modified.

    Args:
        base: the starting point (the public backbone).
        records: the training records (images in [-1, 1] and their conditions).
        steps, batch_size, lr, warmup_steps: optimisation (AdamW, weight decay 0, warm-up then constant).
        drop_prob: probability of zeroing a condition (the unconditional branch of guidance).
        seed: seed of the minibatches, noise and timesteps.
        num_threads: torch threads while training (restored afterwards).
        schedule: a fixed schedule over the full set's ids (then ``steps``, ``batch_size``, ``drop_prob`` and
            ``seed`` come from it): each step trains on the slots whose record is in ``records`` with the
            schedule's draws, and the loss is the sum over kept slots / ``batch_size``, so removing records removes
            exactly their terms. With every record kept, the result is bit-for-bit the run on the full set.

    Returns:
        A new :class:`AttributionModel` (same schedule, trained weights, ``eval()`` mode).
    """
    unet = copy.deepcopy(base.unet)
    n = len(records)
    if schedule is not None:
        steps, batch_size, seed = schedule.steps, schedule.batch_size, schedule.seed
        row_of = {int(i): r for r, i in enumerate(records.ids)}
        outside = np.setdiff1d(records.ids, schedule.universe.numpy())
        if len(outside):
            raise PipelineInputError(f"{len(outside)} records (e.g. id {int(outside[0])}) are not in the schedule's "
                                     "training set; build the schedule with fixed_schedule(full_set.ids)")
    params = [p for p in unet.parameters() if p.requires_grad]
    with seeded_torch(seed, num_threads) as gen:
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, warmup_steps)))
        unet.train()
        for step in range(steps):
            if schedule is None:
                idx = torch.randint(0, n, (batch_size,), generator=gen)  # with replacement, like the decoder
                keep = (torch.rand(len(idx), 1, generator=gen) >= drop_prob).float()
                eps = torch.randn(records.images[idx].shape, generator=gen)
                t = torch.randint(0, base.num_train_timesteps, (len(idx),), generator=gen)
            else:
                slots = [j for j, i in enumerate(schedule.ids[step].tolist()) if i in row_of]
                idx = torch.tensor([row_of[int(schedule.ids[step, j])] for j in slots], dtype=torch.long)
                keep, eps, t = schedule.keep[step, slots], schedule.noise[step, slots], schedule.t[step, slots]
            opt.zero_grad(set_to_none=False)
            if len(idx):
                x0, cond = records.images[idx], records.conditions[idx] * keep
                out = unet(base.add_noise(x0, eps, t), t, encoder_hidden_states=cond[:, None, :], class_labels=cond)
                pred = out.sample if hasattr(out, "sample") else out
                if schedule is None:
                    loss = (pred - eps).pow(2).mean()
                else:
                    loss = (pred - eps).pow(2).flatten(1).mean(1).sum() / batch_size
                if not math.isfinite(float(loss.detach())):
                    raise FloatingPointError("training diverged (non-finite loss); lower lr")
                loss.backward()
            else:
                for p in params:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
            opt.step()  # an emptied minibatch still steps (zero gradient), so the optimiser clock stays aligned
            sched.step()
    return AttributionModel(unet.eval(), base.scheduler, name=base.name)


def make_retrain(base: AttributionModel, **kwargs) -> Callable[[RecordSet, int], AttributionModel]:
    """``retrain(records, seed)`` for :func:`~pipeline.attribution.lds.evaluate_lds`: :func:`finetune` from ``base``
    with fixed ``kwargs`` (steps, lr, ...)."""

    def retrain(records: RecordSet, seed: int) -> AttributionModel:
        return finetune(base, records, seed=seed, **kwargs)

    return retrain

"""The fixed-minibatch schedule of the counterfactual check: removal skips slots and changes no other draw."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.attribution.retrain import finetune, fixed_schedule
from pipeline.errors import PipelineInputError


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.unet.state_dict().items()}


def test_removing_nothing_reproduces_the_full_run_bit_for_bit(tiny):
    backbone, _, train, _, kwargs = tiny
    sched = fixed_schedule(train.ids, steps=30, batch_size=kwargs["batch_size"], seed=3, image_shape=(1, 8, 8))
    lr = kwargs["lr"]
    full = _weights(finetune(backbone, train, lr=lr, schedule=sched))
    again = _weights(finetune(backbone, train, lr=lr, schedule=sched))
    shuffled = _weights(finetune(backbone, train.subset(np.random.default_rng(0).permutation(len(train))), lr=lr,
                                 schedule=sched))  # record order in the set is irrelevant: slots name ids
    for k in full:
        assert torch.equal(full[k], again[k]) and torch.equal(full[k], shuffled[k]), k
    removed = _weights(finetune(backbone, train.subset(np.arange(5, len(train))), lr=lr, schedule=sched))
    assert any(not torch.equal(full[k], removed[k]) for k in full)


def test_the_kept_records_draws_do_not_depend_on_a_removal(tiny):
    """The schedule is a function of (seed, D) only; a run on D∖R visits the same (id, t, noise, dropout) slots minus
    R's, so the full schedule restricted to kept ids is exactly what the D∖R run sees."""
    _, _, train, _, _ = tiny
    sched = fixed_schedule(train.ids, steps=20, batch_size=16, seed=3, image_shape=(1, 8, 8))
    again = fixed_schedule(train.ids, steps=20, batch_size=16, seed=3, image_shape=(1, 8, 8))
    for a, b in ((sched.ids, again.ids), (sched.t, again.t), (sched.noise, again.noise), (sched.keep, again.keep)):
        assert torch.equal(a, b)
    removed = set(train.ids[:10].tolist())
    kept_slots = ~torch.isin(sched.ids, torch.tensor(sorted(removed)))
    assert 0 < int(kept_slots.sum()) < sched.ids.numel()  # the removal really skips some slots and keeps others
    other = fixed_schedule(train.ids, steps=20, batch_size=16, seed=4, image_shape=(1, 8, 8))
    assert not torch.equal(sched.ids, other.ids)


def test_records_outside_the_schedule_are_refused(tiny):
    backbone, _, train, _, _ = tiny
    small = fixed_schedule(train.ids[:10], steps=2, batch_size=4, image_shape=(1, 8, 8))
    with pytest.raises(PipelineInputError, match="not in the schedule"):
        finetune(backbone, train, schedule=small)

"""One dry run of ALL of a train/forget's charges: a scope that affords each charge alone but not both is refused
before anything is removed, charged or trained."""

from __future__ import annotations

import math
from pathlib import Path

import dp_accounting as dpa
import pytest

from accountant import event_rdp
from accountant.errors import BudgetExceeded
from index import PrivateIndex
from pipeline.compartments.store import Compartments
from pipeline.compartments.train import (
    _adapter_event,
    _classifier_event,
    forget,
    train_compartments,
)

FAST_ADAPTER = {"batch_size": 10, "physical_batch_size": 10, "steps": 2, "trainable": "attention+conditioning"}
FAST_CLF = {"batch_size": 20, "steps": 5, "hidden": 16}


def _train(corpus: Path, ledger, decoder):
    return train_compartments(corpus / "index", ledger, epsilon=8.0, decoder=decoder, adapter=FAST_ADAPTER,
                              classifier=FAST_CLF, _seed=0)


def _squeeze(ledger, scope: str, adapter, classifier, records: int) -> None:
    """Spend ``scope`` down so that its room at the filter order lies between max(a, c) and a + c."""
    status = ledger.status(scope)
    order = status.filter_order
    a, c = (float(event_rdp(e, (order,))[0]) for e in (adapter, classifier))
    fill = status.rdp_budget - status.rdp_spent - (max(a, c) + a + c) / 2
    assert fill > 0
    ledger.charge(scope, event=dpa.GaussianDpEvent(math.sqrt(order / (2 * fill))), records={scope: records})
    assert ledger.fits(scope, event=adapter, records={scope: records})
    assert ledger.fits(scope, event=classifier, records={scope: records})


def test_forget_refused_before_removal_when_the_scope_affords_each_retraining_but_not_both(corpus, ledger, decoder):
    _train(corpus, ledger, decoder)
    index_dir = corpus / "index"
    store = Compartments(index_dir)
    counts = {"a": 49, "b": 50}  # after forgetting one record of a
    adapter = _adapter_event(ledger, "a", store.shards["a"]["settings"], 8.0, counts["a"])
    classifier = _classifier_event(ledger, counts, ["a", "b"], store.classifier["settings"], 8.0)
    _squeeze(ledger, "a", adapter, classifier, 50)
    spent = {n: ledger.status(n).epsilon_spent for n in ("a", "b")}
    charges = len(ledger.history())
    hashes = store.adapter_hashes()
    rid = next(PrivateIndex.open(index_dir).records("a"))[1]
    with pytest.raises(BudgetExceeded, match="together; nothing was removed or charged"):
        forget(index_dir, "a", ledger, ids=[rid], decoder=decoder, _seed=0)
    assert rid in {r for _, r, _ in PrivateIndex.open(index_dir).records("a")}
    assert {n: ledger.status(n).epsilon_spent for n in ("a", "b")} == spent and len(ledger.history()) == charges
    assert Compartments(index_dir).adapter_hashes() == hashes


def test_train_refused_before_any_charge_when_the_scope_affords_each_training_but_not_both(corpus, ledger, decoder):
    counts = {"a": 50, "b": 50}
    adapter = _adapter_event(ledger, "a", dict(FAST_ADAPTER, epochs=3, steps=2), 8.0, counts["a"])
    classifier = _classifier_event(ledger, counts, ["a", "b"], FAST_CLF, 8.0)
    _squeeze(ledger, "a", adapter, classifier, 50)
    spent = {n: ledger.status(n).epsilon_spent for n in ("a", "b")}
    with pytest.raises(BudgetExceeded, match="together; nothing was charged or trained"):
        _train(corpus, ledger, decoder)
    assert {n: ledger.status(n).epsilon_spent for n in ("a", "b")} == spent
    assert not (corpus / "index" / "compartments" / "manifest.json").exists()

"""finetune(): refusals before any charge, the one charge before the first step, the adapter, the combined budget.

The tests that need the multi-event ledger (``Ledger.fits`` / ``charge(event=...)``, phase-1 contract) are skipped
until the accountant lands in this branch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from opacus.optimizers import DPOptimizer

from accountant import Ledger
from accountant.errors import AccountantInputError, BudgetExceeded
from index import PrivateIndex
from pipeline.errors import PipelineInputError
from pipeline.finetune import TrainingFailed, finetune, read_manifest, training_epsilon, training_event

FAST = {"steps": 2, "batch_size": 8, "physical_batch_size": 8}
JSON_KEYS = {"epsilon", "delta", "noise_multiplier", "sample_rate", "steps", "trainable_parameters",
             "total_parameters", "trainable", "records", "adapter", "receipt"}


def _charges(ledger_path: Path) -> int:
    with Ledger(ledger_path, create=False, read_only=True) as fresh:
        return len(fresh.history())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_grad_norm": 0.0, "epsilon": 3.0}, PipelineInputError, "max grad norm C must be"),
        ({"trainable": "cross-attention", "epsilon": 3.0}, PipelineInputError, "unknown trainable mode"),
        ({"batch_size": 500, "epsilon": 3.0}, PipelineInputError, "larger than the 200 trainable records"),
        ({"epsilon": 3.0, "noise_multiplier": 1.0}, PipelineInputError, "exactly one of --epsilon"),
        ({}, PipelineInputError, "exactly one of --epsilon"),
        ({"epsilon": -1.0}, PipelineInputError, "epsilon must be"),
        ({"epsilon": 3.0, "cond_drop_prob": 1.0}, PipelineInputError, "cond_drop_prob must be in"),
    ],
    ids=["C0", "mode", "batch>records", "both", "neither", "eps<0", "drop=1"],
)
def test_bad_input_refused_before_any_charge(shared_index, decoder, ledger, tmp_path, kwargs, error, match) -> None:
    with pytest.raises(error, match=match) as err:
        finetune(shared_index, "default", ledger, tmp_path / "adapter", decoder=decoder, **(FAST | kwargs))
    assert "\n" not in str(err.value)
    assert _charges(ledger.path) == 0 and not (tmp_path / "adapter").exists()


def test_existing_output_refused(shared_index, decoder, ledger, tmp_path) -> None:
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "f").write_text("x")
    with pytest.raises(PipelineInputError, match="already exists"):
        finetune(shared_index, "default", ledger, tmp_path / "adapter", decoder=decoder, epsilon=3.0, **FAST)
    assert _charges(ledger.path) == 0


def test_shard_without_scope_refused(shared_index, decoder, tmp_path) -> None:
    ledger = Ledger(tmp_path / "empty.sqlite")
    with pytest.raises(AccountantInputError, match="scope 'default' is not in ledger"):
        finetune(shared_index, "default", ledger, tmp_path / "adapter", decoder=decoder, epsilon=3.0, **FAST)
    assert _charges(ledger.path) == 0


def test_decoder_of_another_width_refused(shared_index, ledger, tmp_path) -> None:
    from diffusers import DDIMScheduler
    from finetune_testlib import tiny_unet

    from pipeline.decoders import TinyDecoder

    other = TinyDecoder(tiny_unet(8), DDIMScheduler(num_train_timesteps=50))
    with pytest.raises(PipelineInputError, match="does not match the index dimension"):
        finetune(shared_index, "default", ledger, tmp_path / "adapter", decoder=other, epsilon=3.0, **FAST)
    assert _charges(ledger.path) == 0


def test_empty_shard_refused(corpus, decoder, ledger, tmp_path) -> None:
    index = PrivateIndex.open(corpus / "index")
    index.remove(sources=[str(corpus / "pngs")])
    with pytest.raises(PipelineInputError, match="has no readable records"):
        finetune(PrivateIndex.open(corpus / "index"), "default", ledger, tmp_path / "a", decoder=decoder, epsilon=3.0,
                 **FAST)
    assert _charges(ledger.path) == 0


def test_all_sources_gone_refused(corpus, decoder, ledger, tmp_path) -> None:
    for png in (corpus / "pngs").rglob("*.png"):
        png.unlink()
    with pytest.raises(PipelineInputError, match=r"no readable records \(200 stored, 200 with a missing"):
        finetune(PrivateIndex.open(corpus / "index"), "default", ledger, tmp_path / "a", decoder=decoder, epsilon=3.0,
                 **FAST)
    assert _charges(ledger.path) == 0


# -- with the multi-event ledger ------------------------------------------------------------------------------
def test_finetune_charges_once_and_writes_the_adapter(shared_index, decoder, ledger, tmp_path) -> None:
    result = finetune(shared_index, "default", ledger, tmp_path / "adapter", decoder=decoder, epsilon=3.0,
                      trainable="attention+conditioning", cond_drop_prob=0.9, **FAST)
    out = result.to_dict()
    assert set(out) >= JSON_KEYS and json.loads(json.dumps(out)) == out
    assert result.epsilon <= 3.0 and result.records == 200 and result.steps == 2
    assert result.sample_rate == pytest.approx(8 / 200)
    event = training_event(sample_rate=result.sample_rate, noise_multiplier=result.noise_multiplier, steps=2)
    assert result.epsilon == pytest.approx(training_epsilon(event, 1e-5))
    assert abs(result.epsilon - result.opacus_epsilon) <= 0.02 * result.opacus_epsilon
    history = ledger.history("default")
    assert len(history) == 1 and json.loads(history[0].event)["count"] == 2
    manifest = read_manifest(result.adapter)
    assert manifest["receipt"] == result.receipt["group_id"] and manifest["shard"] == "default"
    assert manifest["records"]["trained"] == 200 and manifest["dp"]["epsilon"] == result.epsilon
    assert manifest["conditioning"]["drop_prob"] == 0.9
    assert decoder.load_adapter(result.adapter) is not None


def test_training_over_the_remaining_budget_refused(shared_index, decoder, tmp_path) -> None:
    ledger = Ledger(shared_index.path / "budget.sqlite")
    ledger.create_scope("default", epsilon=1.0, delta=1e-5, k=10, q=0.5, sigma=1.0, records=200)
    ledger.charge("default")
    with pytest.raises(BudgetExceeded, match="cannot afford this training") as err:
        finetune(shared_index, "default", ledger, tmp_path / "adapter", decoder=decoder, epsilon=1.0, **FAST)
    assert err.value.exit_code == 3
    assert _charges(ledger.path) == 1 and not (tmp_path / "adapter").exists()


def test_charge_committed_before_first_step_and_kept_on_failure(shared_index, decoder, ledger, tmp_path,
                                                                 monkeypatch) -> None:
    seen = []

    def boom(self, closure=None):
        seen.append(_charges(ledger.path))  # another connection already sees the committed charge
        raise RuntimeError("simulated failure inside training")

    monkeypatch.setattr(DPOptimizer, "step", boom)
    with pytest.raises(TrainingFailed, match="the charge stays"):
        finetune(shared_index, "default", ledger, tmp_path / "adapter", decoder=decoder, epsilon=3.0, **FAST)
    assert seen == [1] and _charges(ledger.path) == 1 and not (tmp_path / "adapter").exists()


def test_killed_inside_training_the_charge_is_there(shared_index, decoder_dir, ledger, tmp_path) -> None:
    script = textwrap.dedent(f"""
        import os, signal
        from opacus.optimizers import DPOptimizer
        from accountant import Ledger
        from pipeline.decoders import TinyDecoder
        from pipeline.finetune import finetune
        DPOptimizer.step = lambda self, closure=None: os.kill(os.getpid(), signal.SIGKILL)
        finetune({str(shared_index.path)!r}, "default", Ledger({str(ledger.path)!r}), {str(tmp_path / 'a')!r},
                 decoder=TinyDecoder.from_pretrained({str(decoder_dir)!r}), epsilon=3.0, steps=2, batch_size=8)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert _charges(ledger.path) == 1 and not (tmp_path / "a").exists()


def test_query_after_finetune_refused_exactly_when_combined_epsilon_exceeds(shared_index, decoder, tmp_path) -> None:
    import dp_accounting as dpa

    from accountant.events import ADJACENCY

    ledger = Ledger(shared_index.path / "budget.sqlite")
    ledger.create_scope("default", epsilon=4.0, delta=1e-5, k=10, q=0.5, sigma=0.5, records=200)
    finetune(shared_index, "default", ledger, tmp_path / "adapter", decoder=decoder, epsilon=2.0, **FAST)
    status = ledger.status("default")
    order = status.filter_order
    query = ledger.mechanism("default").dp_event()
    query_rdp = dpa.rdp.RdpAccountant([order], ADJACENCY).compose(query)._rdp[0]
    for _ in range(10_000):
        before = ledger.status("default")
        combined = dpa.rdp.rdp_privacy_accountant.compute_epsilon([order], [before.rdp_spent + query_rdp], 1e-5)[0]
        try:
            ledger.charge("default")
        except BudgetExceeded:
            assert combined > 4.0  # refused exactly when the next query would take the total over
            break
        assert combined <= 4.0
    else:
        pytest.fail("the budget never ran out")

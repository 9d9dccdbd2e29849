"""The compartments writer lock: a second `train`/`forget` process is refused (exit 3) before it does anything."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from index import PrivateIndex
from pipeline.compartments import train as train_mod
from pipeline.compartments.store import Compartments, CompartmentsBusy
from pipeline.compartments.train import forget, train_compartments

ROOT = Path(__file__).resolve().parents[2]
FAST_ADAPTER = {"batch_size": 10, "physical_batch_size": 10, "steps": 2, "trainable": "attention+conditioning"}
FAST_CLF = {"batch_size": 20, "steps": 5, "hidden": 16}
BUSY = "being trained or forgotten by another process"
HOLD = ("import sys; from pipeline.compartments import compartments_lock\n"
        "with compartments_lock(sys.argv[1]):\n"
        "    print('locked', flush=True); sys.stdin.read()\n")


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")


def _cli(*args: str) -> subprocess.CompletedProcess:
    """``dprdm ARGS`` in a separate process."""
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True,
                          env=_env(), cwd=ROOT, timeout=300)


def _train(corpus: Path, ledger, decoder):
    return train_compartments(corpus / "index", ledger, epsilon=8.0, decoder=decoder, adapter=FAST_ADAPTER,
                              classifier=FAST_CLF, _seed=0)


@pytest.mark.slow
def test_second_writer_refused_while_another_process_holds_the_lock(corpus, ledger, decoder, decoder_dir):
    _train(corpus, ledger, decoder)
    index_dir = corpus / "index"
    manifest = (index_dir / "compartments" / "manifest.json").read_bytes()
    spent = {n: ledger.status(n).epsilon_spent for n in ("a", "b")}
    rid = next(PrivateIndex.open(index_dir).records("a"))[1]
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(index_dir)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=_env(), cwd=ROOT)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(CompartmentsBusy, match=BUSY):
            forget(index_dir, "a", ledger, ids=[rid], decoder=decoder, _seed=0)
        with pytest.raises(CompartmentsBusy, match=BUSY):
            _train(corpus, ledger, decoder)
        for args in (["forget", "--index", str(index_dir), "--shard", "a", "--id", str(rid), "--decoder",
                      str(decoder_dir)],
                     ["compartments", "train", "--index", str(index_dir), "--epsilon", "8", "--decoder",
                      str(decoder_dir)],
                     ["compartments", "mark-public", "--index", str(index_dir), "--shard", "a", "--note", "CC0"]):
            out = _cli(*args)
            assert out.returncode == 3, (args, out.stderr)
            assert BUSY in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
        # nothing was removed, charged or written
        assert rid in {r for _, r, _ in PrivateIndex.open(index_dir).records("a")}
        assert {n: ledger.status(n).epsilon_spent for n in ("a", "b")} == spent
        assert (index_dir / "compartments" / "manifest.json").read_bytes() == manifest
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    # released when the holder ends: the same forget now runs
    assert forget(index_dir, "a", ledger, ids=[rid], decoder=decoder, _seed=0)["removed"] == 1


def test_lock_is_held_from_the_charges_to_the_manifest_commit(corpus, ledger, decoder, decoder_dir, monkeypatch):
    """While a training is between its adapter charges and its commit, a `dprdm forget` process is refused."""
    _train(corpus, ledger, decoder)
    index_dir = corpus / "index"
    rid = next(PrivateIndex.open(index_dir).records("b"))[1]
    seen = {}
    original = train_mod._train_classifier

    def classifier_then_probe(*args, **kwargs):
        seen["cli"] = _cli("forget", "--index", str(index_dir), "--shard", "b", "--id", str(rid), "--decoder",
                           str(decoder_dir))
        return original(*args, **kwargs)

    monkeypatch.setattr(train_mod, "_train_classifier", classifier_then_probe)
    _train(corpus, ledger, decoder)
    assert seen["cli"].returncode == 3 and BUSY in seen["cli"].stderr
    assert rid in {r for _, r, _ in PrivateIndex.open(index_dir).records("b")}
    Compartments(index_dir).verify()

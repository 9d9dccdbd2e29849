"""pipeline/cli_compartments.py on its own root app (the lead registers it in pipeline/cli.py)."""

from __future__ import annotations

import json

import typer
from typer.testing import CliRunner

from pipeline import cli_compartments


def _app() -> typer.Typer:
    root = typer.Typer()

    @root.callback()
    def _main() -> None:
        pass

    cli_compartments.register(root)
    return root


def test_cli_mark_public_train_info_forget(corpus, decoder_dir, monkeypatch):
    from pipeline.compartments import train as train_mod

    monkeypatch.setitem(train_mod.PUBLIC_ADAPTER_DEFAULTS, "steps", 1)
    monkeypatch.setitem(train_mod.CLASSIFIER_DEFAULTS, "steps", 3)
    monkeypatch.setitem(train_mod.CLASSIFIER_DEFAULTS, "hidden", 16)
    app, runner, index = _app(), CliRunner(), str(corpus / "index")
    refused = runner.invoke(app, ["compartments", "train", "--index", index, "--non-private", "--decoder",
                                  str(decoder_dir)])
    assert refused.exit_code != 0 and "not marked public" in str(refused.exception)
    for shard in ("a", "b"):
        ok = runner.invoke(app, ["compartments", "mark-public", "--index", index, "--shard", shard, "--note", "CC0"])
        assert ok.exit_code == 0, ok.output
    ok = runner.invoke(app, ["compartments", "train", "--index", index, "--non-private", "--decoder",
                             str(decoder_dir), "--json"])
    assert ok.exit_code == 0, ok.output
    ok = runner.invoke(app, ["compartments", "train", "--index", index, "--non-private", "--shard", "a",
                             "--trainable", "attention", "--decoder", str(decoder_dir), "--json"])
    assert ok.exit_code == 0, ok.output
    info = runner.invoke(app, ["compartments", "info", "--index", index, "--json"])
    shards = json.loads(info.output)["shards"]
    assert set(shards) == {"a", "b"} and (shards["a"]["trainable"], shards["b"]["trainable"]) == ("attention", "all")
    bad = runner.invoke(app, ["compartments", "train", "--index", index, "--non-private", "--trainable", "everything",
                              "--decoder", str(decoder_dir)])
    assert bad.exit_code != 0 and "unknown trainable mode" in str(bad.exception)
    human = runner.invoke(app, ["compartments", "info", "--index", index])
    assert "no DP guarantee" in human.output
    from index import PrivateIndex

    rid = next(PrivateIndex.open(index).records("b"))[1]
    out = runner.invoke(app, ["forget", "--index", index, "--shard", "b", "--id", str(rid), "--decoder",
                              str(decoder_dir), "--json"])
    assert out.exit_code == 0, out.output
    payload = json.loads(out.output)
    assert payload["removed"] == 1 and payload["unchanged"] == ["a"] and payload["retrained"] == ["b", "classifier"]
    assert {"shard", "seconds", "full_retrain_seconds_estimate"} <= set(payload)


def test_generate_compose_reports_shard_weights(corpus, decoder_dir, monkeypatch, tmp_path):
    """``dprdm generate --compose`` (the real root app): one charge, images, and the mean w_i of the trajectory."""
    from accountant import Ledger
    from pipeline.cli import app
    from pipeline.compartments import train as train_mod

    monkeypatch.setitem(train_mod.PUBLIC_ADAPTER_DEFAULTS, "steps", 1)
    monkeypatch.setitem(train_mod.CLASSIFIER_DEFAULTS, "steps", 3)
    monkeypatch.setitem(train_mod.CLASSIFIER_DEFAULTS, "hidden", 16)
    runner, index = CliRunner(), str(corpus / "index")
    for shard in ("a", "b"):
        assert runner.invoke(app, ["compartments", "mark-public", "--index", index, "--shard", shard,
                                   "--note", "CC0"]).exit_code == 0
    trained = runner.invoke(app, ["compartments", "train", "--index", index, "--non-private", "--decoder",
                                  str(decoder_dir), "--json"])
    assert trained.exit_code == 0, trained.output
    init = runner.invoke(app, ["budget", "init", "--index", index, "--epsilon", "5", "--delta", "1e-6",
                               "--queries", "10", "--k", "3", "--q", "0.5", "--json"])
    assert init.exit_code == 0, init.stderr
    args = ["generate", "a handwritten digit 1", "--index", index, "--decoder", str(decoder_dir), "--compose",
            "--n-images", "1", "--steps", "2", "--json"]
    both = runner.invoke(app, [*args, "--out", str(tmp_path / "both")])
    assert both.exit_code == 0, both.stderr
    weights = json.loads(both.stdout)["shard_weights"]
    assert set(weights) == {"a", "b"} and abs(sum(weights.values()) - 1.0) < 1e-5
    only_a = runner.invoke(app, [*args, "--shard", "a", "--weights", "naive", "--out", str(tmp_path / "a")])
    assert only_a.exit_code == 0, only_a.stderr
    assert json.loads(only_a.stdout)["shard_weights"] == {"a": 1.0}
    guided = runner.invoke(app, [*args, "--shard", "b", "--eta", "1", "--base-guidance", "1.5",
                                 "--out", str(tmp_path / "g")])
    assert guided.exit_code == 0, guided.stderr
    assert json.loads(guided.stdout)["shard_weights"] == {"b": 1.0}
    for bad, match in ((["--eta", "1"], "add --compose"), (["--compose", "--eta", "2"], "--eta must be in")):
        refused = runner.invoke(app, ["generate", "a digit", "--index", index, "--decoder", str(decoder_dir),
                                      "--out", str(tmp_path / "r"), *bad])
        assert refused.exit_code == 2 and match in refused.stderr and not (tmp_path / "r").exists()
    with Ledger(corpus / "index" / "budget.sqlite", read_only=True) as ledger:
        assert len(ledger.history()) == 4  # two scopes charged by the first query, one by each later one

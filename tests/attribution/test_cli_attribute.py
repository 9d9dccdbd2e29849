"""``dprdm attribute``: an image folder or an index shard as the training set, JSON, strips, the index-side cache and
its shrinking, the owner-only help, one-line exit-2 errors, adapters, and ``attribute evaluate`` (LDS).

Everything runs in-process on a tiny randomly initialised decoder (8x8, the decoder's layout) over 18 digits, with
K = 2 and P = 32: attribution quality is not under test here (tests/attribution/test_lds.py is), the command is.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from digit_folders import write_digit_classes
from typer.testing import CliRunner

from index import PrivateIndex, build_index
from pipeline.attribution import drop_cached_records, forget_hook
from pipeline.attribution.cache import read_entry
from pipeline.cli import app
from pipeline.data import load_mnist_split, to_pil

RUNNER = CliRunner()
FAST = ["--timesteps", "2", "--projection-dim", "32", "--threads", "1"]
OWNER_ONLY = "owner-only: names training records; never expose it to analysts"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """18 private digits (0, 1, 7; six each) as ``<label>/<row>.png``."""
    return write_digit_classes(tmp_path_factory.mktemp("attr-corpus") / "digits", (0, 1, 7), 6)


@pytest.fixture(scope="module")
def built(tmp_path_factory, corpus: Path) -> Path:
    """An index over ``corpus`` with the bundled encoder, shard 'train'."""
    folder = tmp_path_factory.mktemp("attr-index") / "index"
    build_index(corpus, folder, shard="train", progress=False, num_threads=1)
    return folder


@pytest.fixture()
def index_dir(tmp_path: Path, built: Path) -> Path:
    return Path(shutil.copytree(built, tmp_path / "index"))


@pytest.fixture(scope="module")
def decoder(tmp_path_factory) -> Path:
    """A tiny randomly initialised TinyDecoder (8x8, 16-d conditions like the bundled encoder), saved to a folder."""
    from diffusers import DDPMScheduler

    from pipeline.decoders import TinyDecoder
    from pipeline.train.decoder import build_unet

    torch.manual_seed(0)
    unet = build_unet(16, image_size=8, block_out_channels=(8, 16), attention_head_dim=4)
    folder = tmp_path_factory.mktemp("attr-decoder") / "tiny"
    TinyDecoder(unet, DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")).save_pretrained(folder)
    return folder


def _query(corpus: Path) -> Path:
    return sorted((corpus / "7").glob("*.png"))[0]


def _invoke(*args: str):
    return RUNNER.invoke(app, [str(a) for a in args])


def _json(result) -> dict:
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def _one_error_line(result, code: int = 2) -> str:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def _cache_rows(root: Path) -> int:
    return sum(len(read_entry(p)) for p in root.rglob("*.npz"))


# ---------------------------------------------------------------------------------------------- --train FOLDER


def test_attribute_against_a_folder_json_and_strip(corpus: Path, decoder: Path, tmp_path: Path) -> None:
    query = _query(corpus)
    out = tmp_path / "out"
    doc = _json(_invoke("attribute", query, "--train", corpus, "--decoder", decoder, "--top", "3",
                        "--out", out, "--json", *FAST))
    assert doc["method"] == "das" and doc["timesteps"] == 2 and doc["projection_dim"] == 32
    assert doc["lambda"] > 0 and len(doc["model_hash"]) == 64 and doc["n_train"] == 18
    assert doc["privacy"] == OWNER_ONLY and doc["training"]["records"] == 18 and doc["training"]["skipped"] == []
    (entry,) = doc["queries"]
    assert entry["query"] == str(query.resolve())
    assert [r["rank"] for r in entry["top"]] == [1, 2, 3]
    assert set(entry["top"][0]) == {"rank", "id", "source", "score"}
    assert str(query.resolve()) in [r["source"] for r in entry["top"]]  # the query IS a training record
    (strip,) = doc["strips"]
    assert Path(strip).parent == out and stat.S_IMODE(Path(strip).stat().st_mode) == 0o600
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    # --out also holds the feature cache of a --train run; the second run reads it
    assert doc["cache"]["hit"] is False and Path(doc["cache"]["path"]).is_relative_to(out)
    again = _json(_invoke("attribute", query, "--train", corpus, "--decoder", decoder, "--top", "3",
                          "--out", out, "--json", *FAST))
    assert again["cache"]["hit"] is True and again["queries"] == doc["queries"]


def test_attribute_human_output_and_squared_method(corpus: Path, decoder: Path) -> None:
    result = _invoke("attribute", _query(corpus), "--train", corpus, "--decoder", decoder, "--top", "2",
                     "--method", "dtrak-squared", *FAST)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("dtrak-squared, K=2, P=32")
    assert f"query {_query(corpus).resolve()}" in result.stdout and OWNER_ONLY in result.stdout


# ---------------------------------------------------------------------------------------------- --index --shard


def test_attribute_against_an_index_shard_caches_under_the_index(index_dir: Path, corpus: Path,
                                                                  decoder: Path) -> None:
    query = _query(corpus)
    args = ["attribute", query, "--index", index_dir, "--shard", "train", "--decoder", decoder, "--top", "3",
            "--json", *FAST]
    doc = _json(_invoke(*args))
    assert doc["training"]["shard"] == "train" and doc["training"]["records"] == 18
    assert str(query.resolve()) in [r["source"] for r in doc["queries"][0]["top"]]
    ids = {r["id"] for r in doc["queries"][0]["top"]}
    assert ids <= {i for _, i, _ in PrivateIndex.open(index_dir).records("train")}

    root = index_dir / "attribution"
    files = list(root.rglob("*.npz"))
    assert len(files) == 1 and doc["cache"]["hit"] is False
    assert Path(doc["cache"]["path"]).is_relative_to(root / "train")
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    for folder in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert _cache_rows(root) == 18

    again = _json(_invoke(*args))
    assert again["cache"]["hit"] is True and again["queries"] == doc["queries"]

    removed = sorted(ids)[:2]
    assert drop_cached_records(index_dir, removed) == 2
    assert _cache_rows(root) == 16
    assert drop_cached_records(index_dir, removed) == 0  # idempotent
    assert drop_cached_records(index_dir, [1, 2, 3], shard="other") == 0


def test_a_changed_shard_replaces_its_cached_set(index_dir: Path, corpus: Path, decoder: Path,
                                                 tmp_path: Path) -> None:
    args = ["attribute", _query(corpus), "--index", index_dir, "--shard", "train", "--decoder", decoder, "--json",
            *FAST]
    first = _json(_invoke(*args))
    PrivateIndex.open(index_dir).add(write_digit_classes(tmp_path / "more", (3,), 2), shard="train",
                                     num_threads=1)
    second = _json(_invoke(*args))
    assert second["training"]["records"] == 20 and second["cache"]["hit"] is False
    assert second["cache"]["path"] != first["cache"]["path"] and not Path(first["cache"]["path"]).exists()
    assert _cache_rows(index_dir / "attribution") == 20


def test_forget_hook_drops_rows_before_index_remove_commits(index_dir: Path, corpus: Path, decoder: Path) -> None:
    _json(_invoke("attribute", _query(corpus), "--index", index_dir, "--shard", "train", "--decoder", decoder,
                  "--json", *FAST))
    idx = PrivateIndex.open(index_dir)
    victim = next(i for _, i, _ in idx.records("train"))
    seen = []
    idx.remove(ids=[victim], before_commit=forget_hook(idx.path, lambda shard, ids: seen.append((shard, list(ids)))))
    assert seen == [("train", [victim])]
    rows = [read_entry(p) for p in (index_dir / "attribution").rglob("*.npz")]
    assert rows and all(victim not in f.ids for f in rows) and sum(len(f) for f in rows) == 17
    idx.drop_shard("train", before_commit=forget_hook(idx.path))
    assert not (index_dir / "attribution" / "train").exists()


def test_records_whose_source_is_gone_are_skipped_and_reported(tmp_path: Path, decoder: Path) -> None:
    corpus = write_digit_classes(tmp_path / "digits", (1, 7), 4)
    build_index(corpus, tmp_path / "index", shard="s", progress=False, num_threads=1)
    gone = sorted((corpus / "1").glob("*.png"))[0]
    gone.unlink()
    doc = _json(_invoke("attribute", _query(corpus), "--index", tmp_path / "index", "--shard", "s",
                        "--decoder", decoder, "--json", *FAST))
    assert doc["training"]["records"] == 7
    (skip,) = doc["training"]["skipped"]
    assert skip["source"] == str(gone) and "unreadable" in skip["reason"] and isinstance(skip["id"], int)
    assert all(r["source"] != str(gone) for r in doc["queries"][0]["top"])


def test_dataset_rows_are_read_back_and_a_gone_dataset_is_one_line(tmp_path: Path, decoder: Path) -> None:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    images = load_mnist_split().private_images[:8]
    cells = []
    for image in images:
        buffer = io.BytesIO()
        to_pil(image).save(buffer, format="PNG")
        cells.append({"bytes": buffer.getvalue(), "path": None})
    pq.write_table(pa.table({"image": cells}), tmp_path / "data.parquet")
    to_pil(images[3]).save(tmp_path / "q.png")
    build_index(tmp_path / "data.parquet", tmp_path / "index", shard="s", progress=False, num_threads=1)
    args = ["attribute", tmp_path / "q.png", "--index", tmp_path / "index", "--shard", "s", "--decoder", decoder,
            "--top", "3", *FAST]
    doc = _json(_invoke(*args, "--json"))
    assert doc["training"]["records"] == 8
    assert f"{tmp_path / 'data.parquet'}#[3]" in [r["source"] for r in doc["queries"][0]["top"]]
    (tmp_path / "data.parquet").unlink()
    assert "none of the 8 records of shard 's'" in _one_error_line(_invoke(*args))


def test_the_forget_hook_loads_no_model_code_when_nothing_is_cached(tmp_path: Path) -> None:
    """``index remove`` wraps its hook with ``forget_hook``: without a cache it must not import torch."""
    code = (f"import sys\nfrom pipeline.attribution import forget_hook\nforget_hook({str(tmp_path)!r})('s', [1, 2])\n"
            "print(','.join(m for m in ('torch', 'faiss', 'diffusers', 'open_clip') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True,
                          timeout=120)  # fmt: skip
    assert done.stdout.strip() == ""


# ---------------------------------------------------------------------------------------------- help and errors


def test_help_says_owner_only() -> None:
    for args in (["attribute", "--help"], ["attribute", "run", "--help"], ["attribute", "evaluate", "--help"]):
        result = _invoke(*args)
        assert result.exit_code == 0
        assert OWNER_ONLY in " ".join(result.stdout.split()), args


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--train", "{missing}"], "does not exist"),
        (["--index", "{index}", "--shard", "nope"], "no shard 'nope'"),
        (["--train", "{corpus}", "--method", "lora"], "method must be one of"),
        (["--train", "{corpus}", "--index", "{index}", "--shard", "train"], "either --train SOURCE or --index"),
        ([], "either --train SOURCE or --index"),
        (["--index", "{index}"], "--index needs --shard"),
        (["--train", "{corpus}", "--lambda", "0"], "--lambda must be > 0"),
        (["--train", "{corpus}", "--top", "0"], "--top"),
    ],
)
def test_bad_inputs_are_one_line_exit_2(extra, needle, corpus: Path, index_dir: Path, tmp_path: Path) -> None:
    fill = {"{missing}": str(tmp_path / "missing"), "{index}": str(index_dir), "{corpus}": str(corpus)}
    result = _invoke("attribute", _query(corpus), *[fill.get(a, a) for a in extra], *FAST)
    assert needle in _one_error_line(result)


def test_missing_query_and_not_an_index(corpus: Path, tmp_path: Path) -> None:
    line = _one_error_line(_invoke("attribute", tmp_path / "nothing.png", "--train", corpus))
    assert "query" in line and "does not exist" in line
    line = _one_error_line(_invoke("attribute", _query(corpus), "--index", corpus, "--shard", "x", "--json"))
    assert json.loads(line)["error"]["message"]


def test_a_shard_the_caller_cannot_read_is_refused_exit_3(index_dir: Path, corpus: Path, decoder: Path,
                                                           monkeypatch) -> None:
    from index.shard import Shard

    def denied(self, positions):
        raise PermissionError(13, "Permission denied", str(index_dir / "shards" / "x" / "embeddings.npy"))

    monkeypatch.setattr(Shard, "rows", denied)
    line = _one_error_line(_invoke("attribute", _query(corpus), "--index", index_dir, "--shard", "train",
                                   "--decoder", decoder, *FAST), code=3)
    assert "owner-only" in line and "Permission denied" in line


def test_adapter_needs_the_finetuning_extra(corpus: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pipeline.finetune", None)  # as if the extra were not installed
    (tmp_path / "adapter").mkdir()
    line = _one_error_line(_invoke("attribute", _query(corpus), "--train", corpus, "--adapter", tmp_path / "adapter"))
    assert "fine-tuning extra" in line


def test_adapter_is_loaded_through_pipeline_finetune(corpus: Path, decoder: Path, tmp_path: Path,
                                                     monkeypatch) -> None:
    """When ``pipeline.finetune.load_adapter`` exists, the adapter's trainable parameters are attributed."""
    calls = []

    def load_adapter(dec, folder):
        calls.append(Path(folder))
        for name, param in dec.unet.named_parameters():
            param.requires_grad_("attn" in name)  # a frozen base with trainable attention, like an adapter
        return dec

    module = types.ModuleType("pipeline.finetune")
    module.load_adapter = load_adapter
    monkeypatch.setitem(sys.modules, "pipeline.finetune", module)
    (tmp_path / "adapter").mkdir()
    base = _json(_invoke("attribute", _query(corpus), "--train", corpus, "--decoder", decoder, "--json", *FAST))
    doc = _json(_invoke("attribute", _query(corpus), "--train", corpus, "--decoder", decoder,
                        "--adapter", tmp_path / "adapter", "--json", *FAST))
    assert calls == [tmp_path / "adapter"] and doc["adapter"] == str(tmp_path / "adapter")
    assert doc["model_hash"] != base["model_hash"] and doc["neighbours"] == 0 and base["neighbours"] == 10


def test_a_real_adapter_attributes_only_its_tensors(corpus: Path, decoder: Path, tmp_path: Path) -> None:
    """An adapter written by ``pipeline.finetune.save_adapter``: loaded by ``load_adapter`` (which freezes the UNet),
    then only the adapter's tensors are differentiated."""
    finetune = pytest.importorskip("pipeline.finetune")
    from pipeline.decoders import TinyDecoder

    base = TinyDecoder.from_pretrained(decoder)
    state = {n: p.detach() + 0.01 for n, p in base.unet.named_parameters() if "attn" in n}
    manifest = {"base_decoder": {"sha256": finetune.decoder_sha256(base)}, "trainable": "attention",
                "parameters": sorted(state)}
    adapter = finetune.save_adapter(tmp_path / "adapter", state, manifest)
    plain = _json(_invoke("attribute", _query(corpus), "--train", corpus, "--decoder", decoder, "--json", *FAST))
    doc = _json(_invoke("attribute", _query(corpus), "--train", corpus, "--decoder", decoder, "--adapter", adapter,
                        "--json", *FAST))
    assert doc["parameters"] == sum(t.numel() for t in state.values()) < plain["parameters"]
    assert doc["model_hash"] != plain["model_hash"] and doc["adapter"] == str(adapter)
    assert str(_query(corpus).resolve()) in [r["source"] for r in doc["queries"][0]["top"]]
    other = tmp_path / "other"  # an adapter for another decoder: one line, exit 2
    shutil.copytree(adapter, other)
    manifest_path = other / "adapter.json"
    manifest_path.write_text(manifest_path.read_text().replace(manifest["base_decoder"]["sha256"], "0" * 64))
    assert "trained for decoder" in _one_error_line(
        _invoke("attribute", _query(corpus), "--train", corpus, "--decoder", decoder, "--adapter", other, *FAST))


# ---------------------------------------------------------------------------------------------- evaluate


def test_evaluate_prints_lds_rows(corpus: Path, decoder: Path) -> None:
    args = ["attribute", "evaluate", "--train", corpus, "--decoder", decoder, "--val", "4", "--subsets", "4",
            "--seeds", "1", "--steps", "2", "--batch-size", "8", "--gt-timesteps", "4", "--gt-noise-seeds", "1",
            "--method", "das", "--method", "trak-squared", "--timesteps", "2", "--projection-dim", "16",
            "--threads", "1"]
    doc = _json(_invoke(*args, "--json"))
    assert doc["settings"]["n_train"] == 14 and doc["settings"]["subsets"] == 4 and doc["privacy"] == OWNER_ONLY
    assert [(r["method"], r["timesteps"]) for r in doc["rows"]] == [("das", 2), ("trak-squared", 2)]
    for row in doc["rows"]:
        assert -1 <= row["lds_best"] <= 1 and row["lambda_best"] > 0 and row["lambda_heldout"] > 0
    human = _invoke(*args)
    assert human.exit_code == 0, human.stderr
    assert "best-lambda LDS" in human.stdout and "held-out LDS" in human.stdout
    assert any(line.startswith("das ") for line in human.stdout.splitlines())


def test_evaluate_bad_inputs(corpus: Path, tmp_path: Path) -> None:
    assert "does not exist" in _one_error_line(_invoke("attribute", "evaluate", "--train", tmp_path / "x"))
    assert "method must be one of" in _one_error_line(
        _invoke("attribute", "evaluate", "--train", corpus, "--method", "nope"))
    assert "fewer than 8" in _one_error_line(_invoke("attribute", "evaluate", "--train", corpus, "--val", "12",
                                                     "--subsets", "4"))

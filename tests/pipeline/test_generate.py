"""DPRDMPipeline: one charged query per call, shared by all its images; λ = 0 reads nothing private."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from index import PrivateIndex
from pipeline import DPRDMPipeline, GenerationResult, PrivateRetriever, QueryKind, save_generation
from pipeline.errors import PipelineInputError

SCOPE = {"k": 5, "q": 0.2, "sigma": 0.5, "epsilon": 10.0}


@pytest.fixture()
def setup(index_dir: Path, make_ledger, encoder, decoder):
    ledger = make_ledger(default=SCOPE)
    return DPRDMPipeline(PrivateRetriever(PrivateIndex.open(index_dir), ledger), encoder, decoder), ledger


def test_all_images_of_one_call_share_one_charge(setup) -> None:
    generate, ledger = setup
    result = generate("a handwritten digit 3", num_images=3, steps=2, generator=torch.Generator().manual_seed(0))
    assert isinstance(result, GenerationResult)
    assert len(result.images) == 3 and all(isinstance(image, Image.Image) for image in result.images)
    assert result.charged and result.query_kind is QueryKind.TEXT
    assert len(ledger.history("default")) == 1
    record = result.to_dict()
    assert record["queries_remaining"] == ledger.status("default").queries_remaining
    assert record["epsilon_spent"] == pytest.approx(ledger.status("default").epsilon_spent)
    assert (record["k"], record["q"], record["lambda"]) == (5, 0.2, 1.0)


def test_image_query_uses_the_image_tower(setup) -> None:
    generate, ledger = setup
    result = generate(image=Image.new("L", (28, 28), 0), num_images=1, steps=1)
    assert result.query_kind is QueryKind.IMAGE and result.prompt is None
    assert len(ledger.history("default")) == 1


def test_lambda_zero_is_public_only_and_not_charged(setup) -> None:
    generate, ledger = setup
    result = generate("a handwritten digit 3", num_images=1, steps=1, lambda_=0.0)
    assert not result.charged and result.receipt is None
    assert ledger.history() == [] and result.to_dict()["epsilon_spent"] == 0.0


def test_decoder_seed_is_reproducible_for_public_only_queries(setup) -> None:
    generate, _ = setup
    kwargs = {"num_images": 1, "steps": 2, "lambda_": 0.0}
    first = generate("a handwritten digit 1", generator=torch.Generator().manual_seed(3), **kwargs)
    second = generate("a handwritten digit 1", generator=torch.Generator().manual_seed(3), **kwargs)
    np.testing.assert_array_equal(np.asarray(first.images[0]), np.asarray(second.images[0]))


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((), {}, "neither"),
        (("a digit",), {"image": Image.new("L", (8, 8))}, "both"),
        (("  ",), {}, "non-empty"),
        (("a digit",), {"lambda_": 1.5}, r"lambda must be a number in \[0, 1\]"),
        (("a digit",), {"num_images": 0}, "num_images must be an integer"),
        (("a digit",), {"steps": 0}, "steps must be an integer"),
        (("a digit",), {"guidance_scale": float("nan")}, "guidance must be a finite number"),
        (("a digit",), {"generator": 3}, "torch.Generator"),
    ],
    ids=["no-query", "two-queries", "blank-prompt", "lambda", "num-images", "steps", "guidance", "generator"],
)
def test_bad_arguments_are_refused_before_the_charge(setup, args, kwargs, match) -> None:
    generate, ledger = setup
    with pytest.raises(PipelineInputError, match=match):
        generate(*args, **kwargs)
    assert ledger.history() == []


def test_encoder_of_another_dimension_is_refused(index_dir: Path, make_ledger, decoder) -> None:
    index = PrivateIndex.open(index_dir)

    class Wide:
        dim = index.dim + 1

    with pytest.raises(PipelineInputError, match="encoder dimension"):
        DPRDMPipeline(PrivateRetriever(index, make_ledger(default=SCOPE)), Wide(), decoder)


def test_saved_generation_has_pngs_a_grid_and_a_public_record(setup, tmp_path: Path) -> None:
    generate, _ = setup
    saved = save_generation(generate("a handwritten digit 5", num_images=2, steps=1), tmp_path / "out")
    assert len(saved.images) == 2 and all(path.is_file() for path in saved.images)
    assert Image.open(saved.grid).size[0] > Image.open(saved.images[0]).size[0]
    assert not list((tmp_path / "out").glob(".*tmp"))
    text = saved.record.read_text()
    for word in ("prompt", "epsilon_spent", "queries_remaining", '"k"', '"q"', '"sigma"', '"lambda"'):
        assert word in text


def test_result_holds_the_release_instead_of_copying_it(setup) -> None:
    from pipeline import PrivateRelease

    generate, ledger = setup
    result = generate("a handwritten digit 3", num_images=1, steps=1)
    assert isinstance(result.release, PrivateRelease)
    assert result.receipt is result.release.receipt and result.statuses is result.release.statuses
    assert (result.k, result.q, result.sigma) == (result.release.k, result.release.q, result.release.sigma)
    assert result.to_dict()["scopes"]["default"]["queries_charged"] == 1


def test_decoder_of_another_condition_width_is_refused_before_any_charge(index_dir: Path, make_ledger, encoder,
                                                                         decoder) -> None:
    """Issue 10: a decoder whose condition width differs from the index's costs nothing (refused at construction)."""
    ledger = make_ledger(default=SCOPE)

    class WideDecoder:
        condition_dim = encoder.dim + 3

        def generate(self, *args, **kwargs):  # pragma: no cover - never reached
            raise AssertionError("decoded after a refused construction")

    with pytest.raises(PipelineInputError, match="decoder condition width"):
        DPRDMPipeline(PrivateRetriever(PrivateIndex.open(index_dir), ledger), encoder, WideDecoder())
    assert ledger.history() == []


def test_from_index_dir_wires_index_ledger_encoder_and_decoder(private_copy: Path, make_ledger, decoder_dir) -> None:
    from pipeline import PrivacyRefusal

    with pytest.raises(PrivacyRefusal, match="has no budget ledger; .*dprdm budget init"):
        DPRDMPipeline.from_index_dir(private_copy, decoder=decoder_dir)
    assert not (private_copy / "budget.sqlite").exists()  # a missing ledger is never created
    make_ledger(private_copy / "budget.sqlite", default=SCOPE)
    pipe = DPRDMPipeline.from_index_dir(private_copy, decoder=decoder_dir, shards=["default"], threads=1)
    assert pipe.retriever.shards == ("default",) and pipe.encoder.dim == pipe.retriever.dim
    result = pipe("a handwritten digit 2", num_images=1, steps=1)
    assert result.charged and result.queries_remaining >= 1
    with pytest.raises(PipelineInputError, match="unknown shard 'nope'"):
        DPRDMPipeline.from_index_dir(private_copy, decoder=decoder_dir, shards=["nope"])


def test_public_api_is_the_readmes() -> None:
    import pipeline

    assert sorted(pipeline.__all__) == sorted([
        "DPRDMPipeline", "GenerationResult", "PipelineError", "PipelineInputError", "PrivacyRefusal",
        "PrivateRelease", "PrivateRetriever", "QueryKind", "SavedGeneration", "save_generation",
    ])  # fmt: skip
    assert not hasattr(pipeline, "Generator")  # renamed, no alias (collided with torch/np Generator)
    for name in pipeline.__all__:
        assert getattr(pipeline, name) is not None

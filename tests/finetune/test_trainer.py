"""DPFineTuner: trainable modes, frozen parameters, clipping, Poisson batches, Opacus/diffusers compatibility."""

from __future__ import annotations

import copy

import pytest
import torch
from opacus.optimizers import DPOptimizer

from pipeline.decoders import TinyDecoder
from pipeline.errors import PipelineInputError
from pipeline.finetune import DPFineTuner, TrainableMode, select_trainable

N = 200
MODES = [m.value for m in TrainableMode]


def _data(dim: int, size: int = 8, n: int = N, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, size, size, generator=gen) * 2 - 1
    emb = torch.nn.functional.normalize(torch.randn(n, dim, generator=gen), dim=1)
    return images, emb


def _fit(decoder, *, steps=2, batch_size=8, physical=4, mode="attention", seed=1, z=1.0, C=1e-2, **kw):
    images, emb = _data(decoder.embedding_dim, decoder.image_size)
    tuner = DPFineTuner(decoder, trainable=mode, batch_size=batch_size, physical_batch_size=physical, steps=steps,
                        max_grad_norm=C, **kw)
    return tuner.fit(images, emb, noise_multiplier=z, condition_sigma=0.3, delta=1e-5, _seed=seed)


@pytest.mark.parametrize("mode", MODES)
def test_selection_counts(decoder: TinyDecoder, mode: str) -> None:
    unet = copy.deepcopy(decoder.unet)
    sel = select_trainable(unet, mode)
    trainable = {n for n, p in unet.named_parameters() if p.requires_grad}
    assert trainable == set(sel.parameters)
    assert sel.trainable == sum(p.numel() for p in unet.parameters() if p.requires_grad)
    assert sel.total == sum(p.numel() for p in unet.parameters())
    assert 0 < sel.percent <= 100
    if mode == "attention":
        assert all(".attentions." in n for n in trainable) and not any("class_embedding" in n for n in trainable)
    if mode == "attention+conditioning":
        assert any(n.startswith("class_embedding.") for n in trainable)
    if mode == "all":
        assert sel.percent == 100.0
    if mode == "lora":
        assert all(".lora_A." in n or ".lora_B." in n for n in trainable)


def test_bundled_decoder_attention_share() -> None:
    """DP-LDM's point: attention(+conditioning) is a small share of the UNet (here about a quarter)."""
    unet = copy.deepcopy(TinyDecoder.from_pretrained().unet)
    sel = select_trainable(unet, "attention+conditioning")
    assert sel.trainable == 359_936 and sel.total == 1_405_665


@pytest.mark.parametrize("mode", MODES)
def test_frozen_parameters_bit_identical(decoder: TinyDecoder, mode: str) -> None:
    before = {n: p.detach().clone() for n, p in decoder.unet.named_parameters()}
    out = _fit(decoder, mode=mode)
    assert out.steps == 2
    after = dict(out.decoder.unet.named_parameters())
    trained = set(out.selection.parameters)
    for name, value in before.items():
        if name not in trained:
            stem, leaf = name.rsplit(".", 1)
            now = after.get(name, after.get(f"{stem}.base_layer.{leaf}"))  # LoRA wraps the base projection
            assert now is not None and torch.equal(now, value), name  # bit-identical, not merely close
        assert torch.equal(dict(decoder.unet.named_parameters())[name], value)  # the input decoder is untouched
    assert set(out.state) == trained
    assert any(not torch.equal(out.state[n], before[n]) for n in trained if n in before) or mode == "lora"


def test_per_sample_clipped_norms_at_most_c(decoder: TinyDecoder, monkeypatch: pytest.MonkeyPatch) -> None:
    """Physical batches of one record: each clip_and_accumulate adds exactly one clipped gradient to summed_grad."""
    C = 1e-3
    clipped, raw = [], []
    original = DPOptimizer.clip_and_accumulate

    def spy(self):
        before = [None if p.summed_grad is None else p.summed_grad.clone() for p in self.params]
        if len(self.grad_samples[0]):
            raw.append(float(torch.stack([g.reshape(len(g), -1).norm(dim=1) for g in self.grad_samples]).norm()))
        original(self)
        if len(self.grad_samples[0]):
            added = [p.summed_grad - (0 if b is None else b) for p, b in zip(self.params, before, strict=True)]
            clipped.append(float(torch.sqrt(sum((a.double() ** 2).sum() for a in added))))

    monkeypatch.setattr(DPOptimizer, "clip_and_accumulate", spy)
    _fit(decoder, steps=3, batch_size=8, physical=1, C=C)
    assert len(clipped) >= 5
    assert max(clipped) <= C * (1 + 1e-4)
    assert max(raw) > C  # clipping was active


def test_poisson_batch_sizes_vary(decoder: TinyDecoder) -> None:
    sizes: list[int] = []
    original = DPOptimizer.clip_and_accumulate

    def spy(self):
        sizes.append(len(self.grad_samples[0]))
        original(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DPOptimizer, "clip_and_accumulate", spy)
        out = _fit(decoder, steps=12, batch_size=8, physical=1000)
    assert out.steps == 12 and len(sizes) == 12  # one physical batch per logical one here
    assert len(set(sizes)) > 1  # variable: Poisson, never a fixed batch


def test_empty_poisson_batches_take_a_noise_step(decoder: TinyDecoder) -> None:
    """q = 1/200: most batches are empty; each still takes a (noise-only) step and the run completes."""
    sizes: list[int] = []
    original = DPOptimizer.clip_and_accumulate

    def spy(self):
        sizes.append(len(self.grad_samples[0]))
        original(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DPOptimizer, "clip_and_accumulate", spy)
        before = {n: p.detach().clone() for n, p in decoder.unet.named_parameters()}
        out = _fit(decoder, steps=6, batch_size=1, physical=4)
    assert out.steps == 6 and 0 in sizes
    trained = set(out.selection.parameters)
    assert any(not torch.equal(out.state[n], before[n]) for n in trained)


def test_physical_batches_split_logical_ones(decoder: TinyDecoder) -> None:
    calls: list[int] = []
    original = DPOptimizer.clip_and_accumulate

    def spy(self):
        calls.append(len(self.grad_samples[0]))
        original(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(DPOptimizer, "clip_and_accumulate", spy)
        out = _fit(decoder, steps=2, batch_size=20, physical=3)
    assert out.steps == 2 and len(calls) > 2 and max(calls) <= 3


@pytest.mark.parametrize("grad_sample_mode", ["hooks", "functorch"])
@pytest.mark.parametrize("mode", ["attention+conditioning", "lora"])
def test_opacus_per_sample_gradients_match_autograd(mode: str, grad_sample_mode: str) -> None:
    """Opacus's per-record gradients through the bundled diffusers UNet equal one-record autograd gradients."""
    from opacus.grad_sample.utils import prepare_module

    unet = copy.deepcopy(TinyDecoder.from_pretrained().unet)
    select_trainable(unet, mode)
    unet.train()  # Opacus records activations only in training mode
    params = {n: p for n, p in unet.named_parameters() if p.requires_grad}
    model = prepare_module(unet, grad_sample_mode, loss_reduction="sum")
    gen = torch.Generator().manual_seed(0)
    x, t, c = torch.randn(3, 1, 16, 16, generator=gen), torch.tensor([5, 300, 900]), torch.randn(3, 16, generator=gen)
    out = model(x, t, encoder_hidden_states=c[:, None], class_labels=c).sample
    ((out - x) ** 2).mean(dim=(1, 2, 3)).sum().backward()
    per_sample = {n: p.grad_sample.clone() for n, p in params.items()}
    model.disable_hooks()
    for i in range(3):
        for p in params.values():
            p.grad = None
        out = unet(x[i:i + 1], t[i:i + 1], encoder_hidden_states=c[i:i + 1, None], class_labels=c[i:i + 1]).sample
        ((out - x[i:i + 1]) ** 2).mean().backward()
        total = torch.sqrt(sum((p.grad ** 2).sum() for p in params.values()))
        err = torch.sqrt(sum(((per_sample[n][i] - p.grad) ** 2).sum() for n, p in params.items()))
        assert float(err / total) < 1e-4
    model._close()


def test_seeded_runs_reproduce_and_unseeded_differ(decoder: TinyDecoder) -> None:
    a, b = _fit(decoder, seed=3), _fit(decoder, seed=3)
    assert all(torch.equal(a.state[n], b.state[n]) for n in a.state)
    c, d = _fit(decoder, seed=None), _fit(decoder, seed=None)
    assert any(not torch.equal(c.state[n], d.state[n]) for n in c.state)


def test_ema_returns_the_moving_average_of_the_logical_steps_iterates(decoder: TinyDecoder) -> None:
    """A seeded run's first k steps are the k-step run, so the iterates p1, p2, p3 are known: with decay d the EMA
    run returns d (d p1 + (1 - d) p2) + (1 - d) p3 (diffusers' EMAModel starts from the first iterate), updated once
    per LOGICAL step although each logical batch is split into physical ones."""
    d = 0.5
    iterates = [_fit(decoder, steps=k, seed=3, mode="all").state for k in (1, 2, 3)]
    averaged = _fit(decoder, steps=3, seed=3, mode="all", ema_decay=d)
    assert averaged.steps == 3
    for name, value in averaged.state.items():
        p1, p2, p3 = (it[name] for it in iterates)
        torch.testing.assert_close(value, d * (d * p1 + (1 - d) * p2) + (1 - d) * p3, rtol=0, atol=1e-6)
    assert any(not torch.equal(averaged.state[n], iterates[2][n]) for n in averaged.state)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_grad_norm": 0.0}, "max grad norm C must be"),
        ({"max_grad_norm": -1.0}, "max grad norm C must be"),
        ({"trainable": "attn"}, "unknown trainable mode"),
        ({"batch_size": 0}, "batch size must be"),
        ({"lr": float("nan")}, "learning rate must be"),
        ({"optimizer": "lion"}, "optimizer must be"),
        ({"ema_decay": 1.0}, "ema_decay must be"),
        ({"ema_decay": 0.0}, "ema_decay must be"),
    ],
    ids=["C0", "Cneg", "mode", "batch0", "lr-nan", "optimizer", "ema1", "ema0"],
)
def test_bad_settings_refused(decoder: TinyDecoder, kwargs: dict, match: str) -> None:
    with pytest.raises(PipelineInputError, match=match):
        DPFineTuner(decoder, **kwargs)


def test_batch_larger_than_records_refused(decoder: TinyDecoder) -> None:
    with pytest.raises(PipelineInputError, match="larger than the 200 trainable records"):
        DPFineTuner(decoder, batch_size=201).sample_rate(200)


def test_unsupported_decoder_refused() -> None:
    class Other:
        unet = None

    with pytest.raises(PipelineInputError, match="cannot be fine-tuned"):
        DPFineTuner(Other())


def test_training_prints_and_logs_nothing(decoder: TinyDecoder, caplog: pytest.LogCaptureFixture,
                                          capfd: pytest.CaptureFixture) -> None:
    """No per-sample norm, gradient, batch composition or loss leaves the run through stdout, stderr or logging."""
    import logging

    caplog.set_level(logging.DEBUG)
    _fit(decoder, steps=2)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert not [r for r in caplog.records if r.name.startswith(("pipeline", "opacus"))]


def test_encoder_embeds_images_when_no_embeddings_given(decoder: TinyDecoder, shared_index) -> None:
    images, _ = _data(decoder.embedding_dim, decoder.image_size, n=40)
    tuner = DPFineTuner(decoder, shared_index.load_encoder(num_threads=1), batch_size=4, steps=1)
    out = tuner.fit(images, noise_multiplier=1.0, condition_sigma=0.1, delta=1e-5, _seed=0)
    assert out.steps == 1
    with pytest.raises(PipelineInputError, match="needs embeddings or an encoder"):
        DPFineTuner(decoder, batch_size=4, steps=1).fit(images, noise_multiplier=1.0, condition_sigma=0.1, delta=1e-5)

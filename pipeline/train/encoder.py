"""Train the bundled tiny open_clip encoder contrastively on the PUBLIC half of MNIST-5k.

The checkpoint is an open_clip ``local-dir:`` folder (``open_clip_config.json`` + ``open_clip_model.safetensors``)
so it loads through the same code path as any user model:
``open_clip.create_model_and_transforms("local-dir:index/models/tiny-clip")``.

Why these choices (shared/notes/feasibility.md §2, issue 5):
- a 16-d embedding: DP noise has norm sigma·sqrt(d) against a signal norm ≤ 1, so a small d keeps the aggregate usable;
- a small convolutional tower (open_clip's ModifiedResNet, width 16, 32 px input): in a trial a 3-layer ViT reached
  only 0.67 zero-shot / 0.59 P@10 in the same budget, the ResNet 0.95 / 0.94 (convolutions suit 2,500 digits);
- a 48-wide, 2-layer text tower with context 16: its 49,408-token embedding dominates the checkpoint size;
- batch 64 with a linear warm-up: larger batches collapsed to the uniform loss in a trial;
- the loss is CLIP's symmetric cross-entropy with *multi-positive* targets (every same-class caption in the batch
  is a positive), because with 10 classes a batch of 64 holds many duplicate captions that plain CLIP would treat
  as negatives.
The private half is used only to report zero-shot accuracy and image→image P@10, never for training.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import index._torchvision_compat  # noqa: F401  (before any diffusers/open_clip import: they import torchvision)
from pipeline.data import CAPTION_TEMPLATES, DIGIT_WORDS, DigitSplit, captions_for, load_mnist_split, to_pil
from pipeline.train._io import save_safetensors_atomic, seeded_torch, write_json_atomic

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


def default_encoder_dir() -> Path:
    """``index/models/tiny-clip``: where the bundled encoder lives (``index.DEFAULT_MODEL_DIR``)."""
    import index

    return Path(index.__file__).resolve().parent / "models" / "tiny-clip"


@dataclass(frozen=True)
class EncoderSettings:
    """Architecture and optimisation settings of the tiny CLIP (recorded next to the weights)."""

    embed_dim: int = 16
    vision_tower: str = "resnet"
    image_size: int = 32
    patch_size: int = 4
    vision_width: int = 16
    vision_layers: int = 1
    text_width: int = 48
    text_layers: int = 2
    text_heads: int = 4
    context_length: int = 16
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 30
    max_shift: int = 0
    seed: int = 0
    max_steps: int | None = None

    def model_cfg(self) -> dict:
        """The open_clip ``model_cfg`` for this architecture."""
        if self.vision_tower == "resnet":  # open_clip ModifiedResNet: a list of layers selects it; /32 downsampling
            vision = {"image_size": self.image_size, "layers": [self.vision_layers] * 4, "width": self.vision_width}
        else:
            vision = {"image_size": self.image_size, "layers": self.vision_layers, "width": self.vision_width,
                      "patch_size": self.patch_size, "head_width": 32}
        return {
            "embed_dim": self.embed_dim,
            "vision_cfg": vision,
            "text_cfg": {
                "context_length": self.context_length,
                "vocab_size": 49408,
                "width": self.text_width,
                "heads": self.text_heads,
                "layers": self.text_layers,
            },
        }

    def preprocess_cfg(self) -> dict:
        """The open_clip ``preprocess_cfg``: grayscale digits as RGB, bicubic resize, MNIST mean/std."""
        return {
            "size": self.image_size,
            "mode": "RGB",
            "mean": [MNIST_MEAN] * 3,
            "std": [MNIST_STD] * 3,
            "interpolation": "bicubic",
            "resize_mode": "shortest",
        }

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class EncoderReport:
    """What a training run produced: where, how long, and the private-half evaluation."""

    out_dir: str
    steps: int
    seconds: float
    final_loss: float
    zero_shot_accuracy: float
    precision_at_10: float
    size_bytes: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def make_preprocess(preprocess_cfg: dict):
    """The open_clip eval transform for ``preprocess_cfg`` (what ``create_model_and_transforms`` returns)."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    return image_transform_v2(PreprocessCfg(**preprocess_cfg), is_train=False)


def images_to_tensor(images: np.ndarray, preprocess) -> torch.Tensor:
    """(n, H, W) uint8 digits → the model's input batch, through the model's own open_clip preprocess."""
    return torch.stack([preprocess(to_pil(image)) for image in images])


def _random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (pad with background, random crop)."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, mode="replicate")
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    return torch.stack([padded[i, :, a : a + h, b : b + w] for i, (a, b) in enumerate(offsets.tolist())])


@torch.no_grad()
def encode_image_array(model, images: np.ndarray, preprocess, batch_size: int = 500) -> np.ndarray:
    """Unit image embeddings of (n, H, W) uint8 digits."""
    model.eval()
    out = [model.encode_image(images_to_tensor(images[i : i + batch_size], preprocess), normalize=True)
           for i in range(0, len(images), batch_size)]
    return torch.cat(out).numpy().astype(np.float32)


@torch.no_grad()
def class_text_embeddings(model, tokenizer) -> np.ndarray:
    """(10, d) unit class embeddings: the mean over caption templates of each digit's text embedding."""
    model.eval()
    rows = []
    for label in range(len(DIGIT_WORDS)):
        emb = model.encode_text(tokenizer(captions_for(label)), normalize=True).mean(0)
        rows.append(F.normalize(emb, dim=0))
    return torch.stack(rows).numpy().astype(np.float32)


def evaluate_encoder(model, tokenizer, preprocess, split: DigitSplit) -> tuple[float, float]:
    """Zero-shot accuracy and image→image P@10 (self excluded) on the PRIVATE half (evaluation only)."""
    emb = encode_image_array(model, split.private_images, preprocess)
    labels = split.private_labels
    zero_shot = float(np.mean(np.argmax(emb @ class_text_embeddings(model, tokenizer).T, 1) == labels))
    sims = emb @ emb.T
    np.fill_diagonal(sims, -np.inf)
    top = np.argpartition(-sims, 10, axis=1)[:, :10]
    return zero_shot, float(np.mean(labels[top] == labels[:, None]))


def _multi_positive_clip_loss(img: torch.Tensor, txt: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor):
    logits = scale * img @ txt.T
    same = (labels[:, None] == labels[None, :]).float()
    target = same / same.sum(1, keepdim=True)
    return 0.5 * (torch.sum(-target * F.log_softmax(logits, 1), 1).mean()
                  + torch.sum(-target * F.log_softmax(logits.T, 1), 1).mean())


def train_encoder(
    out_dir: str | Path | None = None,
    *,
    settings: EncoderSettings | None = None,
    num_threads: int | None = 1,
    progress: bool = True,
    split: DigitSplit | None = None,
) -> EncoderReport:
    """Train the tiny CLIP on the public half and save it as an open_clip ``local-dir:`` checkpoint.

    Args:
        out_dir: target folder (default: the bundled ``index/models/tiny-clip``).
        settings: architecture/optimisation settings (default :class:`EncoderSettings`).
        num_threads: torch threads during training (restored afterwards); None leaves torch's setting.
        progress: show a tqdm bar on stderr.
        split: an already loaded data split (default: :func:`load_mnist_split`).

    Returns:
        An :class:`EncoderReport` with the private-half zero-shot accuracy and P@10.
    """
    import open_clip
    from tqdm.auto import tqdm

    settings = settings or EncoderSettings()
    out = Path(out_dir) if out_dir is not None else default_encoder_dir()
    split = split or load_mnist_split()
    start = time.perf_counter()
    with seeded_torch(settings.seed, num_threads) as gen:
        model = open_clip.model.CLIP(**settings.model_cfg())
        tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=settings.context_length)
        captions = [captions_for(c) for c in range(len(DIGIT_WORDS))]
        tokens = torch.stack([tokenizer(c) for c in captions])  # (10, templates, ctx)
        preprocess = make_preprocess(settings.preprocess_cfg())
        x_all = images_to_tensor(split.public_images, preprocess)
        y_all = torch.from_numpy(split.public_labels)
        steps_per_epoch = len(y_all) // settings.batch_size
        total = settings.epochs * steps_per_epoch
        if settings.max_steps is not None:
            total = min(total, settings.max_steps)
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
        rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                                 {"params": rest, "weight_decay": 0.0}], lr=settings.lr)

        def lr_at(step: int) -> float:  # linear warm-up, then cosine to 0
            if step < settings.warmup_steps:
                return (step + 1) / settings.warmup_steps
            return 0.5 * (1 + math.cos(math.pi * (step - settings.warmup_steps) / max(1, total - settings.warmup_steps)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
        model.train()
        bar = tqdm(total=total, desc="train encoder", disable=not progress)
        step, loss_value = 0, float("nan")
        while step < total:
            order = torch.randperm(len(y_all), generator=gen)
            for b in range(steps_per_epoch):
                if step >= total:
                    break
                idx = order[b * settings.batch_size : (b + 1) * settings.batch_size]
                labels = y_all[idx]
                which = torch.randint(0, len(CAPTION_TEMPLATES), (len(idx),), generator=gen)
                img = model.encode_image(_random_shift(x_all[idx], settings.max_shift, gen), normalize=True)
                txt = model.encode_text(tokens[labels, which], normalize=True)
                loss = _multi_positive_clip_loss(img, txt, labels, model.logit_scale.exp().clamp(max=100))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                loss_value = float(loss.detach())
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.3f}")
        bar.close()
        seconds = time.perf_counter() - start
        zero_shot, p_at_10 = evaluate_encoder(model, tokenizer, preprocess, split)
    save_safetensors_atomic(out / "open_clip_model.safetensors", model.state_dict())
    write_json_atomic(out / "open_clip_config.json",
                      {"model_cfg": settings.model_cfg(), "preprocess_cfg": settings.preprocess_cfg()})
    size = sum(p.stat().st_size for p in out.glob("open_clip_*"))
    report = EncoderReport(out_dir=str(out), steps=step, seconds=round(seconds, 1), final_loss=round(loss_value, 4),
                           zero_shot_accuracy=round(zero_shot, 4), precision_at_10=round(p_at_10, 4),
                           size_bytes=size)
    write_json_atomic(out / "training_settings.json", {
        "what": "tiny open_clip encoder trained contrastively on the PUBLIC half of MNIST-5k",
        "command": "python -m pipeline.train encoder",
        "settings": settings.to_dict(),
        "num_threads": num_threads,
        "caption_templates": list(CAPTION_TEMPLATES),
        "data_split": split.to_dict(),
        "metrics_on_private_half": {"zero_shot_accuracy": report.zero_shot_accuracy,
                                    "image_to_image_precision_at_10": report.precision_at_10},
        "train_seconds": report.seconds,
        "steps": step,
        "final_loss": report.final_loss,
        "versions": {"torch": torch.__version__, "open_clip": open_clip.__version__},
    })
    return report

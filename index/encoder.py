"""The *mapper* stage: an open_clip model that turns images (and text prompts) into unit-norm float32 rows.

Never downloads: ``HF_HUB_OFFLINE=1`` is set before open_clip is imported, pretrained tags are resolved only
from the local Hugging Face cache, and a missing model is a one-line :class:`IndexInputError` saying how to
provide one. ``Encoder.sha256`` identifies the weights; an index records it and refuses other encoders.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from index.errors import IndexInputError
from index.fs import expand_user

if TYPE_CHECKING:
    import torch
    from PIL import Image

DEFAULT_MODEL_DIR = Path(__file__).parent / "models" / "tiny-clip"
BUNDLED_MODEL_ID = "bundled:tiny-clip"
_LOCAL_DIR = "local-dir:"
_CONFIG_NAME = "open_clip_config.json"
_WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def _open_clip() -> Any:
    """Import open_clip lazily (it costs seconds) with the hub forced offline."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import index._torchvision_compat  # noqa: F401  (open_clip imports torchvision)

    try:
        import huggingface_hub.constants as hub_constants

        hub_constants.HF_HUB_OFFLINE = True  # in case huggingface_hub was imported before the env var was set
    except ImportError:  # pragma: no cover - open_clip depends on it
        pass
    import open_clip

    return open_clip


def _hash_files(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Run a block with ``num_threads`` torch threads, restoring the previous count afterwards."""
    if num_threads is None:
        yield
        return
    if num_threads < 1:
        raise IndexInputError(f"--threads must be >= 1, found {num_threads}; pass a positive thread count")
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass(frozen=True)
class EncoderSpec:
    """How an encoder was asked for (stored in the manifest so an index can re-load its own encoder)."""

    model: str | None
    pretrained: str | None

    def to_dict(self) -> dict[str, str | None]:
        """JSON form stored in ``manifest.json``."""
        return {"model": self.model, "pretrained": self.pretrained}


class Encoder:
    """An open_clip image + text encoder returning L2-normalised float32 rows of width :attr:`dim`.

    Attributes:
        model_id: human-readable id (``bundled:tiny-clip``, ``local-dir:/abs/dir`` or ``NAME@TAG_OR_FILE``).
        sha256: hash of the checkpoint bytes (and config), recorded in the index manifest.
        dim: embedding width.
        spec: the (model, pretrained) arguments that re-load this encoder.
        num_threads: torch threads used while encoding (None: leave torch's setting alone).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Any,
        tokenizer: Any,
        *,
        model_id: str,
        sha256: str,
        spec: EncoderSpec,
        num_threads: int | None = None,
    ) -> None:
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.sha256 = sha256
        self.spec = spec
        self.num_threads = num_threads
        import torch

        with torch.inference_mode(), torch_threads(num_threads):
            probe = self.model.encode_text(self.tokenizer(["probe"]))
        self.dim = int(probe.shape[-1])

    def __repr__(self) -> str:
        return f"Encoder(model_id={self.model_id!r}, dim={self.dim}, sha256={self.sha256[:12]}…)"

    @staticmethod
    def _unit_rows(features: torch.Tensor) -> np.ndarray:
        import torch

        rows = features.detach().to(torch.float32).cpu().numpy()
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        return np.ascontiguousarray(rows / np.maximum(norms, 1e-12), dtype=np.float32)

    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """Encode a preprocessed batch ``(n, 3, H, W)`` into ``(n, dim)`` unit float32 rows."""
        import torch

        with torch.inference_mode(), torch_threads(self.num_threads):
            return self._unit_rows(self.model.encode_image(pixels))

    def encode_images(self, images: Sequence[Image.Image], *, batch_size: int = 64) -> np.ndarray:
        """Encode PIL images (any mode; converted to RGB) into ``(n, dim)`` unit float32 rows."""
        import torch

        out = [np.zeros((0, self.dim), np.float32)]
        for start in range(0, len(images), batch_size):
            batch = [self.preprocess(im.convert("RGB")) for im in images[start : start + batch_size]]
            out.append(self.encode_pixels(torch.stack(batch)))
        return np.concatenate(out)

    def encode_text(self, texts: Sequence[str], *, batch_size: int = 256) -> np.ndarray:
        """Encode text prompts into ``(n, dim)`` unit float32 rows (the same space as the images)."""
        import torch

        out = [np.zeros((0, self.dim), np.float32)]
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[start : start + batch_size]))
            with torch.inference_mode(), torch_threads(self.num_threads):
                out.append(self._unit_rows(self.model.encode_text(tokens)))
        return np.concatenate(out)


def _missing(what: str) -> IndexInputError:
    return IndexInputError(
        f"{what}; dprdm never downloads models: give 'dprdm index build' --model local-dir:DIR (a folder with "
        f"{_CONFIG_NAME} and {_WEIGHT_NAMES[0]}), or --model NAME --pretrained /path/to/weights"
    )


def _load_local_dir(directory: Path, *, model_id: str, spec: EncoderSpec, num_threads: int | None) -> Encoder:
    if not (directory / _CONFIG_NAME).is_file():
        raise _missing(f"no open_clip model at '{directory}' ({_CONFIG_NAME} not found)")
    weights = [directory / name for name in _WEIGHT_NAMES if (directory / name).is_file()]
    if not weights:
        raise _missing(f"no open_clip weights in '{directory}' (expected {_WEIGHT_NAMES[0]})")
    open_clip = _open_clip()
    name = _LOCAL_DIR + str(directory)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name)
        tokenizer = open_clip.get_tokenizer(name)
    except Exception as err:  # open_clip raises many types for a malformed checkpoint
        raise IndexInputError(
            f"open_clip model in '{directory}' could not be loaded ({type(err).__name__}: {' '.join(str(err).split())[:160]}); "
            "check open_clip_config.json and the weights file"
        ) from err
    sha = _hash_files([directory / _CONFIG_NAME, weights[0]])
    return Encoder(
        model, preprocess, tokenizer, model_id=model_id, sha256=sha, spec=spec, num_threads=num_threads
    )


def _cached_pretrained(open_clip: Any, name: str, tag: str) -> Path:
    """Resolve a pretrained tag to a file already in the local cache, or fail without downloading."""
    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        raise IndexInputError(
            f"--pretrained '{tag}' is neither a file nor a known tag of open_clip model '{name}'; "
            "pass a local weights file or one of open_clip.list_pretrained_tags_by_model(name)"
        )
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        if filename.endswith((".bin", ".pth")):
            names.insert(0, filename[:-4] + ".safetensors")
        for candidate in names:
            found = try_to_load_from_cache(repo_id=repo, filename=candidate)
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
    url = cfg.get("url", "")
    if url:
        cached = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if cached.is_file():
            return cached
    raise _missing(f"pretrained weights '{name}@{tag}' are not in the local cache")


def load_encoder(
    model: str | None = None, pretrained: str | None = None, *, num_threads: int | None = None
) -> Encoder:
    """Load an open_clip encoder from local files only.

    Args:
        model: None for the bundled tiny encoder (:data:`DEFAULT_MODEL_DIR`); ``"local-dir:DIR"`` (or a
            directory path) for an open_clip local-dir checkpoint; or an open_clip model name.
        pretrained: with a model name, a weights file path or a tag already in the local HF cache.
        num_threads: torch threads while encoding (None: unchanged).

    Returns:
        An :class:`Encoder` in eval mode on CPU.

    Raises:
        IndexInputError: the model is missing locally, malformed, or would need a download.
    """
    if model is None or model == BUNDLED_MODEL_ID:
        if pretrained is not None:
            raise IndexInputError(
                "--pretrained needs --model NAME; drop --pretrained to use the bundled encoder"
            )
        if not (DEFAULT_MODEL_DIR / _CONFIG_NAME).is_file():
            raise _missing(f"the bundled tiny encoder is missing at '{DEFAULT_MODEL_DIR}'")
        return _load_local_dir(
            DEFAULT_MODEL_DIR,
            model_id=BUNDLED_MODEL_ID,
            spec=EncoderSpec(None, None),
            num_threads=num_threads,
        )
    if model.startswith("hf-hub:"):
        raise _missing(f"model '{model}' would be fetched from the Hugging Face hub")
    if model.startswith(_LOCAL_DIR) or expand_user(model).is_dir():
        if pretrained is not None:
            raise IndexInputError(f"--pretrained is not used with a local-dir model '{model}'; drop it")
        directory = expand_user(model.removeprefix(_LOCAL_DIR)).resolve()
        model_id = _LOCAL_DIR + str(directory)
        return _load_local_dir(
            directory, model_id=model_id, spec=EncoderSpec(model_id, None), num_threads=num_threads
        )
    if pretrained is None:
        raise IndexInputError(
            f"model '{model}' needs --pretrained TAG_OR_FILE: a randomly initialised encoder cannot be re-loaded to "
            "query the index"
        )
    open_clip = _open_clip()
    if model not in open_clip.list_models():
        raise IndexInputError(
            f"'{model}' is not an open_clip model name; see open_clip.list_models() or use local-dir:DIR"
        )
    path = expand_user(pretrained)
    weights = path.resolve() if path.is_file() else _cached_pretrained(open_clip, model, pretrained)
    try:
        net, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=str(weights))
        tokenizer = open_clip.get_tokenizer(model)
    except Exception as err:  # open_clip raises many types for mismatched weights
        raise IndexInputError(
            f"weights '{weights}' do not load into open_clip model '{model}' ({type(err).__name__}); "
            "check that the file matches the model name"
        ) from err
    tag = str(weights) if path.is_file() else pretrained
    return Encoder(
        net,
        preprocess,
        tokenizer,
        model_id=f"{model}@{tag}",
        sha256=_hash_files([weights]),
        spec=EncoderSpec(model, tag),
        num_threads=num_threads,
    )

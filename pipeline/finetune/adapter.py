"""Adapters: the trained tensors of a DP fine-tuning run, plus a manifest, written atomically and privately.

Layout of an adapter directory (0700; files 0600)::

    adapter.safetensors   ONLY the trained tensors, keyed by UNet parameter name (LoRA: the lora_A/lora_B)
    adapter.json          manifest: format, base decoder sha256, trainable mode and module names, parameter
                          counts and %, LoRA shape, the DP event (JSON), receipt id, epsilon at delta, shard,
                          record counts, conditioning, the adapter file's sha256

An adapter is a DP release (post-processing of DP-SGD's noisy updates): it may be shared. Nothing else of the
run (gradients, per-sample norms, batch composition, losses) is ever written.

Writes: a temp directory beside the target, every file fsynced, then one ``rename`` onto the target (which
must not exist or be empty) and a directory fsync: a crash leaves either no adapter or a complete one.

Loading re-hashes the base decoder's UNet weights and refuses an adapter made for other weights.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import PipelineInputError

__all__ = ["ADAPTER_FILE", "FORMAT", "FORMAT_VERSION", "MANIFEST_FILE", "decoder_sha256", "load_adapter",
           "read_manifest", "save_adapter"]

FORMAT = "dprdm-adapter"
FORMAT_VERSION = 1
ADAPTER_FILE = "adapter.safetensors"
MANIFEST_FILE = "adapter.json"


def decoder_sha256(decoder) -> str:
    """sha256 of a decoder's UNet weights: every parameter and buffer as (name, dtype, shape, bytes), sorted.

    Content-based, so it identifies the weights wherever they were loaded from (hashing the same tensors
    gives the same id for a bundled, copied or re-saved decoder).
    """
    digest = hashlib.sha256(b"dprdm-unet-state:v1\n")
    for name, tensor in sorted(decoder.unet.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def check_out_dir(out_dir: str | os.PathLike[str]) -> Path:
    """The adapter target as an absolute path; refuses one that exists and is not an empty directory.

    Raises:
        PipelineInputError: the target exists (non-empty or not a directory) or its parent is missing.
    """
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PipelineInputError(f"adapter output '{out}' already exists; pass a new --out folder")
    if not out.parent.is_dir():
        raise PipelineInputError(f"the parent folder of --out '{out}' does not exist; create it first")
    return out


def save_adapter(out_dir: str | os.PathLike[str], state: dict[str, torch.Tensor], manifest: dict[str, Any]) -> Path:
    """Write ``state`` (the trained tensors only) and ``manifest`` as an adapter directory, atomically.

    Returns:
        The adapter directory.

    Raises:
        PipelineInputError: the target exists and is not an empty directory.
    """
    from safetensors.torch import save

    out = check_out_dir(out_dir)
    blob = save({name: t.detach().to("cpu").contiguous() for name, t in sorted(state.items())})
    full = dict(manifest, format=FORMAT, format_version=FORMAT_VERSION,
                files={ADAPTER_FILE: {"sha256": hashlib.sha256(blob).hexdigest(), "size": len(blob)}})
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        os.chmod(staging, 0o700)
        _write_private(staging / ADAPTER_FILE, blob)
        _write_private(staging / MANIFEST_FILE, (json.dumps(full, indent=2, sort_keys=True) + "\n").encode())
        _fsync_dir(staging)
        os.rename(staging, out)  # onto a missing or empty directory: atomic
        _fsync_dir(out.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def read_manifest(adapter_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The adapter's manifest (format checked).

    Raises:
        PipelineInputError: not an adapter directory, or a newer/unknown format.
    """
    folder = Path(adapter_dir).expanduser()
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
    except FileNotFoundError:
        raise PipelineInputError(
            f"'{folder}' is not an adapter (no {MANIFEST_FILE}); pass a folder written by 'dprdm finetune'"
        ) from None
    except (OSError, ValueError) as err:
        raise PipelineInputError(f"adapter manifest '{folder / MANIFEST_FILE}' is unreadable ({type(err).__name__}); "
                                 "re-run 'dprdm finetune'") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise PipelineInputError(f"'{folder / MANIFEST_FILE}' is not a dprdm adapter manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise PipelineInputError(
            f"adapter '{folder}' has format version {manifest.get('format_version')}, this dprdm reads "
            f"{FORMAT_VERSION}; use the matching dprdm version"
        )
    return manifest


def load_adapter(decoder, adapter_dir: str | os.PathLike[str]):
    """A new decoder: ``decoder`` with the adapter's trained tensors applied (``decoder`` itself is unchanged).

    Args:
        decoder: the base decoder the adapter was trained from (its UNet weights are hashed and compared).
        adapter_dir: a folder written by :func:`save_adapter`.

    Returns:
        A decoder of the same class.

    Raises:
        PipelineInputError: not an adapter, a damaged file, or an adapter made for a different decoder.
    """
    from safetensors.torch import load

    from pipeline.finetune.modes import TrainableMode, select_trainable

    folder = Path(adapter_dir).expanduser()
    manifest = read_manifest(folder)
    want = manifest.get("base_decoder", {}).get("sha256")
    have = decoder_sha256(decoder)
    if want != have:
        raise PipelineInputError(
            f"adapter '{folder}' was trained for decoder sha256 {str(want)[:12]}, but this decoder is {have[:12]}; "
            "pass the adapter's base decoder (--decoder) or fine-tune this one"
        )
    try:
        blob = (folder / ADAPTER_FILE).read_bytes()
    except OSError as err:
        raise PipelineInputError(f"adapter file '{folder / ADAPTER_FILE}' is unreadable; re-run 'dprdm finetune'") from err
    if hashlib.sha256(blob).hexdigest() != manifest.get("files", {}).get(ADAPTER_FILE, {}).get("sha256"):
        raise PipelineInputError(
            f"adapter file '{folder / ADAPTER_FILE}': checksum mismatch with its manifest; re-run 'dprdm finetune'"
        )
    state = load(blob)
    unet = copy.deepcopy(decoder.unet)
    mode = TrainableMode.parse(manifest.get("trainable", ""))
    if mode is TrainableMode.LORA:
        lora = manifest.get("lora") or {}
        select_trainable(unet, mode, lora_rank=int(lora.get("rank", 0)), lora_alpha=lora.get("alpha"))
    params = dict(unet.named_parameters())
    bad = [n for n, t in state.items() if n not in params or params[n].shape != t.shape]
    if bad or set(state) != set(manifest.get("parameters", state)):
        raise PipelineInputError(
            f"adapter '{folder}' does not fit this decoder's UNet ({len(bad)} tensors unknown or of another shape); "
            "pass the adapter's base decoder"
        )
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor)
    unet.requires_grad_(False).eval()
    adapted = type(decoder)(unet, decoder.scheduler)
    adapted.adapter = {"dir": str(folder), "trainable": mode.value, "base_sha256": have}
    return adapted

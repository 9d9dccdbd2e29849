"""Decoder families on CPU at the tiny test size, as ratios to the bundled tiny decoder measured in the same run.

Families: the bundled (trained) tiny decoder, and tiny RANDOM Stable unCLIP and Kandinsky 2.2 pipelines built by
``tests/decoder_folders.py`` and saved with ``save_pretrained`` (the real on-disk layout), all loaded through
``pipeline.decoders.load_decoder``. Each family runs in its own fresh process (so peak RSS is its own): import of
the dprdm decoders + diffusers, ``load_decoder``, the weights' ``sha256``, then ``generate`` of 4 conditions ×
1 image, 10 steps, guidance 2.0 (CFG on), repeated 5 times after a warm-up (median, per image).

These tiny random pipelines measure the seam's overhead (pipeline plumbing, text encoder, VAE/MoVQ, CFG), not
real-model cost; the expected cost of the real models is in the second section, computed from their published
configs (parameter counts by instantiating the architectures on the meta device, FLOPs per UNet call with
``torch.utils.flop_counter`` on meta tensors) and this machine's measured CPU throughput on an SD-sized conv block.

Writes ``benchmarks/results/decoders.md``. Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_decoders.py`` (≈ 1.5 min);
``python benchmarks/bench_decoders.py --device cuda`` prints the family figures measured on a GPU instead.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
import index._torchvision_compat  # noqa: E402,F401  (before diffusers/transformers import torchvision)

RESULTS = ROOT / "benchmarks" / "results" / "decoders.md"
CONDITIONS, STEPS, GUIDANCE, REPEATS = 4, 10, 2.0, 5


def _rss_mib() -> float:
    """Peak RSS of this process (VmHWM: per address space, so not inherited from the parent across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(folder: str | None, device: str | None = None) -> dict:
    """Measure one family in this (fresh) process on ``device`` (None = CPU); returns the figures as a dict."""
    start = time.perf_counter()
    import torch

    from pipeline.decoders import load_decoder

    torch.set_num_threads(1)
    import diffusers  # noqa: F401  (counted in the import time for every family alike)

    imported, rss_import = time.perf_counter() - start, _rss_mib()
    start = time.perf_counter()
    load_decoder(folder, device=device)
    first_load = time.perf_counter() - start  # includes diffusers' lazy import of the pipeline's model classes
    start = time.perf_counter()
    decoder = load_decoder(folder, device=device)
    loaded = time.perf_counter() - start
    start = time.perf_counter()
    _ = decoder.sha256
    hashed = time.perf_counter() - start
    conditions = torch.nn.functional.normalize(torch.randn(CONDITIONS, decoder.condition_dim,
                                                           generator=torch.Generator().manual_seed(0)), dim=1)

    def run() -> list:
        images = decoder.generate(conditions, steps=STEPS, guidance_scale=GUIDANCE,
                                  generator=torch.Generator().manual_seed(1))
        if device is not None and device.startswith("cuda"):
            torch.cuda.synchronize()
        return images

    images = run()
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return {"model_id": decoder.model_id.split("@")[0], "dim": decoder.condition_dim,
            "size": f"{images[0].size[0]}×{images[0].size[1]} {images[0].mode}",
            "import_s": imported, "first_load_s": first_load, "load_s": loaded, "sha256_s": hashed,
            "per_image_s": statistics.median(times) / CONDITIONS, "rss_import_mib": rss_import,
            "rss_peak_mib": _rss_mib()}


def _run_worker(folder: Path | None, device: str | None) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", str(folder) if folder else "-", device or "-"],
                         check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_families(device: str | None = None) -> list[tuple[str, dict]]:
    from decoder_folders import build_kandinsky_folder, build_unclip_folder

    with tempfile.TemporaryDirectory() as tmp:
        unclip = build_unclip_folder(Path(tmp) / "unclip", dim=32)
        kandinsky = build_kandinsky_folder(Path(tmp) / "kandinsky", dim=24)
        rows = [("bundled tiny (trained)", None), ("Stable unCLIP, tiny random", unclip),
                ("Kandinsky 2.2, tiny random", kandinsky)]
        return [(name, _run_worker(folder, device)) for name, folder in rows]


# --- real-model estimates ----------------------------------------------------------------------------------------

SD21_UNCLIP_UNET = dict(  # stabilityai/stable-diffusion-2-1-unclip unet/config.json (SD 2.1 UNet + 2048-d class proj.)
    sample_size=96, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, attention_head_dim=(5, 10, 20, 20),
    cross_attention_dim=1024, use_linear_projection=True, class_embed_type="projection",
    projection_class_embeddings_input_dim=2048)
SD_VAE = dict(  # the SD 2.x AutoencoderKL
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
KANDINSKY22_UNET = dict(  # kandinsky-community/kandinsky-2-2-decoder unet/config.json
    sample_size=96, in_channels=4, out_channels=8, layers_per_block=3, block_out_channels=(384, 768, 1152, 1536),
    down_block_types=("ResnetDownsampleBlock2D",) + ("SimpleCrossAttnDownBlock2D",) * 3,
    up_block_types=("SimpleCrossAttnUpBlock2D",) * 3 + ("ResnetUpsampleBlock2D",),
    mid_block_type="UNetMidBlock2DSimpleCrossAttn", attention_head_dim=64, cross_attention_dim=768,
    encoder_hid_dim=1280, encoder_hid_dim_type="image_proj", addition_embed_type="image",
    resnet_time_scale_shift="scale_shift")
KANDINSKY22_MOVQ = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 256, 512),
    down_block_types=("DownEncoderBlock2D",) * 3 + ("AttnDownEncoderBlock2D",),
    up_block_types=("AttnUpDecoderBlock2D",) + ("UpDecoderBlock2D",) * 3, norm_type="spatial",
    num_vq_embeddings=16384, vq_embed_dim=4)


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _unet_call_flops(unet, latent: int, **inputs) -> float:
    """FLOPs of one UNet forward at batch 1 (meta tensors: counted, not run)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    sample = torch.empty(1, unet.config.in_channels, latent, latent, device="meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        unet(sample, torch.tensor([500], device="meta"), **inputs)
    return float(counter.get_total_flops())


def _cpu_flops_per_s() -> float:
    """Measured FLOP/s of one thread on an SD-sized block: a 3×3 conv, 320→320 channels at 96×96."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    conv = torch.nn.Conv2d(320, 320, 3, padding=1)
    x = torch.randn(1, 320, 96, 96)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        conv(x)
    flops = counter.get_total_flops()
    times = []
    with torch.no_grad():
        for _ in range(3):
            start = time.perf_counter()
            conv(x)
            times.append(time.perf_counter() - start)
    return flops / min(times)


def real_model_estimates() -> dict:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel, VQModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.set_num_threads(1)
    with torch.device("meta"):
        unclip_unet = UNet2DConditionModel(**SD21_UNCLIP_UNET)
        vae = AutoencoderKL(**SD_VAE)
        # OpenCLIP ViT-H-14 text tower as SD 2.x stores it (23 of its 24 layers: the penultimate layer is used)
        text = CLIPTextModel(CLIPTextConfig(hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
                                            num_hidden_layers=23, projection_dim=512, hidden_act="gelu"))
        vision_h = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=1280, intermediate_size=5120, num_attention_heads=16, num_hidden_layers=32, patch_size=14,
            image_size=224, projection_dim=1024))
        kandinsky_unet = UNet2DConditionModel(**KANDINSKY22_UNET)
        movq = VQModel(**KANDINSKY22_MOVQ)
    unclip_flops = _unet_call_flops(
        unclip_unet, 96, encoder_hidden_states=torch.empty(1, 77, 1024, device="meta"),
        class_labels=torch.empty(1, 2048, device="meta"))
    kandinsky_flops = _unet_call_flops(
        kandinsky_unet, 96, encoder_hidden_states=None,
        added_cond_kwargs={"image_embeds": torch.empty(1, 1280, device="meta")})
    return {
        "unclip": {"unet": _params(unclip_unet), "vae": _params(vae), "text_encoder": _params(text),
                   "image_encoder": _params(vision_h), "unet_call_flops": unclip_flops, "side": 768},
        "kandinsky": {"unet": _params(kandinsky_unet), "movq": _params(movq), "unet_call_flops": kandinsky_flops,
                      "side": 768},
        "cpu_flops_per_s": _cpu_flops_per_s(),
    }


def _fmt_ratio(value: float, base: float) -> str:
    return f"{value / base:.1f}×" if base > 0 else "–"


def report(rows: list[tuple[str, dict]], est: dict) -> str:
    import diffusers
    import torch

    base = rows[0][1]
    lines = [
        "# Decoder benchmarks",
        "",
        "Written by `benchmarks/bench_decoders.py`.",
        "",
        "## Families at the tiny test size (CPU, one thread, measured)",
        "",
        f"Machine: {platform.machine()}, 2 cores shared with other jobs, one torch thread; torch {torch.__version__},"
        f" diffusers {diffusers.__version__}. Each family in a fresh process: `load_decoder`, then `generate` of"
        f" {CONDITIONS} conditions × 1 image, {STEPS} steps, guidance {GUIDANCE} (CFG on), median of {REPEATS}"
        " runs after a warm-up. Ratios are against the bundled tiny decoder in the same run.",
        "",
        "| decoder | width d | image | import (s) | first load (s) | load (s) | sha256 (s) | per image (s) |"
        " peak RSS (MiB) | load vs tiny | per image vs tiny | peak RSS vs tiny |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows:
        lines.append(
            f"| {name} | {r['dim']} | {r['size']} | {r['import_s']:.2f} | {r['first_load_s']:.2f} |"
            f" {r['load_s']:.3f} | {r['sha256_s']:.4f} |"
            f" {r['per_image_s']:.4f} | {r['rss_peak_mib']:.0f} | {_fmt_ratio(r['load_s'], base['load_s'])} |"
            f" {_fmt_ratio(r['per_image_s'], base['per_image_s'])} |"
            f" {_fmt_ratio(r['rss_peak_mib'], base['rss_peak_mib'])} |")
    lines += [
        "",
        "`import` = torch + dprdm's decoders + `import diffusers` (lazy); `first load` adds diffusers' import of the"
        " pipeline's model classes (and transformers for unCLIP), paid once per process; `load` is a second load"
        " (weights and configs only), the figure the ratios use; Stable unCLIP's is mostly its CLIP tokenizer"
        " (49 k-entry BPE: 0.33 of 0.61 s in a separate cProfile run). Peak RSS is the process's VmHWM after"
        " generating. The tiny random pipelines carry the full plumbing of the real ones (text encoder and CLIP tokenizer for"
        " unCLIP, MoVQ for Kandinsky, CFG doubling the batch), so the ratios show the seam's overhead, not the"
        " cost of real weights; see below for those.",
        "",
    ]
    u, k, flops = est["unclip"], est["kandinsky"], est["cpu_flops_per_s"]
    lines += _estimate_section(u, k, flops)
    return "\n".join(lines) + "\n"


def _estimate_section(u: dict, k: dict, cpu_flops: float) -> list[str]:
    gib = 1024**3
    unclip_total = u["unet"] + u["vae"] + u["text_encoder"] + u["image_encoder"]
    kand_total = k["unet"] + k["movq"]
    rows = []
    for name, params, call_flops, steps in (
        ("Stable unCLIP 2.1 (ViT-H-14, 1024-d)", unclip_total, u["unet_call_flops"], 20),
        ("Kandinsky 2.2 decoder (ViT-bigG-14, 1280-d)", kand_total, k["unet_call_flops"], 50),
    ):
        image_flops = 2 * steps * call_flops  # CFG: two UNet evaluations per step (batched)
        cpu_s = image_flops / cpu_flops
        rows.append(
            f"| {name} | {params / 1e9:.2f} B | {params * 4 / gib:.1f} / {params * 2 / gib:.1f} |"
            f" {params * 4 / gib + 2:.0f}–{params * 4 / gib + 4:.0f} |"
            f" {call_flops / 1e12:.2f} | {steps} | {image_flops / 1e12:.0f} | {cpu_s / 60:.0f} |"
            f" {image_flops / 150e12:.1f}–{image_flops / 60e12:.1f} | {params * 2 / gib + 2:.0f}–"
            f"{params * 2 / gib + 4:.0f} |")
    return [
        "## Real models: expected memory and time per image (estimated)",
        "",
        "Parameter counts are **computed** here by instantiating the published architectures on the meta device"
        " (no weights): Stable unCLIP 2.1 = UNet "
        f"{u['unet'] / 1e6:.0f} M + VAE {u['vae'] / 1e6:.0f} M + OpenCLIP ViT-H text encoder"
        f" {u['text_encoder'] / 1e6:.0f} M + ViT-H/14 image encoder {u['image_encoder'] / 1e6:.0f} M"
        f" (the image encoder is loaded, so it counts in memory, but unused when dprdm passes `image_embeds`); Kandinsky 2.2 decoder = UNet"
        f" {k['unet'] / 1e6:.0f} M + MoVQ {k['movq'] / 1e6:.0f} M (published model card: UNet 1.22 B, MoVQ 67 M;"
        " the ViT-bigG image encoder and the prior live in the separate prior folder, not needed here)."
        " FLOPs per UNet call are **counted** with `torch.utils.flop_counter` on meta tensors at a 96×96 latent"
        " (768 px), batch 1. CPU time = 2 (CFG) × steps × FLOPs / the **measured** single-thread throughput of this"
        f" machine on an SD-sized 3×3 conv ({cpu_flops / 1e9:.0f} GFLOP/s this run; 39–58 across runs on this shared"
        " machine), i.e. an optimistic bound for one thread; divide by the number of cores for a many-core CPU. GPU time assumes 60–150 TFLOP/s achieved in fp16"
        " (an A100/H100-class card at 20–50 % of peak): **estimated, not measured** (no GPU run here). Memory ="
        " weights + 2–4 GiB of activations and runtime (estimated); fp16 is for GPU only.",
        "",
        "| model | params | weights fp32 / fp16 (GiB) | CPU RAM fp32 (GiB) | TFLOPs per UNet call | steps |"
        " TFLOPs per image (CFG) | CPU min per image (1 thread) | GPU s per image (fp16) | GPU memory fp16 (GiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows,
        "",
    ]


def main() -> None:
    """``bench_decoders.py`` writes the CPU report; ``bench_decoders.py --device cuda`` prints the same family
    table measured on that device (for the README's GPU figures) without touching the report."""
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        folder, device = (None if arg == "-" else arg for arg in sys.argv[2:])
        print(json.dumps(worker(folder, device)))
        return
    if len(sys.argv) == 3 and sys.argv[1] == "--device":
        print(json.dumps(measure_families(sys.argv[2]), indent=1))
        return
    rows = measure_families()
    estimates = real_model_estimates()
    RESULTS.write_text(report(rows, estimates))
    print(RESULTS.read_text())


if __name__ == "__main__":
    main()

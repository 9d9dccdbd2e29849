"""LDS of TRAK, D-TRAK and DAS (+ squared variants) on a 16×16 conditional UNet, and a counterfactual check.

Setting (``shared/notes/seeds-anchors.md`` §C.2 protocol, §C.4 "what to try next" (i)):

* data: the bundled PRIVATE half of MNIST-5k (``pipeline.data``), resized to 16×16; N training records and
  validation queries drawn stratified from it; the condition of a record is its unit tiny-CLIP embedding;
* model: the decoder's UNet architecture (``build_unet``) at quarter width, (16, 32, 32) channels, 0.36 M
  parameters (the bundled 1.41 M-parameter decoder costs ~46 ms per per-sample gradient on one thread against
  ~5.5 ms, too slow for 192 retrains here); a public backbone trained once on the PUBLIC half, then fine-tuned on
  the N records (the "full model") and on every LDS subset with the same recipe;
* queries: ``val`` (held-out private digits) and ``gen`` (DDIM samples of the full model, w = 2, conditioned on
  the validation embeddings);
* LDS: S α = 0.5 subsets × seeds, ground truth = loss over a uniform t grid × fixed noise seeds (a noise stream
  separate from the features'), Spearman per query, mean; best-λ and held-out-λ (even subsets pick, odd score);
* counterfactual: the full model is trained with a fixed schedule (``fixed_schedule``: every minibatch, t, noise and
  condition dropout drawn in advance per (step, slot)); for a few generations, retrain on D∖R with the same schedule
  minus R's slots, R = the top-10 of each method (held-out λ, K = 100) or 10 random records, regenerate with the same
  sampling seed, and report the RMS pixel change (0–1 scale); the floor is the full set under another schedule seed.

Privacy: this is an owner's evaluation over records the owner holds; nothing here goes through a DP query.

Run: ``nice -n 10 python benchmarks/bench_attribution.py --quick`` (about 30-60 min on 2 shared cores), or without
``--quick`` for the full setting (N = 500, 64 subsets × 2 seeds: hours); every setting has an override flag
(``--subsets 32 --steps 100 ...``). ``--counterfactual-only`` (default λ) can run beside an LDS run with the same
settings and ``--work`` (they share the K = 100 features); ``--merge-counterfactual`` then adds its table.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import index._torchvision_compat  # noqa: E402,F401
from pipeline.attribution import (  # noqa: E402
    METHODS,
    AttributionModel,
    FeatureCache,
    LDSReport,
    LDSRow,
    RecordSet,
    attribute,
    evaluate_lds,
    featurize,
    finetune,
    make_retrain,
)
from pipeline.attribution.retrain import ddpm_scheduler, fixed_schedule, small_unet  # noqa: E402

QUICK = {"n_train": 200, "n_val": 16, "n_gen": 16, "backbone_steps": 600, "steps": 150, "batch_size": 32,
         "lr": 5e-4, "subsets": 16, "seeds": 2, "projection_dim": 1024, "gt_timesteps": 50,
         "gt_noise_seeds": [0, 1], "n_counterfactual": 2, "cf_methods": list(METHODS)}
FULL = {"n_train": 500, "n_val": 64, "n_gen": 64, "backbone_steps": 1500, "steps": 300, "batch_size": 32,
        "lr": 5e-4, "subsets": 64, "seeds": 2, "projection_dim": 2048, "gt_timesteps": 100,
        "gt_noise_seeds": [0, 1, 2], "n_counterfactual": 8, "cf_methods": list(METHODS)}
SMOKE = {"n_train": 20, "n_val": 4, "n_gen": 4, "backbone_steps": 20, "steps": 10, "batch_size": 8, "lr": 5e-4,
         "subsets": 4, "seeds": 1, "projection_dim": 64, "gt_timesteps": 5, "gt_noise_seeds": [0],
         "n_counterfactual": 1, "cf_methods": list(METHODS)}  # a wiring check (seconds), not a measurement
IMAGE_SIZE = 16


def _embed(images: np.ndarray) -> np.ndarray:
    import open_clip

    from pipeline.train.encoder import default_encoder_dir, encode_image_array

    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{default_encoder_dir()}")
    with torch.no_grad():
        return encode_image_array(model, images, preprocess)


def _stratified(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    classes = np.unique(labels)
    per = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    picked = [p[: n // len(classes) + (1 if i < n % len(classes) else 0)] for i, p in enumerate(per)]
    return np.sort(np.concatenate(picked))


def _generate(model: AttributionModel, conditions: torch.Tensor, seed: int) -> np.ndarray:
    from pipeline.decoders.tiny import TinyDecoder

    decoder = TinyDecoder(model.unet, model.scheduler)
    images = decoder.generate(conditions, steps=25, guidance_scale=2.0,
                              generator=torch.Generator().manual_seed(seed))
    return np.stack([np.asarray(im, dtype=np.uint8) for im in images])


def _backbone(work: Path, public: RecordSet, cfg: dict) -> AttributionModel:
    key = hashlib.sha256(json.dumps({"steps": cfg["backbone_steps"], "n": len(public), "v": 1}).encode()).hexdigest()
    path = work / f"backbone-{key[:12]}.pt"
    torch.manual_seed(0)
    init = AttributionModel(small_unet(public.conditions.shape[1], image_size=IMAGE_SIZE), ddpm_scheduler(),
                            name="small-unet")
    if path.exists():
        init.unet.load_state_dict(torch.load(path, weights_only=True))
        return AttributionModel(init.unet, init.scheduler, name="small-unet")
    model = finetune(init, public, steps=cfg["backbone_steps"], batch_size=64, lr=1e-3, seed=0)
    tmp = path.with_suffix(".tmp")
    torch.save(model.unet.state_dict(), tmp)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return model


def _flag(value) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, list) else str(value)


def _csv_of(kind):
    def parse(text: str) -> list:
        return [kind(v) for v in text.split(",") if v]

    return parse


def _rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a.astype(np.float64) / 255 - b.astype(np.float64) / 255) ** 2)))


def plot_lds(doc: dict, path: Path) -> Path:
    """Bar chart of held-out-λ LDS (best-λ as a marker) per method, K and query set, from the results JSON."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = doc["lds"]["rows"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    combos = [(k, q) for k in sorted({r["timesteps"] for r in rows}) for q in ("val", "gen")]
    fig, ax = plt.subplots(figsize=(9, 3.6))
    width = 0.8 / len(combos)
    for c, (k, q) in enumerate(combos):
        cell = {r["method"]: r for r in rows if r["timesteps"] == k and r["queries"] == q}
        xs = np.arange(len(methods)) + (c - (len(combos) - 1) / 2) * width
        ax.bar(xs, [cell[m]["lds_heldout"] for m in methods], width, label=f"{q} K={k}")
        ax.plot(xs, [cell[m]["lds_best"] for m in methods], "k_", markersize=8)
    for q, v in doc["lds"]["random_lds"].items():
        ax.axhline(v, color="grey", lw=0.8, ls=":" if q == "val" else "--")
    ax.set_xticks(np.arange(len(methods)), methods)
    ax.set_ylabel("LDS (bars: held-out λ; ticks: best λ)")
    ax.set_title(f"LDS, {doc['meta']['setting']} setting: N={doc['meta']['n_train']}, "
                 f"{doc['meta']['subsets']} subsets × {doc['meta']['seeds']} seeds (grey: random scores)")
    ax.legend(fontsize=8, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _report_from_dict(d: dict) -> LDSReport:
    return LDSReport(rows=[LDSRow(**r) for r in d["rows"]], settings=d["settings"], random_lds=d["random_lds"],
                     masks=np.zeros((0, 0), dtype=bool), margins={}, retrain_seconds=d["retrain_seconds"])


def _meta(args, cfg: dict, overrides: dict, full: AttributionModel, retrain_seconds: float, t0: float) -> dict:
    return {"setting": "smoke" if args.smoke else "quick" if args.quick else "full", **cfg, "image_size": IMAGE_SIZE,
            "parameters": full.num_parameters, "retrain_seconds_each": round(retrain_seconds, 1),
            "total_minutes": round((time.perf_counter() - t0) / 60, 1), "torch": torch.__version__,
            "overrides": overrides, "full_model": "fixed schedule seed 0 (counterfactual baseline)",
            "counterfactual_schedule": "fixed (D∖R reuses the full model's minibatches, t and noise minus R's slots)",
            "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared), 1 torch thread, nice 10"}


def _counterfactual_lines(cf: dict[str, list[float]], cf_meta: dict) -> list[str]:
    lines = ["## Counterfactual, fixed schedule (RMS pixel change of the regenerated image, 0–1 scale)", "",
             "D∖R is retrained with the full model's own minibatches, timesteps and noise minus R's slots; the "
             "regenerated image uses the same sampling seed. `> random` = generations where removing the "
             "method's top-10 changed the image more than removing 10 random records. "
             f"λ: {cf_meta.get('lambda', 'held-out λ of the LDS run (gen, K = 100)')}.", "",
             "| removed | mean | median | > random | per generation |", "|---|---|---|---|---|"]
    for k, vs in cf.items():
        wins = "" if k in ("random", "seed floor") else \
            f"{sum(a > b for a, b in zip(vs, cf['random'], strict=True))}/{len(vs)}"
        lines.append(f"| {k} | {np.mean(vs):.4f} | {np.median(vs):.4f} | {wins} | {', '.join(f'{v:.4f}' for v in vs)} |")
    return [*lines, ""]


def write_results(out: Path, doc: dict, command: str) -> None:
    """Write ``out`` (.md), its .json and .png from the results document (meta, lds, counterfactual)."""
    meta, report = doc["meta"], _report_from_dict(doc["lds"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = [f"# Attribution benchmark ({meta['setting']})", "", f"Generated by `{command}`.", "",
             "```", json.dumps(meta, indent=1), "```", "",
             "## LDS (best-λ / held-out-λ)", "", report.to_markdown(), "",
             "## Time", "", "| method | K | s per training record | s per query |", "|---|---|---|---|"]
    for r in report.rows:
        if r.queries == "val" and not r.method.endswith("-squared"):
            lines.append(f"| {r.method} | {r.timesteps} | {r.seconds_per_record:.3f} | {r.seconds_per_query:.3f} |")
    lines += ["", f"Retraining: {report.retrain_seconds / 60:.1f} min for {meta['subsets']} × {meta['seeds']} models "
              "(incl. ground-truth losses).", ""]
    for key, meta_key in (("counterfactual_rms", "counterfactual_meta"),
                          ("counterfactual_side_rms", "counterfactual_side_meta")):
        if doc.get(key):
            lines += _counterfactual_lines(doc[key], doc.get(meta_key, {}))
    out.write_text("\n".join(lines) + "\n")
    plot_lds(doc, out.with_suffix(".png"))


def _schedule(train: RecordSet, backbone: AttributionModel, cfg: dict, seed: int):
    """The fixed training schedule of the full model (seed 0) and of every counterfactual retrain on D∖R."""
    return fixed_schedule(train.ids, steps=cfg["steps"], batch_size=cfg["batch_size"], seed=seed,
                          image_shape=tuple(train.images.shape[1:]), num_train_timesteps=backbone.num_train_timesteps)


def counterfactual(backbone: AttributionModel, full: AttributionModel, train: RecordSet, conditions: torch.Tensor,
                   cfg: dict, cache: FeatureCache, *, lambdas: dict[str, float] | None,
                   say, on_generation=None) -> dict[str, list[float]]:
    """RMS pixel change of regenerations after leave-R-out retraining with the full model's fixed schedule.

    For each of the first ``n_counterfactual`` conditions: generate with the full model (sampling seed 1234), take
    each method's top-10 records of that generation (K = 100, λ from ``lambdas`` or the library default), retrain
    on D∖R with the schedule of the full model (seed 0) and regenerate with the same seed; also R = 10 random
    records, and a floor = the full set under another schedule seed (1). ``on_generation(cf)`` is called with the
    results so far after each generation (a partial copy survives an interrupted run).
    """
    def schedule(seed: int):
        return _schedule(train, backbone, cfg, seed)

    methods = list(cfg["cf_methods"])
    feats = {m: featurize(full, train, method=m, timesteps=100, projection_dim=cfg["projection_dim"], cache=cache)
             for m in methods}
    say("counterfactual features ready")
    floor_model = finetune(backbone, train, lr=cfg["lr"], schedule=schedule(1))
    cf: dict[str, list[float]] = {m: [] for m in (*methods, "random", "seed floor")}
    cf_rng = np.random.default_rng(7)
    for g in range(cfg["n_counterfactual"]):
        cond = conditions[g:g + 1]
        original = _generate(full, cond, seed=1234)  # generated alone: a batch of 1 draws the same latents below
        query = RecordSet.from_arrays(original, cond, ids=np.array([2 * 10**6 + g]))
        cf["seed floor"].append(_rms(_generate(floor_model, cond, seed=1234), original))
        removals = {"random": cf_rng.choice(len(train), 10, replace=False)}
        for m in methods:
            lam = None if lambdas is None else lambdas[m]
            res = attribute(full, query, train, method=m, lambda_=lam, top=10, train_features=feats[m])
            removals[m] = np.array([r.position for r in res.top[0]])
        done: dict[tuple, float] = {}
        for name, pos in removals.items():
            key = tuple(sorted(int(p) for p in pos))
            if key not in done:  # squared and unsquared top-10 can coincide: retrain once
                keep = np.setdiff1d(np.arange(len(train)), pos)
                model = finetune(backbone, train.subset(keep), lr=cfg["lr"], schedule=schedule(0))
                done[key] = _rms(_generate(model, cond, seed=1234), original)
            cf[name].append(done[key])
        say(f"counterfactual {g + 1}/{cfg['n_counterfactual']}")
        if on_generation is not None:
            on_generation({k: [round(v, 4) for v in vs] for k, vs in cf.items()})
    return {k: [round(v, 4) for v in vs] for k, vs in cf.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced setting (N=200, 16 subsets x 2 seeds)")
    parser.add_argument("--work", type=Path, default=Path("~/.cache/dprdm/bench-attribution").expanduser())
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "attribution.md")
    parser.add_argument("--smoke", action="store_true", help="wiring check in seconds (numbers meaningless)")
    parser.add_argument("--replot", action="store_true", help="only redraw the PNG from the results JSON")
    parser.add_argument("--counterfactual-only", action="store_true",
                        help="only the counterfactual, λ = the library default, to <out>_cf.json (can run beside an "
                             "LDS run with the same settings: the K = 100 features are shared through --work)")
    parser.add_argument("--merge-counterfactual", action="store_true",
                        help="merge <out>_cf.json into the results written by an LDS run (as a second table when "
                             "the LDS run has its own counterfactual)")
    for key, default in FULL.items():  # every setting can be overridden, e.g. --steps 100 --n-val 24
        parser.add_argument(f"--{key.replace('_', '-')}", dest=key, default=None,
                            type=_csv_of(type(default[0])) if isinstance(default, list) else type(default),
                            help=f"override the setting's {key} (full: {default})")
    args = parser.parse_args(argv)
    if args.merge_counterfactual:
        doc = json.loads(args.out.with_suffix(".json").read_text())
        cf_doc = json.loads(args.out.with_name(args.out.stem + "_cf.json").read_text())
        side = "counterfactual_side" if doc.get("counterfactual_rms") else "counterfactual"  # keep the LDS run's
        doc[f"{side}_rms"] = cf_doc["counterfactual_rms"]
        doc[f"{side}_meta"] = cf_doc["counterfactual_meta"]
        cmd = "benchmarks/bench_attribution.py" + "".join(
            f" --{k.replace('_', '-')} {_flag(v)}" for k, v in doc["meta"]["overrides"].items())
        write_results(args.out, doc, f"{cmd}` (LDS) and `{cmd} --counterfactual-only")
        print(args.out)
        return 0
    if args.replot:
        print(plot_lds(json.loads(args.out.with_suffix(".json").read_text()), args.out.with_suffix(".png")))
        return 0
    torch.set_num_threads(1)
    cfg = dict(SMOKE if args.smoke else QUICK if args.quick else FULL)
    overrides = {k: getattr(args, k) for k in FULL if getattr(args, k) is not None}
    cfg.update(overrides)
    args.work.mkdir(mode=0o700, parents=True, exist_ok=True)
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", flush=True)

    # 1. data: private digits (train + val) and the public half (backbone), conditions = tiny-CLIP embeddings
    from pipeline.data import load_mnist_split

    split = load_mnist_split()
    rng = np.random.default_rng(0)
    train_rows = _stratified(split.private_labels, cfg["n_train"], rng)
    rest = np.setdiff1d(np.arange(len(split.private_labels)), train_rows)
    val_rows = rest[_stratified(split.private_labels[rest], cfg["n_val"], rng)]
    rng.shuffle(val_rows)  # generations use the first n_gen validation conditions: mix the classes
    chosen = np.concatenate([train_rows, val_rows])
    emb_private = _embed(split.private_images[chosen])
    emb_public = _embed(split.public_images)
    train = RecordSet.from_arrays(split.private_images[train_rows], emb_private[: cfg["n_train"]],
                                  ids=split.private_rows[train_rows],
                                  sources=[f"mnist-private/{int(r):04d}" for r in split.private_rows[train_rows]],
                                  labels=split.private_labels[train_rows], image_size=IMAGE_SIZE)
    val = RecordSet.from_arrays(split.private_images[val_rows], emb_private[cfg["n_train"]:],
                                ids=split.private_rows[val_rows], labels=split.private_labels[val_rows],
                                image_size=IMAGE_SIZE)
    public = RecordSet.from_arrays(split.public_images, emb_public, image_size=IMAGE_SIZE)
    say(f"data: N={len(train)} val={len(val)} public={len(public)}")

    # 2. backbone (public), full model (private N), generated queries
    backbone = _backbone(args.work, public, cfg)
    say("backbone ready")
    recipe = {"steps": cfg["steps"], "batch_size": cfg["batch_size"], "lr": cfg["lr"]}

    def schedule(seed: int):
        return _schedule(train, backbone, cfg, seed)

    # the full model is trained with a fixed schedule (same draws' distribution as the random recipe of the LDS
    # retrains), so the counterfactual can retrain it on D∖R with the very same minibatches minus R
    t_full = time.perf_counter()
    full = finetune(backbone, train, lr=cfg["lr"], schedule=schedule(0))
    retrain_seconds = time.perf_counter() - t_full
    gen_conds = val.conditions[: cfg["n_gen"]]
    gen_images = _generate(full, gen_conds, seed=1234)
    gen = RecordSet.from_arrays(gen_images, gen_conds, ids=np.arange(len(gen_images)) + 10**6)
    say(f"full model trained in {retrain_seconds:.1f}s; {len(gen)} generations")

    cache = FeatureCache(args.work / "features", full.model_hash)
    if args.counterfactual_only:  # features first (shared cache with a concurrent LDS run), then λ = the default
        path = args.out.with_name(args.out.stem + "_cf.json")

        def save(cf: dict[str, list[float]]) -> None:
            doc = {"meta": _meta(args, cfg, overrides, full, retrain_seconds, t0), "counterfactual_rms": cf,
                   "counterfactual_meta": {"lambda": "the library default λ = 0.1 × mean ‖φ_i‖² (run beside the "
                                                     "LDS run, before its held-out λ existed)",
                                           "generations_done": len(cf["random"])}}
            path.write_text(json.dumps(doc, indent=2) + "\n")
            say(f"wrote {path}")

        save(counterfactual(backbone, full, train, gen_conds, cfg, cache, lambdas=None, say=say, on_generation=save))
        return 0

    # 3. LDS
    report = evaluate_lds(train, {"val": val, "gen": gen}, model=full, retrain=make_retrain(backbone, **recipe),
                          subsets=cfg["subsets"], seeds=cfg["seeds"], methods=METHODS, timesteps=(10, 100),
                          projection_dim=cfg["projection_dim"], gt_timesteps=cfg["gt_timesteps"],
                          gt_noise_seeds=cfg["gt_noise_seeds"], cache=cache, progress=say)
    say("LDS done")
    print(report.to_markdown(), flush=True)

    # 4. the results, written as soon as LDS is done (a safety copy) and again after the counterfactual
    command = "benchmarks/bench_attribution.py" + (" --quick" if args.quick else "") \
        + "".join(f" --{k.replace('_', '-')} {_flag(v)}" for k, v in overrides.items())

    def write(cf: dict[str, list[float]]) -> None:
        meta = _meta(args, cfg, overrides, full, retrain_seconds, t0)
        doc = {"meta": meta, "lds": report.to_dict(),
               "counterfactual_rms": {k: [round(v, 4) for v in vs] for k, vs in cf.items()}}
        write_results(args.out, doc, command)
        say(f"wrote {args.out}")

    write({})

    # 5. counterfactual with the held-out λ of this LDS run
    cf = counterfactual(backbone, full, train, gen_conds, cfg, cache,
                        lambdas={m: report.get(m, 100, "gen").lambda_heldout for m in cfg["cf_methods"]}, say=say)
    write(cf)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

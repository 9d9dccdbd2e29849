"""``dprdm attribute IMAGE_OR_FOLDER`` and ``dprdm attribute evaluate``: which training records shaped an image.

Owner-only: attribution names training records (ids, sources, their pixels in the strips). It reads the training
images directly (an image folder, or an index shard's records read back from their recorded sources), never goes
through a DP query and never touches the budget ledger, so it gives no privacy guarantee: run it only over data you
already hold, and never expose it (or its output) to analysts.

``dprdm attribute IMAGE ...`` is the default command of the ``attribute`` group (``dprdm attribute run IMAGE ...``
is the same); ``evaluate`` runs the LDS benchmark (D-TRAK's protocol). Heavy imports (torch, diffusers, faiss,
open_clip) happen inside the commands, so ``dprdm --help`` stays light. Errors are raised as dprdm's typed errors and
turned into one line by the root group (:mod:`pipeline.cli`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from pipeline._cli_common import JsonOption, ThreadsOption, emit, make_typer
from pipeline.errors import PipelineInputError

OWNER_ONLY = "owner-only: names training records; never expose it to analysts"
DEFAULT_COMMAND = "run"
_HELP = (
    "Attribute images to the training records that shaped them (TRAK, D-TRAK, DAS), or evaluate attribution (LDS). "
    f"{OWNER_ONLY}.\n\n"
    "  dprdm attribute IMAGE_OR_FOLDER (--train SOURCE | --index DIR --shard NAME) [options]\n\n"
    "  dprdm attribute evaluate --train SOURCE [--subsets 64] [--seeds 2] [options]\n\n"
    "See 'dprdm attribute run --help' for the options of the first form."
)


class _DefaultCommandGroup(TyperGroup):
    """A group whose first argument, when it names no subcommand, goes to the ``run`` command.

    ``dprdm attribute q.png --train X`` is ``dprdm attribute run q.png --train X``; ``dprdm attribute --help`` and
    ``dprdm attribute evaluate ...`` are untouched. (A query folder literally named ``evaluate``: write ``./evaluate``.)
    """

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [DEFAULT_COMMAND, *args]
        return super().parse_args(ctx, args)


app = make_typer(name="attribute", cls=_DefaultCommandGroup, help=_HELP)

TrainOption = Annotated[
    str | None,
    typer.Option("--train", metavar="SOURCE", show_default=False,
                 help="Training images: a folder (labels = first-level subfolder names, optional) or a datasets corpus."),
]  # fmt: skip
IndexOption = Annotated[
    Path | None,
    typer.Option("--index", metavar="DIR", show_default=False,
                 help="Private index folder: read the shard's records directly (no DP query, no ledger)."),
]  # fmt: skip
ShardOption = Annotated[
    str | None,
    typer.Option("--shard", metavar="NAME", show_default=False,
                 help="With --index: the shard whose records trained the decoder."),
]  # fmt: skip
DecoderOption = Annotated[
    Path | None,
    typer.Option("--decoder", metavar="DIR", show_default=False,
                 help="Decoder folder in the dprdm tiny format (default: the bundled decoder)."),
]  # fmt: skip
AdapterOption = Annotated[
    Path | None,
    typer.Option("--adapter", metavar="DIR", show_default=False,
                 help="Adapter from 'dprdm finetune' (needs the fine-tuning extra); its parameters are attributed."),
]  # fmt: skip
ProjectionOption = Annotated[
    int, typer.Option("--projection-dim", metavar="P", min=1, help="Random projection dimension P.")
]
NeighboursOption = Annotated[
    int | None,
    typer.Option("--neighbours", metavar="K", min=0, show_default=False,
                 help="Training condition of a record: mean embedding of its K nearest other records (the bundled "
                      "decoder's training; default 10), 0 = its own embedding (default with --adapter)."),
]  # fmt: skip


def _method_help() -> str:
    return "das, dtrak, trak, or one of them with -squared (e.g. das-squared)."


def _progress(json_mode: bool):
    if json_mode or not sys.stderr.isatty():
        return None
    return lambda message: typer.echo(message, err=True)


def _set_threads(threads: int | None) -> None:
    """Torch threads, and silence torch's note that vmap falls back to a loop for CPU attention (not an error)."""
    import warnings

    warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented")
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


# -- dprdm attribute IMAGE_OR_FOLDER ------------------------------------------------------------------------------


def _human_result(payload: dict[str, Any]) -> str:
    train = payload["training"]
    lines = [
        f"{payload['method']}, K={payload['timesteps']}, P={payload['projection_dim']}, lambda={payload['lambda']:.4g}, "
        f"model {payload['model_hash'][:12]}; {payload['n_train']} training records from {train['from']}"
        + (f" ({len(train['skipped'])} skipped)" if train["skipped"] else ""),
    ]
    for query in payload["queries"]:
        lines.append(f"query {query['query']}")
        lines += [f"  {r['rank']:>3}  {r['score']:+.4e}  id {r['id']}  {r['source']}" for r in query["top"]]
    for skip in train["skipped"]:
        lines.append(f"skipped training record {skip.get('id', '')} {skip['source']}: {skip['reason']}".replace("  ", " "))
    if payload.get("strips"):
        lines.append("strips: " + ", ".join(payload["strips"]))
    cache = payload["cache"]
    if cache["path"] is not None:
        lines.append(f"features: {'read from' if cache['hit'] else 'cached in'} {cache['path']}")
    lines.append(f"({OWNER_ONLY})")
    return "\n".join(lines)


def _strip_name(position: int, source: str) -> str:
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(source.split("#")[0]).stem)[:60]
    return f"{position:03d}-{stem or 'query'}.png"


def _write_strips(result: Any, out: Path) -> list[str]:
    """One PNG per query (the query, then its top records, best first), owner-only, in ``out`` (0700)."""
    import dataclasses

    from index.fs import make_private_dir
    from pipeline.attribution import save_strip

    make_private_dir(out)
    paths = []
    for q, name in enumerate(result.queries):
        one = dataclasses.replace(result, queries=[name], top=[result.top[q]],
                                  query_images=result.query_images[q:q + 1], scores=result.scores[q:q + 1])
        paths.append(str(save_strip(one, out / _strip_name(q, name))))
    return paths


def _cache_for(model: Any, train: Any, *, root: Path | None, neighbours: int,
               prune: bool) -> tuple[Any, dict[str, Any]]:
    """The ``FeatureCache`` of this (model, set) under ``root`` (None = no cache), and its JSON description."""
    from pipeline.attribution import FeatureCache
    from pipeline.attribution.records import cache_dir

    if root is None:
        return None, {"path": None, "hit": False}
    try:
        folder = cache_dir(root, model.model_hash, train, neighbours=neighbours, prune=prune)
    except PermissionError as err:  # a read-only index: attribute without a cache
        return None, {"path": None, "hit": False, "note": f"not cached: {root} is not writable ({err.strerror})"}
    return FeatureCache(folder, model.model_hash), {"path": str(folder), "hit": False}


@app.command(DEFAULT_COMMAND)
def run(
    query: Annotated[
        str, typer.Argument(metavar="IMAGE_OR_FOLDER", show_default=False,
                            help="The image(s) to attribute: one image file, or a folder of images.")
    ],
    train: TrainOption = None,
    index: IndexOption = None,
    shard: ShardOption = None,
    decoder: DecoderOption = None,
    adapter: AdapterOption = None,
    method: Annotated[str, typer.Option("--method", metavar="NAME", help=_method_help())] = "das",
    timesteps: Annotated[
        int, typer.Option("--timesteps", metavar="K", min=1, help="Timesteps per gradient feature (uniform grid).")
    ] = 100,
    projection_dim: ProjectionOption = 2048,
    lambda_: Annotated[
        float | None,
        typer.Option("--lambda", metavar="L", show_default=False,
                     help="Ridge lambda (default: 0.1 x mean squared feature norm; prefer the held-out lambda of "
                          "'dprdm attribute evaluate')."),
    ] = None,
    top: Annotated[int, typer.Option("--top", metavar="N", min=1, help="Training records shown per image.")] = 10,
    neighbours: NeighboursOption = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", metavar="DIR", show_default=False,
                     help="Write one PNG strip per image (the image, then its top records) here, owner-only."),
    ] = None,
    cache: Annotated[
        Path | None,
        typer.Option("--cache-dir", metavar="DIR", show_default=False,
                     help="With --train: cache training features here (default: OUT/.attribution-cache with --out, "
                          "else none). With --index the cache is always INDEX/attribution/SHARD."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", metavar="INT", help="Feature noise and projection seed.")] = 0,
    threads: ThreadsOption = None,
    json_mode: JsonOption = False,
) -> None:
    """Name the training records that most shaped each image (owner-only: names training records; never expose it
    to analysts).

    Training records are an image folder (--train) or the current records of an index shard (--index DIR --shard
    NAME), read from the sources the index recorded; records whose source is gone are skipped and reported. It reads
    those files directly: no DP query, no budget charge, no privacy guarantee. Each record is conditioned as the
    decoder was trained; each image on its own embedding (the index's encoder, or the bundled one). Training
    features are computed once per (model, method, K, P) and cached (INDEX/attribution/, 0700/0600). Cost: K
    gradients per training record and per image (~46 ms each for the bundled decoder on one CPU thread).
    """
    from pipeline.attribution.features import base_method
    from pipeline.attribution.loading import check_adapter_support

    base = base_method(method)  # unknown method: exit 2 before anything is loaded
    if (train is None) == (index is None):
        raise PipelineInputError("pass the training records as either --train SOURCE or --index DIR --shard NAME")
    if index is not None and shard is None:
        raise PipelineInputError("--index needs --shard NAME (the shard whose records trained the decoder)")
    if train is None and cache is not None:
        raise PipelineInputError("--cache-dir is for --train; the features of a shard are cached in INDEX/attribution")
    if shard is not None and index is None:
        raise PipelineInputError("--shard needs --index DIR")
    if lambda_ is not None and not lambda_ > 0:
        raise PipelineInputError(f"--lambda must be > 0; found {lambda_}")
    if not Path(query).expanduser().exists():
        raise PipelineInputError(f"query '{query}' does not exist; pass an image file or a folder of images")
    if train is not None and not Path(train).expanduser().exists():
        raise PipelineInputError(f"training source '{train}' does not exist; pass an image folder or a datasets corpus")
    check_adapter_support(adapter)
    _set_threads(threads)

    idx = None
    if index is not None:
        from index import PrivateIndex

        idx = PrivateIndex.open(index)
        idx.shard(shard)  # an unknown shard: exit 2 before the models load
    from pipeline.attribution import attribute, featurize
    from pipeline.attribution.forget import index_cache_root
    from pipeline.attribution.loading import load_attribution_model
    from pipeline.attribution.records import folder_records, query_records, shard_records

    model, dec = load_attribution_model(decoder, adapter)
    k_neighbours = neighbours if neighbours is not None else (0 if adapter is not None else 10)
    if idx is not None:
        if idx.dim != dec.condition_dim:
            raise PipelineInputError(f"the decoder takes {dec.condition_dim}-d conditions but index '{index}' holds "
                                     f"{idx.dim}-d embeddings; pass the decoder trained on this index's encoder")
        loaded = shard_records(idx, shard, image_size=model.image_size, neighbours=k_neighbours)
        encoder = idx.load_encoder(num_threads=threads)
        cache_root = index_cache_root(idx.path, shard)  # INDEX/attribution/SHARD, every level 0700
        source_label = f"shard '{shard}' of index {idx.path}"
    else:
        from index import load_encoder

        encoder = load_encoder(num_threads=threads)
        if encoder.dim != dec.condition_dim:
            raise PipelineInputError(f"the decoder takes {dec.condition_dim}-d conditions but the bundled encoder "
                                     f"gives {encoder.dim}-d embeddings; pass --index with the decoder's index")
        loaded = folder_records(train, image_size=model.image_size, encoder=encoder, neighbours=k_neighbours)
        cache_root = cache if cache is not None else (out / ".attribution-cache" if out is not None else None)
        source_label = str(Path(train).expanduser().resolve())
    queries = query_records(query, image_size=model.image_size, encoder=encoder)

    feature_cache, cache_info = _cache_for(model, loaded.records, root=cache_root, neighbours=k_neighbours,
                                           prune=idx is not None)
    train_features = None
    if feature_cache is not None:
        train_features = feature_cache.get(base, timesteps, projection_dim, seed, ids=loaded.records.ids)
        cache_info["hit"] = train_features is not None
    if train_features is None:
        train_features = featurize(model, loaded.records, method=base, timesteps=timesteps,
                                   projection_dim=projection_dim, seed=seed, cache=feature_cache)
    result = attribute(model, queries.records, loaded.records, method=method, timesteps=timesteps,
                       projection_dim=projection_dim, lambda_=lambda_, top=top, seed=seed,
                       train_features=train_features)
    payload = result.to_dict()
    payload.update(
        decoder=str(decoder) if decoder is not None else "bundled",
        adapter=str(adapter) if adapter is not None else None,
        neighbours=k_neighbours,
        parameters=model.num_parameters,
        training={"from": source_label, "index": str(idx.path) if idx is not None else None, "shard": shard,
                  "records": len(loaded.records), "skipped": loaded.skipped},
        query_skipped=queries.skipped,
        cache=cache_info,
        strips=_write_strips(result, out) if out is not None else [],
        privacy=OWNER_ONLY,
    )
    emit(payload, json_mode=json_mode, human=_human_result)


# -- dprdm attribute evaluate -------------------------------------------------------------------------------------


def _human_lds(payload: dict[str, Any]) -> str:
    s = payload["settings"]
    lines = [
        f"LDS (D-TRAK protocol): N={s['n_train']} training records, queries {s['n_queries']}, {s['subsets']} subsets "
        f"x {len(s['seeds'])} seeds, P={s['projection_dim']}, ground truth {s['gt_timesteps']} t x "
        f"{len(s['gt_noise_seeds'])} noise seeds",
        f"{'method':<15} {'K':>4} {'queries':<8} {'best-lambda LDS':>16} {'lambda':>10} {'held-out LDS':>13} "
        f"{'lambda':>10}",
    ]
    for r in payload["rows"]:
        lines.append(f"{r['method']:<15} {r['timesteps']:>4} {r['queries']:<8} {r['lds_best']:>16.3f} "
                     f"{r['lambda_best']:>10.3g} {r['lds_heldout']:>13.3f} {r['lambda_heldout']:>10.3g}")
    rand = ", ".join(f"{q}: {v:.3f}" for q, v in payload["random_lds"].items())
    lines.append(f"random scores: {rand} (differences smaller than the spread of random scores are noise)")
    lines.append("held-out lambda: picked on the even subsets, LDS on the odd ones")
    return "\n".join(lines)


@app.command("evaluate")
def evaluate(
    train: Annotated[
        str, typer.Option("--train", metavar="SOURCE", show_default=False,
                          help="Training images: a folder (labels = first-level subfolder names stratify the subsets).")
    ],
    queries: Annotated[
        Path | None,
        typer.Option("--queries", metavar="DIR", show_default=False,
                     help="Query images (default: --val records held out of SOURCE)."),
    ] = None,
    val: Annotated[
        int, typer.Option("--val", metavar="N", min=1, help="Records of SOURCE held out as queries (no --queries).")
    ] = 8,
    decoder: DecoderOption = None,
    adapter: AdapterOption = None,
    methods: Annotated[
        list[str] | None,
        typer.Option("--method", metavar="NAME", show_default=False,
                     help="Method to evaluate (repeatable; default: all six). " + _method_help()),
    ] = None,
    timesteps: Annotated[
        list[int] | None,
        typer.Option("--timesteps", metavar="K", min=1, show_default=False,
                     help="K to evaluate (repeatable; default: 10)."),
    ] = None,
    projection_dim: ProjectionOption = 512,
    subsets: Annotated[int, typer.Option("--subsets", metavar="S", min=4, help="alpha = 0.5 random subsets.")] = 64,
    seeds: Annotated[int, typer.Option("--seeds", metavar="N", min=1, help="Retraining seeds per subset.")] = 2,
    steps: Annotated[
        int, typer.Option("--steps", metavar="N", min=1, help="Fine-tuning steps of every model (full and subsets).")
    ] = 100,
    lr: Annotated[float, typer.Option("--lr", metavar="LR", help="Fine-tuning learning rate.")] = 5e-4,
    batch_size: Annotated[int, typer.Option("--batch-size", metavar="N", min=1, help="Fine-tuning batch.")] = 32,
    gt_timesteps: Annotated[
        int, typer.Option("--gt-timesteps", metavar="T", min=1, help="Timesteps of the ground-truth loss (D-TRAK: 1000).")
    ] = 100,
    gt_noise_seeds: Annotated[
        int, typer.Option("--gt-noise-seeds", metavar="N", min=1, help="Noise seeds of the ground-truth loss.")
    ] = 2,
    neighbours: NeighboursOption = None,
    threads: ThreadsOption = None,
    json_mode: JsonOption = False,
) -> None:
    """LDS of each method by D-TRAK's protocol (owner-only: names training records; never expose it to analysts).

    Every model is fine-tuned from the decoder (the public backbone) with the same recipe: the full model on all of
    SOURCE, and one per alpha = 0.5 subset and seed. Ground truth: each query's loss averaged over --gt-timesteps
    uniform timesteps and --gt-noise-seeds fixed noises (a stream separate from the features'). Prints the LDS at
    the best lambda and at the held-out lambda (picked on even subsets, scored on odd ones). Cost: subsets x seeds
    fine-tunings of --steps steps; the defaults take hours with the bundled decoder on a CPU.
    """
    import numpy as np

    from pipeline.attribution.features import METHODS, base_method
    from pipeline.attribution.loading import check_adapter_support

    chosen = list(dict.fromkeys(methods)) if methods else list(METHODS)
    for m in chosen:
        base_method(m)
    if not Path(train).expanduser().exists():
        raise PipelineInputError(f"training source '{train}' does not exist; pass an image folder or a datasets corpus")
    if queries is not None and not queries.expanduser().exists():
        raise PipelineInputError(f"query folder '{queries}' does not exist")
    check_adapter_support(adapter)
    _set_threads(threads)

    from index import load_encoder
    from pipeline.attribution import evaluate_lds, finetune, make_retrain
    from pipeline.attribution.loading import load_attribution_model
    from pipeline.attribution.records import folder_records, query_records

    base, dec = load_attribution_model(decoder, adapter)
    encoder = load_encoder(num_threads=threads)
    if encoder.dim != dec.condition_dim:
        raise PipelineInputError(f"the decoder takes {dec.condition_dim}-d conditions but the bundled encoder gives "
                                 f"{encoder.dim}-d embeddings")
    k_neighbours = neighbours if neighbours is not None else (0 if adapter is not None else 10)
    records = folder_records(train, image_size=base.image_size, encoder=encoder, neighbours=k_neighbours).records
    if queries is not None:
        qset, train_set = query_records(queries, image_size=base.image_size, encoder=encoder).records, records
    else:
        if len(records) - val < 8:
            raise PipelineInputError(f"SOURCE has {len(records)} readable images; holding out {val} as queries "
                                     "leaves fewer than 8 to train on; add images, lower --val or pass --queries")
        order = np.random.default_rng(0).permutation(len(records))
        qset, train_set = records.subset(np.sort(order[:val])), records.subset(np.sort(order[val:]))
    recipe = {"steps": steps, "lr": lr, "batch_size": batch_size}
    full = finetune(base, train_set, seed=0, **recipe)
    report = evaluate_lds(train_set, qset, model=full, retrain=make_retrain(base, **recipe), subsets=subsets,
                          seeds=seeds, methods=chosen, timesteps=tuple(timesteps or (10,)),
                          projection_dim=projection_dim, gt_timesteps=gt_timesteps,
                          gt_noise_seeds=tuple(range(gt_noise_seeds)), progress=_progress(json_mode))
    payload = report.to_dict()
    payload["settings"].update(decoder=str(decoder) if decoder is not None else "bundled",
                               adapter=str(adapter) if adapter is not None else None, neighbours=k_neighbours,
                               recipe=recipe)
    payload["privacy"] = OWNER_ONLY
    emit(payload, json_mode=json_mode, human=_human_lds)


def register(root: typer.Typer) -> None:
    """Add the ``attribute`` command group to the root app."""
    root.add_typer(app, name="attribute")

"""Train compartments (one adapter per shard + the shard classifier) and forget records (CDM).

``train_compartments``: for each requested shard, an adapter on the public base decoder — through
``pipeline.finetune.finetune`` (DP-SGD, charged to the shard's scope) for a DP shard, or without noise only for a
shard marked public/consented (:func:`pipeline.compartments.store.mark_public`); then the shard classifier on the
pooled records of EVERY shard with a compartment, with DP-SGD, its one event charged to every non-public scope in
one all-or-none transaction before its first step. The store is verified before anything is charged.

``forget``: removes the records from the index (``PrivateIndex.remove`` with the ledger membership hook: the
records leave with a tombstone of their loss), retrains only the affected shard's adapter and the classifier with
the settings recorded at training, leaves every other adapter untouched (hash-checked) and never refunds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from pipeline.compartments.posterior import ShardPosterior, charge_posterior, posterior_event
from pipeline.compartments.store import Compartments, compartments_lock
from pipeline.errors import PipelineInputError, PrivacyRefusal

if TYPE_CHECKING:
    from accountant import Ledger
    from index import PrivateIndex

__all__ = ["ADAPTER_DEFAULTS", "CLASSIFIER_DEFAULTS", "PUBLIC_ADAPTER_DEFAULTS", "decoder_alphas_cumprod", "forget",
           "train_compartments"]

#: DP adapters: attention+conditioning (DP-LDM's choice: few parameters, so DP-SGD's noise, whose norm grows with
#: the parameter count, stays small; the finetune path's), 3 epochs
ADAPTER_DEFAULTS: dict[str, Any] = {"trainable": "attention+conditioning", "max_grad_norm": 1e-2, "lr": 1e-3,
                                    "batch_size": 64, "physical_batch_size": 32, "epochs": 3, "steps": None}
#: --non-private adapters (public/consented shards): the same trainer without noise; every UNet parameter, 20 epochs,
#: the condition dropped for 90 % of the records (compartments are sampled from one generic condition, so they must
#: learn the shard's own unconditional distribution), and the EMA of the iterates (decay 0.99): the last iterate's
#: step-to-step noise, not the recipe, was what left an adapter's samples outside its shard's classes (README,
#: "Compartments"; measured on two training seeds)
PUBLIC_ADAPTER_DEFAULTS: dict[str, Any] = {**ADAPTER_DEFAULTS, "trainable": "all", "physical_batch_size": 64,
                                           "epochs": 20, "cond_drop_prob": 0.9, "ema_decay": 0.99}
CLASSIFIER_DEFAULTS: dict[str, Any] = {"max_grad_norm": 1.0, "lr": 2e-3, "batch_size": 64, "steps": 300,
                                       "hidden": 128}


def _open(index) -> PrivateIndex:
    from index import PrivateIndex

    return index if isinstance(index, PrivateIndex) else PrivateIndex.open(index)


def decoder_alphas_cumprod(decoder) -> torch.Tensor:
    """The decoder's training noise schedule (ᾱ_t, float32): the forward process a ``ShardPosterior`` must use."""
    from pipeline.finetune.trainer import _training_scheduler

    return _training_scheduler(decoder).alphas_cumprod.to(torch.float32)


def _effective(settings: dict[str, Any], n: int) -> dict[str, Any]:
    """Small shards get B = n/2 (q = 0.5): finetune refuses B > n."""
    if settings.get("batch_size", 64) > max(1, n // 2):
        settings = dict(settings, batch_size=max(1, n // 2))
        settings["physical_batch_size"] = min(int(settings.get("physical_batch_size", 32)), settings["batch_size"])
    return settings


def _adapter_event(ledger, shard: str, settings: dict[str, Any], epsilon: float, n: int):
    """The event ``finetune`` will charge to ``shard``'s scope for an adapter trained on ``n`` records."""
    from pipeline.finetune import calibrate_training_noise, training_event

    st = _effective(dict(settings), n)
    q = st["batch_size"] / n
    steps = int(st["steps"]) if st.get("steps") else max(1, int(st["epochs"]) * (n // st["batch_size"]))
    z = calibrate_training_noise(sample_rate=q, steps=steps, epsilon=epsilon, delta=ledger.status(shard).delta)
    return training_event(sample_rate=q, noise_multiplier=z, steps=steps)


def _classifier_event(ledger, counts: dict[str, int], dp_scopes: list[str], settings: dict[str, Any],
                      epsilon: float):
    """The event :func:`_train_classifier` will charge to every DP scope (pooled records ``counts``)."""
    from pipeline.finetune import calibrate_training_noise

    total = sum(counts.values())
    q = min(int(settings["batch_size"]), total) / total
    delta = min(ledger.status(n).delta for n in dp_scopes)
    z = calibrate_training_noise(sample_rate=q, steps=int(settings["steps"]), epsilon=epsilon, delta=delta)
    return posterior_event(sample_rate=q, noise_multiplier=z, steps=int(settings["steps"]))


def _at_filter_order(events: Sequence[Any], order: float):
    """One chargeable event whose RDP at ``order`` is (just above) the SUM of ``events``' RDP there.

    The ledger's filter is fixed-order (Feldman & Zrnic 2021, Thm 3.1): a scope admits a charge iff its running RDP
    at its filter order alpha* plus the event's RDP at alpha* converts to an epsilon within budget. Composition adds
    RDP, so the composition of ``events`` fits iff ``GaussianDpEvent(z)`` with alpha* / (2 z^2) = sum fits: the
    ledger's own ``fits`` then decides (the dp-accounting ``ComposedDpEvent`` is not a chargeable event). The sum is
    rounded up by 1e-9 relative, so the dry run can only be stricter than the charges.
    """
    import dp_accounting as dpa

    from accountant import event_rdp

    total = sum(float(event_rdp(e, (float(order),))[0]) for e in events) * (1 + 1e-9) + 1e-12
    return dpa.GaussianDpEvent(math.sqrt(float(order) / (2.0 * total)))


def _dry_run(ledger, plan: dict[str, list[Any]], records: dict[str, int], *, refused: str) -> None:
    """Would every scope of ``plan`` afford ALL its events together right now (the ledger's own ``fits``)?

    Raises:
        accountant.BudgetExceeded: some scope would not (nothing was charged; ``refused`` says what else not).
    """
    from accountant.errors import BudgetExceeded

    for scope, events in sorted(plan.items()):
        if not events:
            continue
        event = events[0] if len(events) == 1 else _at_filter_order(events, ledger.status(scope).filter_order)
        if not ledger.fits(scope, event=event, records={scope: records[scope]}):
            what = ("its adapter's and the shard classifier's trainings together" if len(events) > 1
                    else "this training")
            raise BudgetExceeded(f"scope '{scope}' cannot afford {what}; {refused}; raise the scope's budget or "
                                 "train with a smaller --epsilon")


def _precheck(ledger, store: Compartments, counts: dict[str, int], adapters: dict[str, tuple[dict[str, Any], float]],
              classifier: tuple[dict[str, Any], float | None] | None, *, refused: str) -> None:
    """Dry-run ALL the charges of one train/forget before anything is charged, trained or removed.

    Each DP scope's events are composed and checked against its filter together (:func:`_dry_run`): the new
    adapter of its shard if ``adapters`` names it (shard -> (settings, epsilon), trained on ``counts[shard]``
    records) plus, when ``classifier`` = (settings, epsilon) is given, the shard classifier's one event (pooled over
    ``counts``, charged to every DP scope of ``counts``).

    Raises:
        PipelineInputError: DP shards take part but the classifier has no epsilon.
        accountant.BudgetExceeded: some scope cannot afford its events together.
    """
    dp_scopes = sorted(n for n in counts if n not in store.public)
    plan: dict[str, list[Any]] = {n: [] for n in dp_scopes}
    for shard, (settings, epsilon) in adapters.items():
        if shard in plan and counts[shard] > 0:
            plan[shard].append(_adapter_event(ledger, shard, settings, epsilon, counts[shard]))
    if classifier is not None and dp_scopes:
        settings, epsilon = classifier
        if epsilon is None:
            raise PipelineInputError(f"the shard classifier covers DP shard(s) {', '.join(dp_scopes)}: pass "
                                     "--epsilon (it is trained with DP-SGD and charged to their scopes)")
        event = _classifier_event(ledger, counts, dp_scopes, settings, epsilon)
        for n in dp_scopes:
            plan[n].append(event)
    _dry_run(ledger, plan, counts, refused=refused)


def _precheck_forget(index, shard: str, removed: int, ledger, store: Compartments) -> None:
    """Dry-run the retraining charges after removing ``removed`` records of ``shard`` (refuse before removing).

    Runs in the index's before_commit hook, before the records' tombstones: a refusal removes and charges nothing.
    The shard's scope must afford its adapter's AND the classifier's retraining together; every other DP scope the
    classifier's.

    Raises:
        accountant.BudgetExceeded: the retraining charges would not fit.
    """
    counts = {n: int(index.shard(n).num_records) for n in store.shards}
    counts[shard] -= removed
    entry = store.shards[shard]
    adapters = {} if entry.get("non_private") else {shard: (entry["settings"], entry["epsilon_requested"])}
    clf = store.classifier or {}
    classifier = (dict(clf["settings"]), clf["epsilon_requested"]) if clf.get("dp") else None
    _precheck(ledger, store, counts, adapters, classifier, refused="nothing was removed or charged")


def _train_adapter(index, shard: str, ledger, store: Compartments, decoder, *, epsilon, non_private: bool,
                   settings: dict[str, Any], _seed) -> dict[str, Any]:
    from pipeline.finetune import DPFineTuner, finetune, images_to_tensor, read_shard_records, save_adapter
    from pipeline.finetune.adapter import decoder_sha256

    settings = _effective(settings, int(index.shard(shard).num_records))
    out = store.new_adapter_path(shard)
    start = time.perf_counter()
    if not non_private:
        result = finetune(index, shard, ledger, out, decoder=decoder, epsilon=epsilon, caller="compartments",
                          _seed=_seed, **settings)
        dp = {"epsilon": result.epsilon, "delta": result.delta, "noise_multiplier": result.noise_multiplier,
              "sample_rate": result.sample_rate, "steps": result.steps, "receipt": result.receipt}
        records = result.shard_records
    else:
        recs = read_shard_records(index, shard)
        if len(recs) == 0:
            raise PipelineInputError(f"shard '{shard}' has no readable records")
        tuner = DPFineTuner(decoder, **settings)
        images = images_to_tensor(recs.images, int(decoder.unet.config.sample_size))
        outcome = tuner.fit(images, recs.embeddings, noise_multiplier=0.0, condition_sigma=0.0, delta=1e-5,
                            _seed=_seed)
        sel = outcome.selection
        save_adapter(out, outcome.state, {
            "base_decoder": {"sha256": decoder_sha256(decoder), "class": type(decoder).__name__},
            "trainable": sel.mode.value, "modules": list(sel.modules), "parameters": list(sel.parameters),
            "parameter_counts": {"trainable": sel.trainable, "total": sel.total, "percent": sel.percent},
            "lora": None, "dp": None, "public": store.public[shard], "shard": shard,
            "records": {"trained": len(recs), "shard": recs.shard_records}})
        dp, records = None, recs.shard_records
    seconds = time.perf_counter() - start
    store.stage_adapter(shard, out, {"dp": dp, "records": records, "trainable": settings["trainable"],
                                     "epsilon_requested": epsilon, "non_private": non_private,
                                     "settings": settings, "seconds": round(seconds, 3)})
    return {"shard": shard, "seconds": round(seconds, 3), "dp": dp}


def _train_classifier(index, ledger, store: Compartments, decoder, *, epsilon: float | None,
                      settings: dict[str, Any], _seed) -> dict[str, Any]:
    """Pool every compartment shard's records; charge the DP scopes once (all-or-none); DP-SGD the classifier."""
    from pipeline.finetune import (
        calibrate_training_noise,
        images_to_tensor,
        read_shard_records,
        training_epsilon,
    )

    names = sorted(store.shards)
    size = int(decoder.unet.config.sample_size)
    data, labels, counts = [], [], {}
    for i, name in enumerate(names):
        recs = read_shard_records(index, name)
        data.append(images_to_tensor(recs.images, size))
        labels.append(torch.full((len(recs),), i, dtype=torch.long))
        counts[name] = recs.shard_records
    x, y = torch.cat(data), torch.cat(labels)
    dp_scopes = {n: counts[n] for n in names if n not in store.public}
    batch = min(int(settings["batch_size"]), len(x))
    q, steps = batch / len(x), int(settings["steps"])
    post = ShardPosterior(names, {n: len(d) for n, d in zip(names, data, strict=True)}, tuple(x.shape[1:]),
                          num_timesteps=int(decoder.scheduler.config.num_train_timesteps),
                          hidden=int(settings["hidden"]))
    dp = None
    z = 0.0
    if dp_scopes:
        if epsilon is None:
            raise PipelineInputError("the shard classifier covers DP shards: pass --epsilon (it is trained with DP-SGD)")
        delta = min(ledger.status(n).delta for n in dp_scopes)
        z = float(calibrate_training_noise(sample_rate=q, steps=steps, epsilon=epsilon, delta=delta))
        event = posterior_event(sample_rate=q, noise_multiplier=z, steps=steps)
        receipt = charge_posterior(ledger, dp_scopes, event, caller="compartments")  # before the first step
        dp = {"epsilon": training_epsilon(event, delta), "delta": delta, "noise_multiplier": z, "sample_rate": q,
              "steps": steps, "scopes": sorted(dp_scopes), "receipt": receipt.to_dict()}
    start = time.perf_counter()
    post.fit(x, y, decoder_alphas_cumprod(decoder), noise_multiplier=z, max_grad_norm=float(settings["max_grad_norm"]),
             batch_size=batch, steps=steps, lr=float(settings["lr"]), _seed=_seed)
    seconds = time.perf_counter() - start
    blob, config = post.to_bytes()
    store.stage_classifier(blob, config, {"shards": names, "records": counts, "dp": dp, "epsilon_requested": epsilon,
                                          "settings": settings, "seconds": round(seconds, 3)})
    return {"seconds": round(seconds, 3), "dp": dp}


def train_compartments(
    index: PrivateIndex | str, ledger: Ledger | None, *, shards: Sequence[str] | None = None,
    epsilon: float | None = None, non_private: bool = False, classifier_epsilon: float | None = None,
    decoder=None, adapter: dict[str, Any] | None = None, classifier: dict[str, Any] | None = None,
    _seed: int | None = None,
) -> dict[str, Any]:
    """Train the adapters of ``shards`` (default: every shard of the index) and retrain the shard classifier.

    Args:
        index: the index (or its directory); the store lives in ``DIR/compartments``.
        ledger: the index's own ledger (None only when every shard involved is public/consented).
        shards: shards to (re)train; the others keep their adapters byte for byte.
        epsilon: epsilon of each DP adapter's training alone (calibrates its noise).
        non_private: train without noise; refused unless every requested shard is marked public/consented.
        classifier_epsilon: epsilon of the classifier's training at every DP scope (default ``epsilon``).
        decoder: the public base decoder (default: the bundled tiny decoder).
        adapter, classifier: overrides of :data:`ADAPTER_DEFAULTS` (DP) or :data:`PUBLIC_ADAPTER_DEFAULTS`
            (``non_private``) / :data:`CLASSIFIER_DEFAULTS`.
        _seed: TEST HOOK ONLY (a known seed voids the guarantee).

    Returns:
        ``{"trained": [...], "classifier": {...}, "info": Compartments.info()}``.

    Raises:
        CompartmentsDamaged: the store is damaged (nothing charged).
        CompartmentsBusy: another process is training or forgetting on this index (exit 3, nothing done).
        PrivacyRefusal: ``--non-private`` on a shard not marked public/consented (exit 3).
    """
    index = _open(index)
    with compartments_lock(index.path):  # held from reading the manifest to committing it
        return _train_locked(index, ledger, shards=shards, epsilon=epsilon, non_private=non_private,
                             classifier_epsilon=classifier_epsilon, decoder=decoder, adapter=adapter,
                             classifier=classifier, _seed=_seed)


def _train_locked(index: PrivateIndex, ledger: Ledger | None, *, shards, epsilon, non_private, classifier_epsilon,
                  decoder, adapter, classifier, _seed) -> dict[str, Any]:
    from pipeline.finetune.adapter import decoder_sha256

    store = Compartments(index.path).verify()
    names = list(shards) if shards else index.shard_names
    unknown = sorted(set(names) - set(index.shard_names))
    if unknown:
        raise PipelineInputError(f"no shard {', '.join(unknown)} in index '{index.path}'")
    if non_private:
        private = [n for n in names if n not in store.public]
        if private:
            raise PrivacyRefusal(
                f"--non-private refused: shard(s) {', '.join(private)} are not marked public/consented; train them "
                "with --epsilon (DP), or mark them with 'dprdm compartments mark-public' if they truly are")
    elif epsilon is None:
        raise PipelineInputError("pass --epsilon (DP adapters) or --non-private (public/consented shards only)")
    if decoder is None:
        from pipeline.decoders import TinyDecoder

        decoder = TinyDecoder.from_pretrained()
    base = decoder_sha256(decoder)
    known = store.body.get("base_decoder")
    if known and known != base and set(store.shards) - set(names):
        raise PipelineInputError("the stored compartments were trained on another base decoder; retrain every shard")
    needs_ledger = (not non_private) or any(n not in store.public for n in set(store.shards) | set(names))
    if needs_ledger:
        if ledger is None:
            raise PipelineInputError("DP compartments need the index's ledger")
        from pipeline.ledgers import require_own_ledger

        require_own_ledger(index, ledger)
    adapter_settings = dict(PUBLIC_ADAPTER_DEFAULTS if non_private else ADAPTER_DEFAULTS, **(adapter or {}))
    clf_settings = dict(CLASSIFIER_DEFAULTS, **(classifier or {}))
    clf_epsilon = classifier_epsilon if classifier_epsilon is not None else epsilon
    counts = {n: int(index.shard(n).num_records) for n in sorted(set(store.shards) | set(names))}
    _precheck(ledger, store, counts, {} if non_private else {n: (adapter_settings, epsilon) for n in names},
              (clf_settings, clf_epsilon), refused="nothing was charged or trained")
    store.body["base_decoder"] = base
    trained = [_train_adapter(index, n, ledger, store, decoder, epsilon=epsilon, non_private=non_private,
                              settings=adapter_settings, _seed=_seed) for n in names]
    clf = _train_classifier(index, ledger, store, decoder, epsilon=clf_epsilon, settings=clf_settings, _seed=_seed)
    store.commit()
    return {"trained": trained, "classifier": clf, "info": store.info()}


def forget(
    index: PrivateIndex | str, shard: str, ledger: Ledger | None, *, ids: Sequence[int] | None = None,
    sources: Sequence[str] | None = None, decoder=None, _seed: int | None = None,
) -> dict[str, Any]:
    """Remove records of ``shard`` from the index and retrain only that shard's adapter and the classifier.

    Returns:
        ``{"shard", "removed", "retrained", "unchanged", "adapter_sha256": {"before", "after"}, "seconds",
        "full_retrain_seconds_estimate"}``.

    Raises:
        CompartmentsDamaged: the store is damaged (nothing removed or charged).
        CompartmentsBusy: another process is training or forgetting on this index (exit 3, nothing done).
        PipelineInputError: no compartment for ``shard``; the selectors matched records of other shards too.
    """
    start = time.perf_counter()
    index = _open(index)
    with compartments_lock(index.path):  # held across the dry run, the removal, the charges and the commit
        return _forget_locked(index, shard, ledger, ids=ids, sources=sources, decoder=decoder, _seed=_seed,
                              start=start)


def _forget_locked(index: PrivateIndex, shard: str, ledger: Ledger | None, *, ids, sources, decoder, _seed,
                   start: float) -> dict[str, Any]:
    from pipeline.ledgers import membership_hook

    store = Compartments(index.path).verify()
    if shard not in store.shards:
        raise PipelineInputError(f"shard '{shard}' has no compartment; nothing to forget there")
    if not ids and not sources:
        raise PipelineInputError("pass --id or --source to say which records to forget")
    if ids:
        in_shard = {rid for _, rid, _ in index.records(shard)}
        outside = sorted(set(int(i) for i in ids) - in_shard)
        if outside:
            raise PipelineInputError(f"{len(outside)} id(s) are not records of shard '{shard}'; nothing was removed")
    if decoder is None:
        from pipeline.decoders import TinyDecoder

        decoder = TinyDecoder.from_pretrained()
    before = store.adapter_hashes()
    if ledger is not None:
        from pipeline.ledgers import require_own_ledger

        require_own_ledger(index, ledger)
    retire = membership_hook(ledger, joining=False)

    def before_commit(name: str, removed_ids) -> None:
        if name == shard and ledger is not None:
            _precheck_forget(index, shard, len(removed_ids), ledger, store)  # refuse before anything changes
        if retire is not None:
            retire(name, removed_ids)

    report = index.remove(ids=ids, sources=sources, before_commit=before_commit)
    affected = sorted(report.shards)
    stray = [s for s in affected if s != shard]
    entry = store.shards[shard]
    retrained = []
    for name in [shard, *[s for s in stray if s in store.shards]]:
        e = store.shards[name]
        _train_adapter(index, name, ledger, store, decoder, epsilon=e.get("epsilon_requested"),
                       non_private=bool(e.get("non_private")), settings=dict(e["settings"]), _seed=_seed)
        retrained.append(name)
    clf = store.classifier or {}
    _train_classifier(index, ledger, store, decoder, epsilon=clf.get("epsilon_requested"),
                      settings=dict(clf.get("settings") or CLASSIFIER_DEFAULTS), _seed=_seed)
    store.commit()
    after = store.adapter_hashes()
    unchanged = sorted(n for n in after if n not in retrained and after[n] == before.get(n))
    changed_others = sorted(n for n in after if n not in retrained and after[n] != before.get(n))
    if changed_others:  # cannot happen: only retrained shards are restaged
        raise RuntimeError(f"adapters of {changed_others} changed during forget")
    full = sum(float(e.get("seconds", 0.0)) for e in store.shards.values()) + float(
        (store.classifier or {}).get("seconds", 0.0))
    del entry
    return {"shard": shard, "removed": int(report.removed), "retrained": retrained + ["classifier"],
            "unchanged": unchanged, "adapter_sha256": {"before": before, "after": after},
            "seconds": round(time.perf_counter() - start, 3), "full_retrain_seconds_estimate": round(full, 3)}

"""``finetune()``: DP fine-tuning of the decoder on one shard, charged to the shard's scope before training.

Stages (nothing past stage 4 runs if stage 4 fails; nothing is charged if stages 1-3 refuse):

1. validate every setting, the output folder and the decoder/index pair;
2. read the shard's current records from their sources (skips reported) and the scope's delta and sigma;
3. plan: q = B / n, steps, z (given, or calibrated so that the training alone has epsilon <= --epsilon at the
   scope's delta), the event ``SelfComposed(PoissonSampled(q, Gaussian(z)), steps)``; dry-run it against the
   ledger's filter (refused with exit 3 if it does not fit);
4. **charge** the event to the scope in one transaction (the charge stays if training later fails);
5. DP-SGD (:class:`DPFineTuner`);
6. write the adapter atomically and return a :class:`FineTuneResult`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import PipelineError, PipelineInputError
from pipeline.finetune import accounting
from pipeline.finetune.adapter import check_out_dir, decoder_sha256, save_adapter
from pipeline.finetune.modes import LORA_TARGETS, TrainableMode
from pipeline.finetune.records import images_to_tensor, read_shard_records
from pipeline.finetune.trainer import DPFineTuner

if TYPE_CHECKING:
    from accountant import Ledger
    from index import PrivateIndex

__all__ = ["FineTuneResult", "TrainingFailed", "finetune"]

CONDITIONING = ("own unit encoder embedding (the shard's stored row) + N(0, s^2 I), s ~ U[0, scope sigma] per "
                "record, zeroed with probability cond_drop_prob (classifier-free guidance)")


class TrainingFailed(PipelineError):
    """Training failed after its charge was committed; the charge stays (the ledger never under-counts)."""

    exit_code = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class FineTuneResult:
    """What a DP fine-tuning run did and cost (``dprdm finetune --json``).

    Attributes:
        adapter: the adapter directory written.
        epsilon: epsilon of this training alone at ``delta`` (dp-accounting RDP, add/remove-one).
        delta: the scope's delta.
        noise_multiplier, sample_rate, steps: z, q and the number of DP-SGD steps (the charged event).
        max_grad_norm: the clipping norm C.
        trainable: the trainable mode; trainable_parameters / total_parameters / trainable_percent: its size.
        records: records trained on; shard_records: records of the shard (N); skipped: unreadable records.
        shard: the shard (= scope) name.
        opacus_epsilon: epsilon Opacus's RDP accountant reports for the steps taken (cross-check).
        receipt: the committed charge (``Receipt.to_dict()``).
        seconds: wall time of the training.
    """

    adapter: str
    epsilon: float
    delta: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float
    trainable: str
    trainable_parameters: int
    total_parameters: int
    trainable_percent: float
    records: int
    shard_records: int
    skipped: tuple[dict[str, str], ...]
    shard: str
    opacus_epsilon: float
    receipt: dict[str, Any]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON form (no pixels, ids, gradients or losses)."""
        out = dataclasses.asdict(self)
        out["skipped"] = [dict(s) for s in self.skipped]
        return out


def _receipt_id(receipt: Any) -> str | None:
    return getattr(receipt, "group_id", None) or getattr(receipt, "id", None)


def finetune(
    index: PrivateIndex | str | os.PathLike[str],
    shard: str,
    ledger: Ledger,
    out_dir: str | os.PathLike[str],
    *,
    decoder=None,
    epsilon: float | None = None,
    noise_multiplier: float | None = None,
    trainable: str | TrainableMode = TrainableMode.ATTENTION,
    max_grad_norm: float = 1e-2,
    lr: float = 1e-3,
    batch_size: int = 64,
    physical_batch_size: int = 32,
    epochs: int = 10,
    steps: int | None = None,
    optimizer: str = "adamw",
    lora_rank: int = 4,
    cond_drop_prob: float = 0.1,
    ema_decay: float | None = None,
    caller: str | None = None,
    _seed: int | None = None,
) -> FineTuneResult:
    """DP-fine-tune ``decoder`` on the current records of ``shard``, charged to the shard's scope first.

    Args:
        index: an open :class:`index.PrivateIndex` or its directory.
        shard: the shard to train on; its ledger scope has the same name.
        ledger: the index's ledger (must support training events).
        out_dir: the adapter folder to create (must not exist, or be empty).
        decoder: the base decoder (default: the bundled tiny decoder).
        epsilon: epsilon of the training alone at the scope's delta (calibrates z). Exactly one of
            ``epsilon`` and ``noise_multiplier``.
        noise_multiplier: z directly (``--sigma``).
        trainable, max_grad_norm, lr, batch_size, physical_batch_size, epochs, steps, optimizer, lora_rank,
            cond_drop_prob, ema_decay: see :class:`DPFineTuner`.
        caller: label recorded with the charge.
        _seed: TEST HOOK ONLY, not part of the API: seeds every random draw (a known seed voids the guarantee).

    Returns:
        A :class:`FineTuneResult`.

    Raises:
        PipelineInputError: a bad setting, an empty shard, B > records, an existing output (exit 2).
        accountant.AccountantInputError: the shard has no scope in the ledger (exit 2).
        accountant.BudgetExceeded: the training does not fit the scope's remaining budget (exit 3, nothing
            charged or trained).
        PrivacyRefusal: epsilon unreachable, or a ledger that cannot hold training events (exit 3).
        TrainingFailed: training failed after the charge (exit 1; the charge stays).
    """
    from accountant.errors import BudgetExceeded
    from index import PrivateIndex

    # 1. validate settings, output, decoder and index
    if (epsilon is None) == (noise_multiplier is None):
        raise PipelineInputError("pass exactly one of --epsilon (calibrates the noise) or --sigma (noise multiplier)")
    if decoder is None:
        from pipeline.decoders import TinyDecoder

        decoder = TinyDecoder.from_pretrained()
    tuner = DPFineTuner(decoder, trainable=trainable, max_grad_norm=max_grad_norm, lr=lr, batch_size=batch_size,
                        physical_batch_size=physical_batch_size, epochs=epochs, steps=steps, optimizer=optimizer,
                        lora_rank=lora_rank, cond_drop_prob=cond_drop_prob,
                        ema_decay=ema_decay)
    out = check_out_dir(out_dir)
    if not isinstance(index, PrivateIndex):
        index = PrivateIndex.open(index)
    if int(decoder.embedding_dim) != index.dim:
        raise PipelineInputError(
            f"decoder condition width {decoder.embedding_dim} does not match the index dimension {index.dim}; "
            "pass a --decoder trained with the index's encoder"
        )

    # 2. the scope, then exactly the shard's current records
    status = ledger.status(shard)
    records = read_shard_records(index, shard)
    if len(records) == 0:
        raise PipelineInputError(
            f"shard '{shard}' has no readable records ({records.shard_records} stored, {len(records.skipped)} "
            "with a missing or changed source); add records with 'dprdm index add' or restore their sources"
        )
    image_size = int(decoder.unet.config.sample_size)
    images = images_to_tensor(records.images, image_size)

    # 3. plan the event, calibrate, dry-run against the ledger's filter
    n = len(records)
    q, num_steps = tuner.sample_rate(n), tuner.num_steps(n)
    z = (float(accounting.calibrate_training_noise(sample_rate=q, steps=num_steps, epsilon=epsilon, delta=status.delta))
         if noise_multiplier is None else float(noise_multiplier))
    event = accounting.training_event(sample_rate=q, noise_multiplier=z, steps=num_steps)
    eps_alone = accounting.training_epsilon(event, status.delta)
    from pipeline.ledgers import require_own_ledger

    require_own_ledger(index, ledger)  # a training over an index charges only that index's own ledger (exit 3)
    if not accounting.training_fits(ledger, shard, event, records=records.shard_records):
        raise BudgetExceeded(
            f"scope '{shard}' cannot afford this training (epsilon {eps_alone:.4g} alone at delta={status.delta:g}, "
            f"{status.epsilon_spent:.4g} of {status.epsilon_budget:g} already spent); nothing was charged or trained; "
            "lower --epsilon, raise --sigma, or train fewer --epochs"
        )
    base_sha = decoder_sha256(decoder)

    # 4. charge the whole run before the first gradient step
    receipt = accounting.charge_training(ledger, shard, event, records=records.shard_records, caller=caller,
                                         purpose=f"finetune {tuner.trainable.value} x{num_steps} steps")

    # 5. DP-SGD
    start = time.perf_counter()
    try:
        outcome = tuner.fit(images, records.embeddings, noise_multiplier=z, condition_sigma=float(status.sigma),
                            delta=status.delta, _seed=_seed)
    except Exception as err:
        raise TrainingFailed(
            f"training failed after its charge was committed (receipt {_receipt_id(receipt)}; the charge stays): "
            f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"
        ) from err
    seconds = time.perf_counter() - start

    # 6. the adapter
    sel = outcome.selection
    manifest = {
        "base_decoder": {"sha256": base_sha, "class": type(decoder).__name__,
                         "model_id": getattr(decoder, "model_id", None)},
        "trainable": sel.mode.value,
        "modules": list(sel.modules),
        "parameters": list(sel.parameters),
        "parameter_counts": {"trainable": sel.trainable, "total": sel.total, "percent": sel.percent},
        "lora": ({"rank": sel.lora_rank, "alpha": sel.lora_alpha, "targets": list(LORA_TARGETS)}
                 if sel.mode is TrainableMode.LORA else None),
        "dp": {
            "event": accounting.event_to_dict(event), "epsilon": eps_alone, "delta": status.delta,
            "noise_multiplier": z, "sample_rate": q, "steps": num_steps, "steps_taken": outcome.steps,
            "max_grad_norm": tuner.max_grad_norm, "adjacency": "add_or_remove_one",
            "accountant": f"dp-accounting {version('dp-accounting')} RDP",
            "mechanism": "DP-SGD (Opacus): Poisson sampling, per-record clipping at C, Gaussian noise z*C",
        },
        "receipt": _receipt_id(receipt),
        "ledger": getattr(ledger, "ledger_id", None),
        "shard": shard,
        "records": {"trained": n, "shard": records.shard_records, "skipped": len(records.skipped)},
        "conditioning": {"rule": CONDITIONING, "sigma": float(status.sigma), "drop_prob": tuner.cond_drop_prob},
        "training": {"optimizer": tuner.optimizer.value, "lr": tuner.lr, "batch_size": tuner.batch_size,
                     "physical_batch_size": tuner.physical_batch_size, "epochs": tuner.epochs,
                     "ema_decay": tuner.ema_decay},
        "created": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "versions": {p: version(p) for p in ("torch", "opacus", "diffusers", "peft", "dp-accounting")},
    }
    path = save_adapter(out, outcome.state, manifest)
    return FineTuneResult(
        adapter=str(Path(path)), epsilon=eps_alone, delta=float(status.delta), noise_multiplier=z, sample_rate=q,
        steps=num_steps, max_grad_norm=tuner.max_grad_norm, trainable=sel.mode.value,
        trainable_parameters=sel.trainable, total_parameters=sel.total, trainable_percent=sel.percent,
        records=n, shard_records=records.shard_records, skipped=records.skipped, shard=shard,
        opacus_epsilon=outcome.opacus_epsilon, receipt=receipt.to_dict(), seconds=round(seconds, 2),
    )

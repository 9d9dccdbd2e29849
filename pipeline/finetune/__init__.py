"""DP fine-tuning of the decoder on a private shard (DP-LDM, Liu et al. 2023), charged to the shard's scope.

Public API::

    finetune(index, shard, ledger, out_dir, *, epsilon=None, noise_multiplier=None, trainable=..., ...)
        -> FineTuneResult
    DPFineTuner(decoder, encoder=None, *, trainable=..., max_grad_norm=..., lr=..., batch_size=...,
                physical_batch_size=..., epochs=..., steps=None)
    load_adapter(decoder, adapter_dir) -> decoder      (also ``TinyDecoder.load_adapter(dir)``)
    select_trainable(unet, mode) -> TrainableSelection
    training_event(sample_rate=, noise_multiplier=, steps=) -> dp_accounting event
"""

from pipeline.finetune.accounting import calibrate_training_noise, training_epsilon, training_event
from pipeline.finetune.adapter import decoder_sha256, load_adapter, read_manifest, save_adapter
from pipeline.finetune.modes import TrainableMode, TrainableSelection, select_trainable
from pipeline.finetune.records import ShardRecords, images_to_tensor, read_shard_records
from pipeline.finetune.run import FineTuneResult, TrainingFailed, finetune
from pipeline.finetune.trainer import DPFineTuner, Optimizer, TrainingOutcome

__all__ = [
    "DPFineTuner",
    "FineTuneResult",
    "Optimizer",
    "ShardRecords",
    "TrainableMode",
    "TrainableSelection",
    "TrainingFailed",
    "TrainingOutcome",
    "calibrate_training_noise",
    "decoder_sha256",
    "finetune",
    "images_to_tensor",
    "load_adapter",
    "read_manifest",
    "read_shard_records",
    "save_adapter",
    "select_trainable",
    "training_epsilon",
    "training_event",
]

"""``DPFineTuner``: DP-SGD fine-tuning of a retrieval-conditioned decoder with Opacus (DP-LDM recipe).

Mechanism: DP-SGD (Abadi et al. 2016) as Opacus 1.6 implements it. Every step Poisson-samples each training
record with probability q (Opacus ``UniformWithReplacementSampler``: variable batch sizes, empty batches
possible, never drop_last), splits the logical batch into physical batches of at most P records
(``BatchMemoryManager``), computes per-record gradients (``GradSampleModule``), clips each record's gradient
to L2 norm C, sums, adds N(0, (z·C)² I) (``DPOptimizer``) and takes an AdamW or SGD step on the trainable
parameters only. Sensitivity C per step under add/remove-one adjacency; the accounting event is
``accounting.training_event`` (dp-accounting RDP). Opacus's own RDP accountant runs alongside as a
cross-check and is reported, never used for the charge.

Per-record randomness (diffusion timestep, noise, condition noise and dropout) is drawn independently of the
other records, so each record's clipped gradient depends on that record only.

Compatibility with diffusers (checked in tests against per-record autograd): the tiny decoder's UNet has
only Linear, Conv2d, GroupNorm and LayerNorm as trainable leaves, all with Opacus hook grad-samplers; the
attention maths (``F.scaled_dot_product_attention``) has no parameters, so the default ``hooks`` mode is
exact. ``grad_sample_mode="functorch"`` (``force_functorch``) is available for UNets with other layers. An
empty Poisson batch cannot go through the UNet (its attention reshapes fail on 0 rows), so such a step
skips the forward pass and hands Opacus zero-row per-sample gradients: the update is pure noise, as DP-SGD
requires.

Never recorded or logged: per-sample gradients or norms, un-noised gradients, batch composition, losses.
"""

from __future__ import annotations

import copy
import enum
import math
import secrets
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.errors import PipelineInputError
from pipeline.finetune.modes import TrainableMode, TrainableSelection, select_trainable

__all__ = ["DPFineTuner", "Optimizer", "TrainingOutcome", "check_positive"]


class Optimizer(enum.Enum):
    """The optimizer DP-SGD wraps."""

    ADAMW = "adamw"
    SGD = "sgd"


def check_positive(name: str, value: float, flag: str, *, integer: bool = False) -> float:
    """Refuse a non-positive, non-finite (or, with ``integer``, non-integer) setting with a one-line error."""
    ok_type = (isinstance(value, int) and not isinstance(value, bool)) if integer else (
        isinstance(value, int | float) and not isinstance(value, bool))
    if not ok_type or not math.isfinite(value) or value <= 0:
        kind = "an integer >= 1" if integer else "a finite number > 0"
        raise PipelineInputError(f"{name} must be {kind}; found {value!r}; pass e.g. {flag}")
    return value


def _secure_generator() -> torch.Generator:
    """A torch generator seeded with 64 bits from the OS CSPRNG; the seed is never returned or logged."""
    return torch.Generator().manual_seed(secrets.randbits(64))


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainingOutcome:
    """What :meth:`DPFineTuner.fit` produced.

    Attributes:
        decoder: a new decoder holding the fine-tuned UNet (the input decoder is untouched).
        state: the trained tensors only, by UNet parameter name (what the adapter file stores).
        selection: the trainable selection applied.
        steps: logical DP-SGD steps taken (= the steps of the declared event unless training failed).
        opacus_epsilon: epsilon Opacus's RDP accountant reports for the steps taken at ``delta``.
        delta: the delta of ``opacus_epsilon``.
    """

    decoder: object
    state: dict[str, torch.Tensor]
    selection: TrainableSelection
    steps: int
    opacus_epsilon: float
    delta: float


class DPFineTuner:
    """DP-SGD fine-tuning of a diffusers ``UNet2DConditionModel`` decoder (``TinyDecoder``) with Opacus.

    Args:
        decoder (`TinyDecoder`): the public base decoder (never modified; training works on a copy).
        encoder (`index.Encoder`, *optional*): embeds images when :meth:`fit` gets no embeddings.
        trainable (`str`, defaults to "attention"): a :class:`TrainableMode` name.
        max_grad_norm (`float`, defaults to 1e-2): per-record clipping norm C.
        lr (`float`, defaults to 1e-3): learning rate.
        batch_size (`int`, defaults to 64): expected logical batch B; the sample rate is q = B / n.
        physical_batch_size (`int`, defaults to 32): largest physical batch (memory only; no privacy effect).
        epochs (`int`, defaults to 10): steps = epochs * floor(n / B) (at least 1).
        steps (`int`, *optional*): the exact number of steps (overrides ``epochs``).
        optimizer (`str`, defaults to "adamw"): "adamw" or "sgd".
        lora_rank (`int`, defaults to 4): LoRA rank for ``trainable="lora"``.
        cond_drop_prob (`float`, defaults to 0.1): probability a record's condition is zeroed (the
            classifier-free-guidance branch, as the bundled decoder was trained).
        grad_sample_mode (`str`, defaults to "hooks"): Opacus per-sample gradient mode ("hooks" or "functorch").
        ema_decay (`float`, *optional*): return the exponential moving average of the iterates (diffusers
            ``EMAModel`` at this constant decay, updated after every logical step) instead of the last iterate.
            The iterates are functions of the noisy gradient releases the training event accounts for, so
            their average is post-processing (Dwork & Roth 2014, Prop. 2.1): no extra privacy cost. None = the
            last iterate.

    Raises:
        PipelineInputError: a bad setting or a decoder that is not a conditioned diffusers UNet.
    """

    def __init__(
        self,
        decoder,
        encoder=None,
        *,
        trainable: str | TrainableMode = TrainableMode.ATTENTION,
        max_grad_norm: float = 1e-2,
        lr: float = 1e-3,
        batch_size: int = 64,
        physical_batch_size: int = 32,
        epochs: int = 10,
        steps: int | None = None,
        optimizer: str | Optimizer = Optimizer.ADAMW,
        lora_rank: int = 4,
        cond_drop_prob: float = 0.1,
        grad_sample_mode: str = "hooks",
        ema_decay: float | None = None,
    ) -> None:
        self.trainable = TrainableMode.parse(trainable)
        self.max_grad_norm = float(check_positive("max grad norm C", max_grad_norm, "--max-grad-norm 0.01"))
        self.lr = float(check_positive("learning rate", lr, "--lr 1e-3"))
        self.batch_size = int(check_positive("batch size", batch_size, "--batch-size 64", integer=True))
        self.physical_batch_size = int(
            check_positive("physical batch size", physical_batch_size, "--physical-batch-size 32", integer=True))
        self.epochs = int(check_positive("epochs", epochs, "--epochs 1", integer=True))
        self.steps = None if steps is None else int(check_positive("steps", steps, "--steps 10", integer=True))
        try:
            self.optimizer = Optimizer(optimizer)
        except ValueError:
            raise PipelineInputError(f"optimizer must be 'adamw' or 'sgd'; found {optimizer!r}") from None
        if not (isinstance(cond_drop_prob, int | float) and 0.0 <= cond_drop_prob < 1.0):
            raise PipelineInputError(f"cond_drop_prob must be in [0, 1); found {cond_drop_prob!r}")
        if grad_sample_mode not in ("hooks", "functorch"):
            raise PipelineInputError(f"grad_sample_mode must be 'hooks' or 'functorch'; found {grad_sample_mode!r}")
        if ema_decay is not None and not (isinstance(ema_decay, float) and 0.0 < ema_decay < 1.0):
            raise PipelineInputError(
                f"ema_decay must be a number in (0, 1) or None; found {ema_decay!r}; pass e.g. 0.99")
        unet = getattr(decoder, "unet", None)
        config = getattr(unet, "config", None)
        if unet is None or getattr(config, "class_embed_type", None) != "projection":
            raise PipelineInputError(
                f"decoder {type(decoder).__name__} cannot be fine-tuned: DP fine-tuning supports the tiny "
                "retrieval-conditioned decoder (a UNet conditioned by class projection and cross-attention); "
                "pass --decoder with a folder written by 'dprdm train decoder'"
            )
        self.decoder = decoder
        self.encoder = encoder
        self.lora_rank = lora_rank
        self.cond_drop_prob = float(cond_drop_prob)
        self.grad_sample_mode = grad_sample_mode
        self.ema_decay = ema_decay

    # -- planning -------------------------------------------------------------------------------------------
    def sample_rate(self, num_records: int) -> float:
        """q = B / n (Poisson sampling probability of each record).

        Raises:
            PipelineInputError: no records, or B > n.
        """
        if num_records < 1:
            raise PipelineInputError("the shard has no readable records to train on; add records or fix their sources")
        if self.batch_size > num_records:
            raise PipelineInputError(
                f"batch size {self.batch_size} is larger than the {num_records} trainable records; "
                f"pass --batch-size {max(1, num_records // 4)} or less"
            )
        return self.batch_size / num_records

    def num_steps(self, num_records: int) -> int:
        """Logical steps of the run: ``steps`` if set, else epochs * floor(n / B) (at least 1)."""
        if self.steps is not None:
            return self.steps
        return max(1, self.epochs * (num_records // self.batch_size))

    # -- training -------------------------------------------------------------------------------------------
    def _conditions(self, embeddings: torch.Tensor, sigma: float, gen: torch.Generator) -> torch.Tensor:
        """Own embedding + N(0, s² I) with s ~ U[0, sigma] per record, zeroed with prob ``cond_drop_prob``."""
        n, d = embeddings.shape
        scale = sigma * torch.rand(n, 1, generator=gen)
        cond = embeddings + scale * torch.randn(n, d, generator=gen)
        keep = (torch.rand(n, 1, generator=gen) >= self.cond_drop_prob).to(cond.dtype)
        return cond * keep

    def fit(
        self,
        images: torch.Tensor,
        embeddings: torch.Tensor | None = None,
        *,
        noise_multiplier: float,
        condition_sigma: float,
        delta: float,
        _seed: int | None = None,
    ) -> TrainingOutcome:
        """Run DP-SGD on ``images`` (the caller has already charged the event of this run).

        Args:
            images: (n, 1, H, W) float in [-1, 1] at the decoder's image size.
            embeddings: (n, d) unit condition rows (the index encoder's embeddings of the same images); None =
                embed ``images`` with the tuner's encoder.
            noise_multiplier: z; Gaussian noise std z * C per step (0 = no noise: the NON-private paragon of the
                benchmark; :func:`finetune` never passes 0, a training event needs z > 0).
            condition_sigma: retrieval-level noise of the condition (the scope's sigma).
            delta: delta for the reported Opacus epsilon.
            _seed: TEST HOOK ONLY, not part of the API: seeds sampling, noise and diffusion randomness (None =
                OS CSPRNG seeds; a known seed voids the guarantee).

        Returns:
            A :class:`TrainingOutcome`.

        Raises:
            PipelineInputError: bad shapes or settings.
        """
        from diffusers.training_utils import EMAModel
        from opacus.accountants import RDPAccountant
        from opacus.grad_sample.utils import prepare_module
        from opacus.optimizers import DPOptimizer
        from opacus.utils.batch_memory_manager import BatchMemoryManager
        from opacus.utils.uniform_sampler import UniformWithReplacementSampler

        # 1. inputs
        unet0 = self.decoder.unet
        size, dim = int(unet0.config.sample_size), int(unet0.config.projection_class_embeddings_input_dim)
        if embeddings is None:
            if self.encoder is None:
                raise PipelineInputError("fit() needs embeddings or an encoder to compute them")
            embeddings = self._embed(images)
        images = torch.as_tensor(images, dtype=torch.float32)
        embeddings = torch.as_tensor(embeddings, dtype=torch.float32)
        if images.ndim != 4 or tuple(images.shape[1:]) != (1, size, size) or embeddings.shape != (len(images), dim):
            raise PipelineInputError(
                f"training data must be images (n, 1, {size}, {size}) and embeddings (n, {dim}); found "
                f"{tuple(images.shape)} and {tuple(embeddings.shape)}; use the index's encoder"
            )
        if not (isinstance(noise_multiplier, int | float) and math.isfinite(noise_multiplier) and noise_multiplier >= 0):
            raise PipelineInputError(f"noise multiplier must be a finite number >= 0; found {noise_multiplier!r}")
        if not (isinstance(condition_sigma, int | float) and math.isfinite(condition_sigma) and condition_sigma >= 0):
            raise PipelineInputError(f"condition sigma must be a finite number >= 0; found {condition_sigma!r}")
        n = len(images)
        q, steps = self.sample_rate(n), self.num_steps(n)

        # 2. a private copy of the UNet with only the selected parameters trainable
        unet = copy.deepcopy(unet0)
        selection = select_trainable(unet, self.trainable, lora_rank=self.lora_rank)
        unet.train()
        params = [p for p in unet.parameters() if p.requires_grad]
        model = prepare_module(unet, self.grad_sample_mode, loss_reduction="mean")

        # 3. randomness: OS-seeded unless a test passes a seed
        if _seed is None:
            sample_gen, noise_gen, train_gen = _secure_generator(), _secure_generator(), _secure_generator()
        else:
            sample_gen, noise_gen, train_gen = (torch.Generator().manual_seed(_seed + i) for i in range(3))

        # 4. Opacus parts: Poisson sampler, DP optimizer, RDP accountant (cross-check only)
        base = (torch.optim.AdamW(params, lr=self.lr, weight_decay=0.0) if self.optimizer is Optimizer.ADAMW
                else torch.optim.SGD(params, lr=self.lr, momentum=0.9))
        optimizer = DPOptimizer(base, noise_multiplier=float(noise_multiplier), max_grad_norm=self.max_grad_norm,
                                expected_batch_size=self.batch_size, loss_reduction="mean", generator=noise_gen)
        opacus_accountant = RDPAccountant()
        account = opacus_accountant.get_optimizer_hook_fn(sample_rate=q)
        done = [0]

        def on_step(opt: DPOptimizer) -> None:
            account(opt)
            done[0] += 1

        optimizer.attach_step_hook(on_step)
        ema = None if self.ema_decay is None else EMAModel(params, decay=self.ema_decay, min_decay=self.ema_decay)
        sampler = UniformWithReplacementSampler(num_samples=n, sample_rate=q, generator=sample_gen, steps=steps)
        loader = torch.utils.data.DataLoader(
            list(range(n)), batch_sampler=sampler, collate_fn=lambda rows: torch.tensor(rows, dtype=torch.long))
        scheduler = _training_scheduler(self.decoder)
        num_t = int(scheduler.config.num_train_timesteps)

        # 5. DP-SGD (torch warns that Opacus's full backward hooks fire on outputs only: expected, silenced)
        try:
            with warnings.catch_warnings(), BatchMemoryManager(
                    data_loader=loader, max_physical_batch_size=self.physical_batch_size,
                    optimizer=optimizer) as physical:
                warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
                for idx in physical:
                    if len(idx) == 0:  # empty Poisson batch: zero per-sample grads, the step adds noise only
                        for p in params:
                            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)
                    else:
                        x0 = images[idx]
                        cond = self._conditions(embeddings[idx], float(condition_sigma), train_gen)
                        eps = torch.randn(x0.shape, generator=train_gen)
                        t = torch.randint(0, num_t, (len(idx),), generator=train_gen)
                        pred = model(scheduler.add_noise(x0, eps, t), t, encoder_hidden_states=cond[:, None, :],
                                     class_labels=cond).sample
                        F.mse_loss(pred, eps, reduction="none").mean(dim=(1, 2, 3)).mean().backward()
                    taken = done[0]
                    optimizer.step()  # a logical step (the hook counted it) has updated the parameters now
                    if ema is not None and done[0] > taken:
                        ema.step(params)
                    optimizer.zero_grad(set_to_none=True)
        finally:
            model._close()
        if ema is not None:
            ema.copy_to(params)
        unet.requires_grad_(False).eval()
        for p in unet.parameters():
            for attr in ("grad_sample", "summed_grad"):
                if hasattr(p, attr):
                    delattr(p, attr)
        state = {name: p.detach().clone().contiguous() for name, p in unet.named_parameters()
                 if name in set(selection.parameters)}
        decoder = type(self.decoder)(unet, self.decoder.scheduler)
        return TrainingOutcome(decoder=decoder, state=state, selection=selection, steps=done[0],
                               opacus_epsilon=_opacus_epsilon(opacus_accountant, delta, noise_multiplier, done[0]),
                               delta=float(delta))

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        from PIL import Image

        pil = [Image.fromarray(((x[0].clamp(-1, 1) + 1) * 127.5).round().byte().numpy(), mode="L").convert("RGB")
               for x in images]
        return torch.as_tensor(self.encoder.encode_images(pil), dtype=torch.float32)


def _opacus_epsilon(accountant, delta: float, noise_multiplier: float, steps: int) -> float:
    """Opacus RDP epsilon of the steps taken (inf without noise, 0 without steps); its order-range notes silenced."""
    if steps == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(accountant.get_epsilon(delta))


def _training_scheduler(decoder):
    """The DDPM noise schedule the decoder was trained with (from its sampling scheduler's config)."""
    from diffusers import DDPMScheduler

    cfg = decoder.scheduler.config
    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                         beta_start=cfg.beta_start, beta_end=cfg.beta_end, prediction_type="epsilon")

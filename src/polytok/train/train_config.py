"""The trainer's configuration (typed; from a dict with ``polytok.config.from_dict(TrainConfig, d)``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

DEFAULT_NO_DECAY = ["logit_scale", "pos_embed", "cls_token"]


@dataclass
class OptimConfig:
    """AdamW settings and the learning-rate schedule of one optimiser.

    ``no_decay`` lists name fragments whose parameters get no weight decay, in addition to every parameter
    with fewer than 2 dimensions (norm scales, biases, scalars such as ``logit_scale``).
    """

    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.02
    no_decay: list[str] = field(default_factory=lambda: list(DEFAULT_NO_DECAY))
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1  # final lr as a fraction of the peak (UniTok: 0.1)
    fused: bool = False  # fused AdamW kernel (CUDA)
    # parameter-name prefix -> multiplier of lr, e.g. {"text_tower.": 0.1} to fine-tune a pretrained tower
    # gently; the longest matching prefix wins, the schedule scales every group alike
    lr_scales: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must lie in [0, 1), got {self.betas}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must lie in [0, 1], got {self.min_lr_ratio}")
        bad = {k: v for k, v in self.lr_scales.items() if not (isinstance(v, (int, float)) and v > 0)}
        if bad:
            raise ValueError(f"lr_scales must be > 0 (freeze a part in the model config instead), got {bad}")


@dataclass
class TrainConfig:
    """Everything the engine needs; batch sizes are per process and per micro-step.

    The global batch of one optimiser step is ``batch_size * grad_accum_steps * world_size``.
    """

    max_steps: int = 1000
    # wall-clock limit of the training loop in minutes (None: none); training stops at whichever of
    # max_steps or max_minutes comes first, the lr schedule follows the larger of the two fractions used
    # (see ``schedule.py``) and the time spent is kept in checkpoints, so a resumed run continues the
    # same budget. A run stopped by the clock is not bit-reproducible in its length.
    max_minutes: float | None = None
    batch_size: int = 8
    grad_accum_steps: int = 1
    optim: OptimConfig = field(default_factory=OptimConfig)
    disc_optim: OptimConfig = field(default_factory=OptimConfig)
    grad_clip: float | None = 1.0  # max global L2 norm; None or 0 disables clipping
    disc_grad_clip: float | None = 1.0
    # auto: bf16 autocast where the hardware computes bf16 natively (a CUDA GPU with bf16, a CPU with
    # AVX512-BF16 / AMX / Arm BF16), fp32 elsewhere; the run records what it resolved to (run.yaml)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    strategy: Literal["auto", "none", "ddp", "fsdp"] = "auto"  # auto: ddp when world_size > 1
    fsdp_layers: list[str] = field(default_factory=list)  # class names sharded as their own FSDP unit
    # DDP: for parameters that some steps do not reach from the forward's outputs (e.g. quantizer
    # dropout). Off by default: it costs a graph walk per step, it cannot see an output the loss leaves
    # out (a zero loss weight: the objective freezes that branch instead), and it breaks parameters used
    # outside the forward (a regulariser reading the module's weights).
    find_unused_parameters: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    compile: bool = False  # torch.compile the model
    gradient_checkpointing: bool = False  # calls model.set_gradient_checkpointing(True)
    ema_decay: float | None = None  # e.g. 0.9999; None disables the weight EMA
    ema_start_step: int = 0
    seed: int = 0
    shuffle: bool = True
    num_workers: int = 0
    out_dir: str = "runs/default"
    resume: bool = False  # continue from the newest complete checkpoint in out_dir/checkpoints
    overwrite: bool = False  # replace the run already in out_dir (else a fresh run there is refused)
    save_every: int = 1000  # steps between checkpoints (the final step is always saved); 0: only final
    keep_last: int = 3  # complete checkpoints kept on disk (0 keeps all)
    log_every: int = 10
    log_stdout: bool = False  # also print the JSON lines on rank 0
    progress: bool = True  # tqdm bar on rank 0
    tensorboard: bool = True  # used only when the tensorboard package is installed
    last_layer: str | None = None  # parameter name handed to objectives for the adaptive GAN weight

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum_steps", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("save_every", "keep_last", "num_workers", "ema_start_step"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise ValueError(f"max_minutes must be > 0 or None (no time limit), got {self.max_minutes}")
        if self.resume and self.overwrite:
            raise ValueError(
                "resume (continue the run in out_dir) and overwrite (replace it) exclude each other"
            )
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in (0, 1), got {self.ema_decay}")
        for name in ("grad_clip", "disc_grad_clip"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0 or None, got {value}")

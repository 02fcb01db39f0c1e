"""Training and evaluation on tensors already on the device (torch only; no Optuna, no MLflow).

Batches are index slices of the whole dataset held on the device; the batch loop never waits for
the device (no `.item()` per step): the epoch's loss is summed on the device and read once.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from automl.config import TrainConfig
from automl.data import Dataset, Split
from automl.errors import UsageError
from automl.registries import OPTIMIZERS, resolve

EVAL_BATCH_SIZE = 4096
EpochCallback = Callable[[int, dict[str, float]], None]


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class FitResult:
    """Per-epoch metrics of one training run; `metrics` are those of the last epoch."""

    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def metrics(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA, then Apple MPS, then CPU; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device: unknown device {name!r} (expected auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device: {name} requested, but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device: {name} requested, but only {torch.cuda.device_count()} GPU(s) exist")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device: mps requested, but Apple MPS is not available on this machine")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device: unsupported device {name!r} (expected auto, cpu, cuda, cuda:N or mps)")
    return device


def _fast_kernels(name: str, device: torch.device) -> dict[str, bool]:
    """The fastest implementation the device has: fused Adam/AdamW (CPU and CUDA), otherwise the
    multi-tensor `foreach` one (CUDA); the per-tensor loop is the slow default on the CPU."""
    if name in ("adam", "adamw") and device.type in ("cpu", "cuda"):
        return {"fused": True}
    if device.type == "cuda":
        return {"foreach": True}
    return {}


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The configured optimizer (see `registries.OPTIMIZERS`) with its fastest kernels."""
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    info = OPTIMIZERS[cfg.optimizer]
    return resolve(info.cls)(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                             **info.torch_kwargs(cfg.optimizer_options()), **_fast_kernels(cfg.optimizer, device))


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimizer steps in one epoch of `fit` (a lone last sample is skipped)."""
    return -(-n // batch_size) - (1 if n > 1 and batch_size > 1 and n % batch_size == 1 else 0)


def make_schedule(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, n_train: int
) -> tuple[torch.optim.lr_scheduler.LRScheduler | None, bool]:
    """The learning-rate schedule and whether it steps after every batch (`one_cycle`: warm up to
    `lr`, then anneal, over all the epochs' batches) rather than after every epoch."""
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs), False
    if cfg.schedule == "step":
        milestones = sorted({max(1, cfg.epochs // 2), max(1, (3 * cfg.epochs) // 4)})
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1), False
    if cfg.schedule == "one_cycle":
        total = cfg.epochs * steps_per_epoch(n_train, cfg.batch_size)
        # the searched momentum / betas stay as sampled (OneCycleLR would cycle them)
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total,
                                                   cycle_momentum=False), True
    return None, False


def make_loss(
    cfg: TrainConfig, n_outputs: int, target_mean: float, target_std: float
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training loss. Regression losses compare standardised outputs and targets."""
    if cfg.loss == "cross_entropy" and n_outputs > 1:
        return F.cross_entropy
    if cfg.loss == "label_smoothing":
        return lambda out, y: F.cross_entropy(out, y, label_smoothing=cfg.label_smoothing)
    if n_outputs > 1:  # "mse" for classes: squared error against one-hot targets
        return lambda out, y: F.mse_loss(out.float(), F.one_hot(y, n_outputs).float())

    def standardised(fn: Callable[..., torch.Tensor]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        return lambda out, y: fn((out.float() - target_mean) / target_std, (y - target_mean) / target_std)

    if cfg.loss == "l1":
        return standardised(F.l1_loss)
    if cfg.loss == "huber":
        return standardised(lambda a, b: F.huber_loss(a, b, delta=cfg.huber_delta))
    return standardised(F.mse_loss)


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Per-sample random crop (zero padding `pad`) and horizontal flip, on the device."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=generator)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    out = padded[batch, channel, rows, cols]
    flip = torch.rand(n, device=x.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def _autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, amp: bool = False, batch_size: int = EVAL_BATCH_SIZE) -> torch.Tensor:
    """Model outputs (float32) for every row of `x`, in eval mode."""
    model.eval()
    device = x.device
    outputs = []
    with _autocast(device, amp):
        for start in range(0, len(x), batch_size):
            outputs.append(model(x[start:start + batch_size]).float())
    return torch.cat(outputs) if outputs else torch.empty(0, device=device)


def evaluate(model: nn.Module, split: Split, task: str, amp: bool = False) -> dict[str, float]:
    """Loss and scores on a split: cross-entropy and accuracy, or MSE, RMSE, MAE and R^2."""
    out = predict(model, split.x, amp=amp)
    if task == "classification":
        loss = F.cross_entropy(out, split.y)
        accuracy = (out.argmax(dim=1) == split.y).float().mean()
        values = torch.stack([loss, accuracy]).tolist()
        return {"loss": values[0], "accuracy": values[1]}
    y = split.y.float()
    err = out - y
    mse = (err**2).mean()
    variance = ((y - y.mean()) ** 2).mean()
    r2 = 1 - mse / variance if len(y) > 1 and float(variance) > 0 else torch.zeros(())
    mse_v, mae_v, r2_v = torch.stack([mse, err.abs().mean(), r2.to(mse)]).tolist()
    return {"loss": mse_v, "rmse": math.sqrt(mse_v), "mae": mae_v, "r2": r2_v}


def fit(
    model: nn.Module,
    data: Dataset,
    cfg: TrainConfig,
    on_epoch_end: EpochCallback | None = None,
) -> FitResult:
    """Train `model` on `data.train` (already on the device), evaluating `data.val` every epoch.

    `on_epoch_end(epoch, metrics)` sees `train_loss`, `val_*` and `epoch_seconds`; it may raise to
    stop training (pruning). A non-finite training loss raises `NonFiniteLoss`.
    """
    x, y = data.train.x, data.train.y
    device = x.device
    if device.type == "cuda" and x.dim() == 4:
        model = model.to(device, memory_format=torch.channels_last)
    else:
        model = model.to(device)
    optimizer = make_optimizer(model, cfg)
    schedule, per_batch = make_schedule(optimizer, cfg, len(y))
    loss_fn = make_loss(cfg, data.n_outputs, data.target_mean, data.target_std)
    forward = torch.compile(model) if cfg.compile else model
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    n = len(y)
    result = FitResult()
    for epoch in range(1, cfg.epochs + 1):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(n, device=device, generator=generator)
        total = torch.zeros((), device=device)
        seen = 0
        for start in range(0, n, cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            if len(idx) < 2 and start > 0 and cfg.batch_size > 1:
                break  # a lone last sample breaks batch norm and adds nothing
            xb, yb = x[idx], y[idx]
            if cfg.augment:
                xb = random_crop_flip(xb, generator)
            with _autocast(device, cfg.amp):
                loss = loss_fn(forward(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if per_batch:
                schedule.step()  # type: ignore[union-attr]
            total += loss.detach().float() * len(idx)
            seen += len(idx)
        if schedule is not None and not per_batch:
            schedule.step()
        train_loss = float(total) / seen  # the one host sync of the epoch
        if not math.isfinite(train_loss):
            raise NonFiniteLoss(f"training loss became {train_loss} in epoch {epoch}")
        metrics = {"train_loss": train_loss}
        metrics.update({f"val_{k}": v for k, v in evaluate(model, data.val, data.task, cfg.amp).items()})
        metrics["epoch_seconds"] = time.perf_counter() - started
        result.history.append(metrics)
        if on_epoch_end is not None:
            on_epoch_end(epoch, metrics)
    return result

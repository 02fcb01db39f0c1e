"""Training on real digits: it learns, it is reproducible, non-finite losses stop it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from automl.config import ModelConfig, TrainConfig
from automl.data import Split, load_dataset
from automl.errors import UsageError
from automl.model import build_model
from automl.train import (
    NonFiniteLoss,
    evaluate,
    fit,
    make_optimizer,
    make_schedule,
    random_crop_flip,
    resolve_device,
    steps_per_epoch,
)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def _model(data, widths=(64,)):
    torch.manual_seed(0)
    model = build_model(ModelConfig(family="mlp", input_shape=data.input_shape, n_outputs=data.n_outputs,
                                    widths=widths))
    model.set_statistics(data.input_mean, data.input_std)
    return model


def test_training_learns_digits(digits) -> None:
    seen = []
    result = fit(_model(digits), digits, TrainConfig(epochs=5, batch_size=32, lr=3e-3),
                 on_epoch_end=lambda epoch, metrics: seen.append(epoch))
    assert seen == [1, 2, 3, 4, 5]
    assert result.metrics["val_accuracy"] > 0.9
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert set(result.metrics) == {"train_loss", "val_loss", "val_accuracy", "epoch_seconds"}


@pytest.mark.parametrize("optimizer,loss,schedule", [
    ("sgd", "mse", "step"), ("adamw", "label_smoothing", "cosine"), ("rmsprop", "cross_entropy", "none"),
    ("adam", "cross_entropy", "one_cycle")])
def test_every_optimizer_and_loss_trains(digits, optimizer: str, loss: str, schedule: str) -> None:
    cfg = TrainConfig(epochs=3, batch_size=32, lr=1e-2 if optimizer == "sgd" else 2e-3, optimizer=optimizer,
                      momentum=0.9, nesterov=optimizer == "sgd", loss=loss, label_smoothing=0.1,
                      schedule=schedule)
    assert fit(_model(digits), digits, cfg).metrics["val_accuracy"] > 0.6


@pytest.mark.parametrize("n", [1, 2, 63, 64, 65, 66, 1000])
def test_one_cycle_spans_every_batch_of_every_epoch(n: int) -> None:
    """One-cycle steps per batch: it warms up to `lr`, ends near zero, and is never stepped past
    its last step (OneCycleLR raises then), whatever the last batch holds."""
    data = load_dataset("digits", seed=0)
    x, y = data.train.x[:n], data.train.y[:n]
    steps = sum(1 for start in range(0, n, 64) if not (n - start < 2 and start > 0))
    assert steps_per_epoch(n, 64) == steps
    cfg = TrainConfig(epochs=3, batch_size=64, lr=0.01, schedule="one_cycle")
    model = _model(data)
    optimizer = make_optimizer(model, cfg)
    schedule, per_batch = make_schedule(optimizer, cfg, n)
    assert per_batch
    lrs = []
    for _ in range(3 * steps):  # the rate each optimizer step uses
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert max(lrs) <= 0.01 * (1 + 1e-6)
    if 3 * steps >= 30:  # enough steps for the shape: warm up to the peak, then anneal
        assert lrs[0] < 0.001 and max(lrs) == pytest.approx(0.01, rel=0.05) and lrs[-1] < 0.001
    small = dataclasses.replace(data, train=Split(x, y))
    result = fit(_model(small), small, cfg)  # the whole schedule runs without stepping too far
    assert len(result.history) == 3


def test_same_seed_same_result(digits) -> None:
    cfg = TrainConfig(epochs=2, batch_size=64, seed=7)
    a = fit(_model(digits), digits, cfg).metrics
    b = fit(_model(digits), digits, cfg).metrics
    assert a["val_loss"] == b["val_loss"] and a["val_accuracy"] == b["val_accuracy"]


def test_non_finite_loss_stops_training(digits) -> None:
    cfg = TrainConfig(epochs=3, batch_size=32, optimizer="sgd", lr=1e6, loss="mse")
    with pytest.raises(NonFiniteLoss, match="training loss became"):
        fit(_model(digits, widths=(256, 256)), digits, cfg)


def test_evaluate_regression_scores() -> None:
    from automl.data import Split

    class Identity(torch.nn.Module):
        def forward(self, x):
            return x[:, 0]

    y = torch.tensor([1.0, 2.0, 3.0, 4.0])
    split = Split(torch.stack([y + 1.0], dim=1), y)
    scores = evaluate(Identity(), split, "regression")
    assert scores["rmse"] == pytest.approx(1.0) and scores["mae"] == pytest.approx(1.0)
    assert scores["r2"] == pytest.approx(1 - 1.0 / 1.25)


def test_random_crop_flip_keeps_shape_and_content() -> None:
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    out = random_crop_flip(x, torch.Generator().manual_seed(0), pad=2)
    assert out.shape == x.shape and out.dtype == x.dtype
    # every output pixel is zero padding or a pixel of the same sample
    for i in range(2):
        values = set(out[i].flatten().tolist()) - {0.0}
        assert values <= set(x[i].flatten().tolist())


def test_resolve_device() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(UsageError, match="unknown device 'tpu9'"):
        resolve_device("tpu9")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_requested_without_cuda() -> None:
    with pytest.raises(UsageError, match="CUDA is not available"):
        resolve_device("cuda")


@pytest.mark.slow
def test_torch_compile_option_trains(digits) -> None:
    """`training.compile: true` (off by default: compiling costs more than short trials save)."""
    result = fit(_model(digits), digits, TrainConfig(epochs=2, batch_size=64, lr=3e-3, compile=True))
    assert result.metrics["val_accuracy"] > 0.8


def test_one_cycle_keeps_the_searched_momentum_and_batch_size_one_trains_every_sample(monkeypatch) -> None:
    """One-cycle cycles the learning rate only (momentum / beta1 stay as sampled); with a batch
    size of 1 every sample is a step, as `steps_per_epoch` counts."""
    data = load_dataset("digits", seed=0)
    small = dataclasses.replace(data, train=Split(data.train.x[:40], data.train.y[:40]))
    for optimizer, key, sampled in (("sgd", "momentum", 0.5), ("adam", "betas", (0.6, 0.999))):
        cfg = TrainConfig(epochs=2, batch_size=8, lr=0.01, optimizer=optimizer, momentum=0.5, beta1=0.6,
                          schedule="one_cycle")
        model = _model(small)
        opt = make_optimizer(model, cfg)
        schedule, _ = make_schedule(opt, cfg, 40)
        for _ in range(2 * steps_per_epoch(40, 8)):
            opt.step()
            schedule.step()
        assert opt.param_groups[0][key] == pytest.approx(sampled)
    assert steps_per_epoch(40, 1) == 40
    import automl.train as train

    batches = []
    make_loss = train.make_loss

    def counting(*args, **kwargs):
        loss = make_loss(*args, **kwargs)
        return lambda out, y: batches.append(len(y)) or loss(out, y)

    monkeypatch.setattr(train, "make_loss", counting)
    cfg = TrainConfig(epochs=1, batch_size=1, lr=0.01, schedule="one_cycle")
    fit(_model(small), small, cfg)
    assert batches == [1] * 40  # every sample, and OneCycleLR not stepped past its 40 steps

"""Networks built from configs: shapes, parameter counts, normalisation buffers."""

from __future__ import annotations

import pytest
import torch

from automl.config import ModelConfig
from automl.model import build_model, count_parameters


def test_mlp_shape_and_parameter_count() -> None:
    config = ModelConfig(family="mlp", input_shape=(1, 8, 8), n_outputs=10, widths=(32, 16))
    model = build_model(config)
    assert model(torch.zeros(5, 1, 8, 8, dtype=torch.uint8)).shape == (5, 10)
    assert count_parameters(model) == (64 * 32 + 32) + (32 * 16 + 16) + (16 * 10 + 10)


def test_batch_norm_and_dropout_layers() -> None:
    config = ModelConfig(family="mlp", input_shape=(13,), n_outputs=3, widths=(8,), batch_norm=True,
                         dropout=0.2, activation="gelu")
    model = build_model(config)
    kinds = [type(m).__name__ for m in model.head]
    assert kinds == ["Flatten", "Linear", "BatchNorm1d", "GELU", "Dropout", "Linear"]
    # batch norm replaces the bias of the layer before it
    assert count_parameters(model) == 13 * 8 + 2 * 8 + 8 * 3 + 3


@pytest.mark.parametrize("shape,channels,kernel", [((1, 28, 28), (16, 32), 3), ((3, 32, 32), (8, 8, 8), 5),
                                                   ((1, 8, 8), (4, 4, 4, 4), 3)])
def test_cnn_shapes(shape: tuple[int, int, int], channels: tuple[int, ...], kernel: int) -> None:
    config = ModelConfig(family="cnn", input_shape=shape, n_outputs=10, channels=channels,
                         kernel_size=kernel, widths=(32,), batch_norm=True)
    model = build_model(config).eval()
    assert model(torch.zeros(2, *shape)).shape == (2, 10)
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == list(channels)
    assert all(c.kernel_size == (kernel, kernel) for c in convs)


def test_cnn_parameter_count() -> None:
    config = ModelConfig(family="cnn", input_shape=(1, 28, 28), n_outputs=10, channels=(8,), kernel_size=3)
    model = build_model(config)
    # conv 1->8 (3x3 + bias), pool to 14x14, then linear 8*14*14 -> 10
    assert count_parameters(model) == (8 * 9 + 8) + (8 * 14 * 14 * 10 + 10)


def test_regression_outputs_in_target_units() -> None:
    config = ModelConfig(family="mlp", input_shape=(3,), n_outputs=1, task="regression")
    model = build_model(config)
    with torch.no_grad():
        model.head[-1].weight.zero_()
        model.head[-1].bias.zero_()
    model.set_statistics([0.0] * 3, [1.0] * 3, target_mean=5.0, target_std=2.0)
    assert torch.allclose(model(torch.randn(4, 3)), torch.full((4,), 5.0))


def test_statistics_live_in_the_state_dict() -> None:
    config = ModelConfig(family="mlp", input_shape=(2,), n_outputs=2)
    model = build_model(config)
    model.set_statistics([1.0, 2.0], [3.0, 4.0])
    state = model.state_dict()
    assert state["normalize.mean"].tolist() == [[1.0, 2.0]]
    rebuilt = build_model(config)
    rebuilt.load_state_dict(state, strict=True)
    x = torch.randn(3, 2)
    assert torch.equal(rebuilt(x), model(x))


def test_config_json_round_trip() -> None:
    config = ModelConfig(family="cnn", input_shape=(3, 32, 32), n_outputs=10, channels=(8, 16), widths=(64,))
    assert ModelConfig.from_json(config.to_json()) == config


def test_invalid_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="activation"):
        ModelConfig(family="mlp", input_shape=(2,), n_outputs=2, activation="swish")

"""User networks for the tutorial spaces: plain PyTorch, nothing from automl.

`MLP` is written the way PyTorch introductions write one -- the layer sizes go to the constructor,
the layers are built in `__init__` and used in `forward`. automl adds only `input_shape` and
`n_outputs` (it passes them because the signature names them) and the keyword arguments of the
space's `model.params`.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


class MLP(nn.Module):
    """A multilayer perceptron: flatten -> (Linear -> ReLU) per hidden size -> Linear."""

    def __init__(self, input_shape: Sequence[int], n_outputs: int, hidden_sizes: Sequence[int] = (128, 64)) -> None:
        super().__init__()
        in_features = 1
        for dim in input_shape:
            in_features *= dim
        layers: list[nn.Module] = [nn.Flatten()]
        for size in hidden_sizes:
            layers += [nn.Linear(in_features, size), nn.ReLU()]
            in_features = size
        layers.append(nn.Linear(in_features, n_outputs))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)

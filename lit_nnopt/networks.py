"""The networks: the tutorial's MLP and a small CNN, each chosen from YAML by ``class_path``."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from typing_extensions import override

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU, "elu": nn.ELU}


def glorot_uniform_(module: nn.Module) -> None:
    """Keras' default initialisation: glorot-uniform kernels and zero biases."""
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class MLP(nn.Module):
    """Flatten, then per hidden size: Dense, optional batch norm, activation, dropout; then Dense 10.

    Args:
        hidden_sizes: units of each hidden layer; the tutorial has one of 128.
        activation: relu, tanh, sigmoid, gelu or elu.
        dropout: dropout rate after each hidden activation (Keras ``Dropout(rate)``).
        batch_norm: batch normalisation between each hidden Dense and its activation.
        init: ``pytorch`` (PyTorch's default) or ``keras`` (glorot-uniform weights, zero biases).
        l2: Keras ``kernel_regularizer=l2(l2)`` on each hidden layer's weight: ``l2 * sum(w ** 2)``
            is added to the loss. Biases, batch-norm parameters and the output layer are exempt.
        num_classes: outputs.
    """

    def __init__(
        self,
        hidden_sizes: list[int] = [128],  # noqa: B006 - LightningCLI shows the default in --help
        activation: Literal["relu", "tanh", "sigmoid", "gelu", "elu"] = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        init: Literal["pytorch", "keras"] = "pytorch",
        l2: float = 0.0,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"`activation` can be {', '.join(_ACTIVATIONS)}, got {activation!r}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(
                f"`dropout` must lie in [0, 1), got {dropout}: it is the fraction of units dropped in training, "
                "and 0 turns dropout off."
            )
        if init not in ("pytorch", "keras"):
            raise ValueError(f"`init` can be pytorch, keras, got {init!r}.")
        if l2 < 0:
            raise ValueError(f"`l2` must be >= 0, got {l2}.")
        self.init_args = {
            "hidden_sizes": list(hidden_sizes),
            "activation": activation,
            "dropout": dropout,
            "batch_norm": batch_norm,
            "init": init,
            "l2": l2,
            "num_classes": num_classes,
        }
        layers: list[nn.Module] = [nn.Flatten()]
        self.regularized: list[nn.Parameter] = []
        width = 28 * 28
        for size in hidden_sizes:
            dense = nn.Linear(width, size)
            self.regularized.append(dense.weight)
            layers.append(dense)
            if batch_norm:
                layers.append(nn.BatchNorm1d(size))
            layers.append(_ACTIVATIONS[activation]())
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)
        self.l2 = l2
        if init == "keras":
            glorot_uniform_(self)

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def regularization_loss(self) -> torch.Tensor | float:
        """Keras' L2 penalty over the regularized kernels (0 when ``l2`` is 0)."""
        if not self.l2:
            return 0.0
        return self.l2 * sum(weight.pow(2).sum() for weight in self.regularized)


class CNN(nn.Module):
    """Two blocks of two 3x3 convolutions (batch norm, ReLU) with max pooling, then a dense head.

    Args:
        channels: output channels of the first and second block.
        hidden: units of the dense layer before the output.
        dropout: dropout before the output layer.
        num_classes: outputs.
    """

    def __init__(
        self,
        channels: list[int] = [32, 64],  # noqa: B006 - LightningCLI shows the default in --help
        hidden: int = 128,
        dropout: float = 0.25,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        if len(channels) != 2:
            raise ValueError(f"`channels` needs two values (one per block), got {channels}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(
                f"`dropout` must lie in [0, 1), got {dropout}: it is the fraction of units dropped in training, "
                "and 0 turns dropout off."
            )
        self.init_args = {"channels": list(channels), "hidden": hidden, "dropout": dropout, "num_classes": num_classes}
        blocks: list[nn.Module] = []
        width = 1
        for out in channels:
            blocks += [
                nn.Conv2d(width, out, 3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(),
                nn.Conv2d(out, out, 3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            width = out
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(width * 7 * 7, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

"""Fully connected models: logistic regression and the FedAvg paper's two-hidden-layer MLP."""

from __future__ import annotations

import math

import torch
from torch import nn


class LogisticRegression(nn.Module):
    """Multinomial logistic regression: one linear layer producing logits (train with cross-entropy)."""

    def __init__(self, input_shape: tuple[int, ...], output_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(math.prod(input_shape), output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits for a batch of samples of any shape."""
        return self.linear(x.flatten(1))


class MLP(nn.Module):
    """The "2NN" of McMahan et al. (2017): two hidden layers of 200 ReLU units."""

    def __init__(self, input_shape: tuple[int, ...], output_dim: int, hidden: int = 200) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Flatten(),
            nn.Linear(math.prod(input_shape), hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, output_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits."""
        return self.layers(x)

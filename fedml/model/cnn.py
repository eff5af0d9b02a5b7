"""The CNN of McMahan et al. (2017) for 28x28 images: two 5x5 conv layers (32, 64), max-pooling, fc 512."""

from __future__ import annotations

import torch
from torch import nn


class CNN(nn.Module):
    """Conv(5x5, 32) - pool - Conv(5x5, 64) - pool - FC 512 - FC output_dim, ReLU throughout."""

    def __init__(self, input_shape: tuple[int, ...], output_dim: int) -> None:
        super().__init__()
        channels, height, width = input_shape if len(input_shape) == 3 else (1, *input_shape)
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(64 * (height // 4) * (width // 4), 512),
            nn.ReLU(),
            nn.Linear(512, output_dim),
        )
        self._image_shape = (channels, height, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits for images shaped (N, C, H, W) or flattened (N, C*H*W)."""
        return self.classifier(self.features(x.reshape(-1, *self._image_shape)))

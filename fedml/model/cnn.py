"""The CNNs of McMahan et al. (2017): the MNIST/FEMNIST model and the CIFAR model, chosen by input shape."""

from __future__ import annotations

import torch
from torch import nn

from fedml.errors import ConfigError


class CNN(nn.Module):
    """Conv(5x5, 32) - pool - Conv(5x5, 64) - pool - FC 512 - FC output_dim, ReLU throughout.

    The FedAvg paper's model for 28x28 digits; with ``output_dim=62`` it is the same model for FEMNIST
    (LEAF's reference FEMNIST CNN has the same layers with 2048 hidden units instead of 512).
    """

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


class CifarCNN(nn.Module):
    """Conv(5x5, 64) - pool - Conv(5x5, 64) - pool - FC 384 - FC 192 - FC output_dim, ReLU throughout.

    The FedAvg paper's CIFAR-10 model is the TensorFlow tutorial's CNN (two convolutions, two fully
    connected layers and a linear layer, about 10^6 parameters). This is its usual PyTorch form for
    32x32 inputs: unpadded convolutions and 2x2 max-pooling, without the tutorial's local response
    normalisation; 797,962 parameters for 10 classes. Inputs must be at least 16x16.
    """

    def __init__(self, input_shape: tuple[int, ...], output_dim: int) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(channels, 64, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 64, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        side_h, side_w = ((height - 4) // 2 - 4) // 2, ((width - 4) // 2 - 4) // 2
        if side_h < 1 or side_w < 1:
            raise ConfigError(
                f"model_args.model: cnn needs colour images of at least 16x16, got {input_shape}"
            )
        self.classifier = nn.Sequential(
            nn.Linear(64 * side_h * side_w, 384),
            nn.ReLU(),
            nn.Linear(384, 192),
            nn.ReLU(),
            nn.Linear(192, output_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits for images shaped (N, C, H, W)."""
        return self.classifier(self.features(x))


def cnn(input_shape: tuple[int, ...], output_dim: int) -> nn.Module:
    """Return the FedAvg paper's CNN for this input: ``CifarCNN`` for colour images, ``CNN`` otherwise.

    Colour means a (3, H, W) input (CIFAR-10/100); grey images ((1, H, W), (H, W) or MNIST's and
    FEMNIST's 28x28) get ``CNN``.

    Examples
    --------
    >>> type(cnn((3, 32, 32), 10)).__name__, type(cnn((1, 28, 28), 62)).__name__
    ('CifarCNN', 'CNN')

    """
    if len(input_shape) == 3 and input_shape[0] == 3:
        return CifarCNN(input_shape, output_dim)
    return CNN(input_shape, output_dim)

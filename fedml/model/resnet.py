"""ResNets with GroupNorm: the CIFAR ResNet-20 of He et al. (2016) and ResNet-18 adapted to 32x32 inputs.

Both use GroupNorm where the papers use BatchNorm (see ``fedml.model.norm`` for why), so they have no
buffers, average cleanly across non-IID clients and train in the vectorized engine.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from fedml.model.norm import group_norm


class _PadShortcut(nn.Module):
    """He et al.'s option A: subsample by ``stride`` and zero-pad the new channels (no parameters)."""

    def __init__(self, extra_channels: int, stride: int) -> None:
        super().__init__()
        self.extra = extra_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with GroupNorm, added to a shortcut, then ReLU.

    Parameters
    ----------
    in_channels, out_channels
        Channels in and out of the block.
    stride
        Stride of the first convolution (2 halves the feature map).
    projection
        How a shortcut that changes shape is formed: a 1x1 convolution with GroupNorm (``True``, option
        B, ResNet-18) or subsampling and zero channels (``False``, option A, the CIFAR ResNets).

    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, projection: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = group_norm(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            if projection:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                    group_norm(out_channels),
                )
            else:
                self.shortcut = _PadShortcut(out_channels - in_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the block's output."""
        out = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """A 3x3 stem, stages of ``BasicBlock``s, global average pooling and a linear layer.

    The first block of every stage after the first has stride 2, halving the feature map.

    Parameters
    ----------
    input_shape
        One image, (C, H, W); (H, W) means one channel.
    output_dim
        Number of classes.
    widths
        Channels of each stage.
    depths
        Blocks in each stage.
    projection
        Shortcut kind of the blocks that change shape (see ``BasicBlock``).

    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        output_dim: int,
        widths: tuple[int, ...],
        depths: tuple[int, ...],
        projection: bool,
    ) -> None:
        super().__init__()
        channels = input_shape[0] if len(input_shape) == 3 else 1
        self._image_shape = (channels, *input_shape[-2:])
        self.stem = nn.Sequential(
            nn.Conv2d(channels, widths[0], 3, padding=1, bias=False), group_norm(widths[0]), nn.ReLU()
        )
        blocks: list[nn.Module] = []
        in_channels = widths[0]
        for stage, (width, depth) in enumerate(zip(widths, depths, strict=True)):
            for i in range(depth):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(in_channels, width, stride, projection))
                in_channels = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(in_channels, output_dim)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits for images shaped (N, C, H, W) or flattened (N, C*H*W)."""
        out = self.blocks(self.stem(x.reshape(-1, *self._image_shape)))
        return self.fc(out.mean(dim=(2, 3)))


def resnet20(input_shape: tuple[int, ...], output_dim: int) -> ResNet:
    """Return He et al.'s CIFAR ResNet-20 with GroupNorm: 3 stages of 3 blocks, 16/32/64 channels.

    Shortcuts that change shape are option A (parameter-free), as in the paper, so the model has the
    paper's 0.27M parameters (269,722 for 10 classes).

    Examples
    --------
    >>> model = resnet20((3, 32, 32), 10)
    >>> model(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])

    """
    return ResNet(input_shape, output_dim, widths=(16, 32, 64), depths=(3, 3, 3), projection=False)


def resnet18(input_shape: tuple[int, ...], output_dim: int) -> ResNet:
    """Return ResNet-18 with GroupNorm for small images: 4 stages of 2 blocks, 64 to 512 channels.

    The ImageNet model's 7x7 stride-2 stem and max-pooling are replaced by one 3x3 stride-1
    convolution, so a 32x32 image keeps a 4x4 map in the last stage; shortcuts that change shape are
    1x1 projections (11,173,962 parameters for 10 classes).
    """
    return ResNet(input_shape, output_dim, widths=(64, 128, 256, 512), depths=(2, 2, 2, 2), projection=True)

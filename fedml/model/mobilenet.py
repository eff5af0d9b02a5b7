"""MobileNetV2 from torchvision, with GroupNorm instead of BatchNorm and a stem for small images."""

from __future__ import annotations

from torch import nn

from fedml.model.norm import group_norm

SMALL_INPUT_SETTING = [
    # expansion t, channels c, blocks n, stride s (torchvision's table, second row's stride 2 -> 1)
    [1, 16, 1, 1],
    [6, 24, 2, 1],
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
]
"""Inverted-residual blocks: torchvision's ImageNet table with the 24-channel stage at stride 1."""


def mobilenet_v2(input_shape: tuple[int, ...], output_dim: int) -> nn.Module:
    """Return ``torchvision.models.mobilenet_v2(num_classes=output_dim)`` adapted to federated training.

    - Every BatchNorm is a GroupNorm (``fedml.model.norm``): no running statistics to average, and the
      model trains in the vectorized engine.
    - For 32x32 inputs the stem convolution has stride 1 (not 2) and takes ``input_shape[0]``
      channels, and the 24-channel stage has stride 1 (not 2): the total stride is 8 instead of 32, so
      the last feature map of a CIFAR image is 4x4 rather than 1x1.
    - The classifier's dropout is removed (``Identity`` in its place, so parameter names stay
      torchvision's): training is deterministic, as the vectorized engine needs.

    The parameter count is torchvision's: 2,236,682 for 10 classes.

    Examples
    --------
    >>> model = mobilenet_v2((3, 32, 32), 10)
    >>> sum(p.numel() for p in model.parameters()), len(list(model.buffers()))
    (2236682, 0)

    """
    from torchvision.models import mobilenet_v2 as torchvision_mobilenet_v2

    channels = input_shape[0] if len(input_shape) == 3 else 1
    model = torchvision_mobilenet_v2(
        num_classes=output_dim,
        inverted_residual_setting=SMALL_INPUT_SETTING,
        norm_layer=group_norm,
        dropout=0.0,
    )
    stem = model.features[0]
    old = stem[0]
    stem[0] = nn.Conv2d(channels, old.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(stem[0].weight, mode="fan_out")
    model.classifier[0] = nn.Identity()
    return model

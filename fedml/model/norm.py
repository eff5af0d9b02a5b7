"""The normalisation layer of the convolutional models: GroupNorm, because BatchNorm breaks under averaging.

BatchNorm keeps running means and variances as buffers that every forward pass in training updates in
place. In federated training each client's buffers describe its own (non-IID) data, and averaging them
gives statistics of no client's features, so the global model evaluates with mismatched normalisation
(Hsieh et al., 2020, "The Non-IID Data Quagmire of Decentralized Machine Learning"). The buffers also
keep a model out of the vectorized engine, which stacks trainable parameters only. GroupNorm
normalises each sample over groups of channels, has only the learnable per-channel scale and shift
(the same parameter count as BatchNorm's affine part), no buffers, and computes the same thing in
training and evaluation.
"""

from __future__ import annotations

from torch import nn

GROUPS = 2
"""Channel groups per GroupNorm layer, as in Hsieh et al. (2020), where two groups worked best."""


def group_norm(channels: int, groups: int = GROUPS) -> nn.GroupNorm:
    """Return a GroupNorm over ``channels`` with ``groups`` groups (fewer if ``channels`` is not divisible).

    Examples
    --------
    >>> group_norm(16).num_groups, group_norm(24).num_groups, group_norm(3).num_groups
    (2, 2, 1)

    """
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels)

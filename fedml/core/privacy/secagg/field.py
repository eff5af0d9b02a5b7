"""The ring that masked vectors live in, and fixed-point quantization of float vectors into it.

Representation
--------------
Masked inputs, masks and their sums are elements of the ring ``Z_R`` with ``R = 2**64``, as Bonawitz et
al. (CCS 2017) use ``Z_R`` for the inputs: numpy ``uint64`` arithmetic wraps modulo ``2**64`` by
definition, so adding and subtracting masks is exact, vectorized and cannot overflow, and a ChaCha20
keystream viewed as ``uint64`` is exactly uniform over the ring (no modular bias, no rejection). On the
wire a vector travels as an ``int64`` tensor holding the same 64 bits. Shamir shares use a separate
prime field (``shamir.py``).

Quantization
------------
A client clips each coordinate of its update ``x`` to ``[-c, c]`` (``c = sa_clip_range``), multiplies by
its weight ``w`` and rounds ``w * x / delta`` to the nearest integer, with the step
``delta = c / (2**(b - 1) - 1)`` for ``b = sa_bit_width``: an unweighted coordinate becomes a signed
``b``-bit integer. The weight travels as one more ring element, ``round(w * 2**WEIGHT_FRACTION_BITS)``.
The server reads the unmasked ring sum as a signed 64-bit integer and multiplies by ``delta``. For
inputs inside the clip range the dequantized sum over ``n`` clients satisfies, per coordinate::

    |dequantized sum - sum_i w_i x_i| <= n * delta / 2       (sum_bound)

(plus float64 rounding, relative ``2**-52``), and the total weight is off by at most
``n * 2**-(WEIGHT_FRACTION_BITS + 1)`` (exact for integer weights such as sample counts). The sum cannot
wrap around the ring while ``n * (max_weight * (2**(b - 1) - 1) + 1) < 2**63``, which ``check_capacity``
enforces.
"""

from __future__ import annotations

import numpy as np
import torch

from fedml.errors import SecAggError

RING_BITS = 64
"""Masked vectors are elements of ``Z_(2**RING_BITS)``."""
WEIGHT_FRACTION_BITS = 16
"""A weight travels as a fixed-point number with this many fractional bits."""
_HALF_RING = 1 << (RING_BITS - 1)


def step(clip_range: float, bit_width: int) -> float:
    """Return the quantization step ``delta = clip_range / (2**(bit_width - 1) - 1)``.

    Examples
    --------
    >>> step(1.0, 2)
    1.0

    """
    return clip_range / ((1 << (bit_width - 1)) - 1)


def sum_bound(clients: int, clip_range: float, bit_width: int) -> float:
    """Return the largest error, per coordinate, of a dequantized sum over ``clients`` inputs.

    Holds for inputs inside ``[-clip_range, clip_range]``, whatever the weights: each client's rounding
    is off by at most half a step.
    """
    return clients * step(clip_range, bit_width) / 2


def check_capacity(clients: int, bit_width: int, max_weight: float) -> None:
    """Refuse a round whose sum could wrap around the ring.

    Raises
    ------
    SecAggError
        If ``clients`` inputs of weight up to ``max_weight`` at ``bit_width`` bits can exceed ``2**63``
        in magnitude, or their weights can.

    """
    largest = max_weight * ((1 << (bit_width - 1)) - 1) + 1
    weights = max_weight * (1 << WEIGHT_FRACTION_BITS) + 1
    if clients * max(largest, weights) >= _HALF_RING:
        raise SecAggError(
            f"secure aggregation: {clients} clients at sa_bit_width={bit_width} with weights up to "
            f"sa_max_weight={max_weight:g} can overflow the 2**{RING_BITS} ring; lower the bit width or "
            "the largest weight"
        )


def quantize(
    vector: torch.Tensor, weight: float, clip_range: float, bit_width: int, max_weight: float
) -> np.ndarray:
    """Return ``weight * clip(vector)`` in fixed point, with the weight appended, as ring elements.

    Parameters
    ----------
    vector
        A 1-D float tensor (the client's flat update).
    weight
        The client's weight (its sample count, say); ``0 <= weight <= max_weight``.
    clip_range, bit_width
        ``sa_clip_range`` and ``sa_bit_width``.
    max_weight
        ``sa_max_weight``: the largest weight the ring was sized for.

    Returns
    -------
    numpy.ndarray
        ``uint64`` of length ``len(vector) + 1``.

    Raises
    ------
    SecAggError
        If the vector is not 1-D or not finite, or the weight is negative, above ``max_weight`` or not
        finite.

    """
    if vector.dim() != 1:
        raise SecAggError(f"secure aggregation works on a flat vector, got shape {tuple(vector.shape)}")
    if not np.isfinite(weight) or not 0 <= weight <= max_weight:
        raise SecAggError(
            f"secure aggregation: weight {weight!r} is outside [0, sa_max_weight={max_weight:g}]"
        )
    values = vector.detach().to("cpu", torch.float64).numpy()
    if not np.isfinite(values).all():
        raise SecAggError("secure aggregation: the update has NaN or infinite values")
    scaled = np.rint(np.clip(values, -clip_range, clip_range) * (weight / step(clip_range, bit_width)))
    out = np.empty(len(values) + 1, dtype=np.int64)
    out[:-1] = scaled
    out[-1] = round(weight * (1 << WEIGHT_FRACTION_BITS))
    return out.view(np.uint64)


def dequantize(total: np.ndarray, clip_range: float, bit_width: int) -> tuple[torch.Tensor, float]:
    """Return the float64 weighted sum and the total weight encoded in the ring sum ``total``.

    Examples
    --------
    >>> import torch
    >>> a = quantize(torch.tensor([0.5, -1.0]), 2.0, 1.0, 16, 10.0)
    >>> b = quantize(torch.tensor([0.25, 1.0]), 1.0, 1.0, 16, 10.0)
    >>> vector, weight = dequantize(a + b, 1.0, 16)
    >>> [round(v, 4) for v in vector.tolist()], weight
    ([1.25, -1.0], 3.0)

    """
    signed = np.asarray(total, dtype=np.uint64).view(np.int64)
    vector = torch.from_numpy(signed[:-1].astype(np.float64) * step(clip_range, bit_width))
    return vector, float(signed[-1]) / (1 << WEIGHT_FRACTION_BITS)


def to_tensor(elements: np.ndarray) -> torch.Tensor:
    """Return ring elements (``uint64``) as the ``int64`` tensor with the same bits, for the wire."""
    return torch.from_numpy(np.ascontiguousarray(elements, dtype=np.uint64).view(np.int64))


def from_tensor(tensor: torch.Tensor) -> np.ndarray:
    """Return the ring elements (``uint64``) that an ``int64`` tensor from the wire holds."""
    return tensor.detach().to("cpu").contiguous().numpy().view(np.uint64)

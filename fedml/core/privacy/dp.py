"""DP mechanisms on model updates: a client's delta from the global model, clipped and noised.

Pure functions over states (name -> tensor). Only floating-point tensors take part: integer buffers
(step counters) are neither clipped nor noised. Noise comes from the ``torch.Generator`` passed in, so
the caller decides whether a run is reproducible (simulation, seeded) or not (real deployments, where
any party knowing a seed could subtract the noise: ``noise_generator``).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping

import torch

from fedml.core.sampling import client_generator

State = Mapping[str, torch.Tensor]

LOCAL_NOISE_STREAM = 0xD1FF_0001
"""Tag mixed into the seed of local DP noise (per round and client)."""

CENTRAL_NOISE_STREAM = 0xD1FF_0002
"""Tag mixed into the seed of central DP noise (per round)."""


def delta_of(state: State, global_state: State) -> dict[str, torch.Tensor]:
    """Return ``state - global_state`` for every floating-point tensor."""
    return {k: state[k] - global_state[k] for k, v in state.items() if v.dtype.is_floating_point}


def global_norm(delta: State) -> float:
    """Return the L2 norm of all tensors of ``delta`` together (float64 accumulation).

    >>> global_norm({"a": torch.tensor([3.0]), "b": torch.tensor([4.0])})
    5.0
    """
    if not delta:
        return 0.0
    squares = torch.stack([t.double().pow(2).sum() for t in delta.values()])
    return float(squares.sum().sqrt())


def clip_factor(norm: float, clipping_norm: float) -> float:
    """Return the factor that brings a delta of ``norm`` within ``clipping_norm`` (1.0 when it is)."""
    return 1.0 if norm <= clipping_norm else clipping_norm / norm


def with_delta(state: State, global_state: State, delta: State) -> dict[str, torch.Tensor]:
    """Return ``global_state + delta`` for the tensors in ``delta``; the rest of ``state`` as it is."""
    return {k: (global_state[k] + delta[k]).to(v.dtype) if k in delta else v for k, v in state.items()}


def clipped(state: State, global_state: State, clipping_norm: float) -> tuple[dict[str, torch.Tensor], float]:
    """Return ``state`` with its delta from ``global_state`` clipped to ``clipping_norm``, and its norm.

    >>> g = {"w": torch.zeros(2)}
    >>> s, norm = clipped({"w": torch.tensor([3.0, 4.0])}, g, 1.0)
    >>> s["w"].tolist(), norm
    ([0.6000000238418579, 0.800000011920929], 5.0)

    """
    delta = delta_of(state, global_state)
    norm = global_norm(delta)
    factor = clip_factor(norm, clipping_norm)
    if factor == 1.0:
        return dict(state), norm
    return with_delta(state, global_state, {k: v * factor for k, v in delta.items()}), norm


def add_gaussian(state: State, std: float, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Return ``state`` plus independent Gaussian noise of ``std`` on every floating-point tensor.

    Noise is drawn on the CPU from ``generator`` in the order of the state's keys, then moved to each
    tensor's device, so the same generator gives the same noise on every device and backend.
    """
    if std == 0:
        return dict(state)
    noisy = {}
    for name, tensor in state.items():
        if not tensor.dtype.is_floating_point:
            noisy[name] = tensor
            continue
        noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float32) * std
        noisy[name] = tensor + noise.to(device=tensor.device, dtype=tensor.dtype)
    return noisy


def noise_generator(
    seeded: bool, seed: int, stream: int, round_idx: int, client: int = -1
) -> torch.Generator:
    """Return the generator of one release's noise.

    ``seeded`` (simulation): derived from ``(seed ^ stream, round, client)``, the same on every backend.
    Otherwise from the operating system's entropy: in a deployment the seed is in every party's config.
    """
    if seeded:
        return client_generator(seed ^ stream, round_idx, client)
    generator = torch.Generator()
    generator.manual_seed(secrets.randbits(63))
    return generator


def noise_for_quantile_query(noise_multiplier: float, count_stddev: float) -> float:
    """Return the update noise multiplier that composes with the clipped-count noise to ``noise_multiplier``.

    Adaptive clipping releases a noised count of unclipped clients each round besides the noised mean;
    Andrew et al. (2021, Theorem 1) show the pair is one Gaussian mechanism of multiplier
    ``(z_update**-2 + (2 * count_stddev)**-2) ** -0.5``. Returns ``z_update``, or ``nan`` when the count
    noise alone is too small for ``noise_multiplier`` (``2 * count_stddev <= noise_multiplier``).

    >>> round(noise_for_quantile_query(1.0, 5.0), 4)
    1.005
    """
    if noise_multiplier == 0:
        return 0.0
    rest = noise_multiplier**-2 - (2 * count_stddev) ** -2
    return rest**-0.5 if rest > 0 else math.nan

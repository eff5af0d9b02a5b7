"""Privacy accounting: (epsilon, delta) of composed subsampled Gaussian mechanisms, through Opacus.

fedml does not write its own accountant: ``epsilon`` and ``calibrate_noise`` hand the history of
mechanisms to Opacus's RDP accountant (Mironov 2017, the default) or its PRV accountant (Gopi et al.
2021, tighter for many steps). A mechanism is ``(noise_multiplier, sample_rate, steps)``: ``steps``
releases of a Gaussian mechanism with noise ``noise_multiplier`` times the sensitivity, each over a
Poisson sample of rate ``sample_rate``.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from collections.abc import Sequence
from typing import Any, Literal, get_args

import numpy as np

from fedml.errors import PrivacyError

AccountantName = Literal["rdp", "prv"]
ACCOUNTANTS: tuple[str, ...] = get_args(AccountantName)
"""Valid ``dp_args.accountant`` names."""

Mechanism = tuple[float, float, int]
"""``(noise_multiplier, sample_rate, steps)``."""

INSTALL_HINT = "pip install 'fedml[privacy]' (Opacus)"

RDP_ORDERS: tuple[float, ...] = (
    *(1 + x / 100 for x in range(1, 10)),
    *(1 + x / 10 for x in range(1, 100)),
    *range(12, 64),
    *(80, 96, 128, 192, 256, 512, 1024),
)
"""The Renyi orders the RDP accountant optimises over: Opacus's defaults, extended at both ends so
that very small and very large epsilons are not held back by the range."""


def require_opacus() -> None:
    """Fail at start, not mid-run, when Opacus is missing.

    Raises
    ------
    PrivacyError
        Saying which ``pip install`` fixes it.

    """
    # Opacus calls logging.basicConfig() at import, which would print every fedml log line twice; a
    # handler on the root logger while it imports makes that call a no-op.
    root = logging.getLogger()
    guard = logging.NullHandler()
    root.addHandler(guard)
    try:
        import opacus  # noqa: F401
    except ImportError as exc:
        raise PrivacyError(f"dp_args.enable_dp needs Opacus for its accountant: {INSTALL_HINT}") from exc
    finally:
        root.removeHandler(guard)


def epsilon(history: Sequence[Mechanism], delta: float, accountant: AccountantName = "rdp") -> float:
    """Return the epsilon at ``delta`` of the mechanisms in ``history``, composed.

    ``inf`` when a mechanism adds no noise (``noise_multiplier`` 0); ``0.0`` for an empty history.

    Examples
    --------
    >>> round(epsilon([(1.0, 0.1, 100)], 1e-5), 3)
    7.899
    >>> epsilon([], 1e-5)
    0.0

    """
    steps = [(float(z), float(q), int(n)) for z, q, n in history if n > 0 and q > 0]
    if not steps:
        return 0.0
    if any(z <= 0 for z, _, _ in steps):
        return math.inf
    with warnings.catch_warnings():
        # "Optimal order is the largest alpha": at the ends of RDP_ORDERS, which are wide enough.
        warnings.simplefilter("ignore", UserWarning)
        if accountant == "rdp":
            return _rdp_epsilon(steps, delta)
        return float(_accountant(accountant, steps).get_epsilon(delta=delta))


def _rdp_epsilon(history: list[Mechanism], delta: float) -> float:
    """Opacus's RDP accountant's epsilon, from a cache of each mechanism's RDP of one step.

    RDP composes by addition, so ``n`` steps of a mechanism cost ``n`` times one; computing the curve
    of one step once per ``(noise, rate)`` makes a run's every-round report nearly free (Opacus would
    recompute every order from scratch each time).
    """
    from opacus.accountants.analysis.rdp import get_privacy_spent

    total = np.zeros(len(RDP_ORDERS))
    for z, q, n in history:
        total += n * _rdp_of_one_step(z, q)
    eps, _ = get_privacy_spent(orders=list(RDP_ORDERS), rdp=total.tolist(), delta=delta)
    return float(eps)


@functools.lru_cache(maxsize=4096)
def _rdp_of_one_step(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    require_opacus()
    from opacus.accountants.analysis.rdp import compute_rdp

    rdp = compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=list(RDP_ORDERS))
    return np.asarray(rdp, dtype=np.float64)


def calibrate_noise(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: AccountantName = "rdp",
) -> float:
    """Return the smallest noise multiplier (to 0.5%) whose ``steps`` releases stay within ``target_epsilon``.

    The result meets the target with the same accountant that reports the run's epsilon:
    ``epsilon([(result, sample_rate, steps)], delta, accountant) <= target_epsilon``.

    Raises
    ------
    PrivacyError
        If there are no releases to calibrate for, or no multiplier up to 2**20 reaches the target.

    """
    if steps <= 0:
        raise PrivacyError(f"dp_args.epsilon: calibrating for {steps} releases; there must be at least one")

    def spent(noise: float) -> float:
        return epsilon([(noise, sample_rate, steps)], delta, accountant)

    low, high = 0.0, 1.0
    while spent(high) > target_epsilon:
        low, high = high, 2 * high
        if high > 2**20:
            raise PrivacyError(
                f"dp_args.epsilon {target_epsilon}: no noise multiplier reaches it at delta {delta} over "
                f"{steps} releases with sample rate {sample_rate:.4g}"
            )
    while high - low > 0.005 * high:
        middle = (low + high) / 2
        low, high = (middle, high) if spent(middle) > target_epsilon else (low, middle)
    return high


def _accountant(name: AccountantName, history: list[Mechanism]) -> Any:
    require_opacus()
    from opacus.accountants import PRVAccountant, RDPAccountant

    if name not in ACCOUNTANTS:
        raise PrivacyError(
            f"dp_args.accountant: unknown accountant {name!r}; valid: {', '.join(ACCOUNTANTS)}"
        )
    accountant = RDPAccountant() if name == "rdp" else PRVAccountant()
    accountant.history = list(history)
    return accountant

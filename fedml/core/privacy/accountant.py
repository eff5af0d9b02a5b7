"""Privacy accounting: (epsilon, delta) of composed subsampled Gaussian mechanisms, through Opacus.

fedml does not write its own accountant: ``epsilon`` and ``calibrate_noise`` hand the history of
mechanisms to Opacus's RDP accountant (Mironov 2017, the default) or its PRV accountant (Gopi et al.
2021, tighter for many steps). A mechanism is ``(noise_multiplier, sample_rate, steps)``: ``steps``
releases of a Gaussian mechanism with noise ``noise_multiplier`` times the sensitivity, each over a
Poisson sample of rate ``sample_rate``.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from typing import Any, Literal, get_args

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
    ledger = _accountant(accountant, steps)
    with warnings.catch_warnings():
        # "Optimal order is the largest alpha": at the ends of RDP_ORDERS, which are wide enough.
        warnings.simplefilter("ignore", UserWarning)
        if accountant == "rdp":
            return float(ledger.get_epsilon(delta=delta, alphas=list(RDP_ORDERS)))
        return float(ledger.get_epsilon(delta=delta))


def calibrate_noise(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: AccountantName = "rdp",
) -> float:
    """Return the smallest noise multiplier (to 1%) whose ``steps`` releases stay within ``target_epsilon``.

    The result meets the target: ``epsilon([(result, sample_rate, steps)], delta) <= target_epsilon``.

    Raises
    ------
    PrivacyError
        If no noise multiplier reaches the target (Opacus searches up to a multiplier of about 2**20).

    """
    require_opacus()
    from opacus.accountants.utils import get_noise_multiplier

    if steps <= 0:
        raise PrivacyError(f"dp_args.epsilon: calibrating for {steps} releases; there must be at least one")
    try:
        noise = float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
            )
        )
    except ValueError as exc:
        raise PrivacyError(
            f"dp_args.epsilon {target_epsilon}: no noise multiplier reaches it at delta {delta} over "
            f"{steps} releases with sample rate {sample_rate:.4g} ({exc})"
        ) from exc
    # Opacus stops its search within 1% of the target from below or above; step up until it holds.
    while epsilon([(noise, sample_rate, steps)], delta, accountant) > target_epsilon:
        noise *= 1.01
    return noise


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

"""Sample-level DP-SGD inside a client with Opacus: per-sample clipping, Gaussian noise, Poisson sampling."""

from __future__ import annotations

import math
import secrets
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from fedml.core.privacy.accountant import require_opacus
from fedml.core.sampling import client_generator
from fedml.errors import PrivacyError
from fedml.ml.trainer import ClientTrainer, to_device

if TYPE_CHECKING:
    from fedml.data import ClientData

DPSGD_STREAM = 0xD9_56D
"""Tag mixed into the seed for a client's Poisson sampling and DP-SGD noise (seeded runs only)."""

_OPACUS_PARAM_ATTRS = (
    "grad_sample",
    "summed_grad",
    "_forward_counter",
    "_current_grad_sample",
    "_norm_sample",
)
"""Attributes Opacus sets on parameters; removed after training so the shared model is a plain module."""


def poisson_schedule(num_samples: int, batch_size: int, epochs: int) -> tuple[float, int]:
    """Return DP-SGD's ``(sample_rate, steps)`` for a client: ``min(1, B / n)`` and ``epochs * ceil(n / B)``.

    ``DPSGDTrainer`` trains with exactly these, so a noise multiplier calibrated from them for a target
    epsilon is the one the accountant later composes. A client without samples takes no step.

    Examples
    --------
    >>> poisson_schedule(50, 8, 2)
    (0.16, 14)
    >>> poisson_schedule(5, 8, 3)
    (1.0, 3)

    """
    if num_samples == 0:
        return 0.0, 0
    return min(1.0, batch_size / num_samples), epochs * math.ceil(num_samples / batch_size)


def _opacus() -> Any:
    require_opacus()
    import opacus
    import opacus.optimizers
    import opacus.utils.uniform_sampler
    import opacus.validators

    return opacus


class DPSGDTrainer(ClientTrainer):
    """Local training by DP-SGD (Abadi et al. 2016) through Opacus, for ``dp_solution_type: dpsgd``.

    Each epoch is ``ceil(n / batch_size)`` steps. A step draws a Poisson batch (every sample joins with
    probability ``q = min(1, batch_size / n)``; a batch may be empty), clips each sample's gradient to
    ``clipping_norm``, adds Gaussian noise of std ``noise_multiplier * clipping_norm`` to the sum and
    divides by the expected batch size ``min(batch_size, n)``; then SGD (or Adam) takes the step. An
    algorithm's penalty (FedProx) depends on no sample, so its exact gradient is added after the noise.

    The returned metrics hold what the server's accountant composes for this client:
    ``dp_noise_multiplier``, ``dp_sample_rate`` and ``num_steps``, exactly as applied.

    Parameters
    ----------
    model
        The model to train in place; checked with ``check_model`` here, so an unsupported model is
        refused before the run starts.
    args
        The run's arguments (``epochs``, ``batch_size``, ``client_optimizer``, ``learning_rate``,
        ``momentum``, ``weight_decay``, ``random_seed``).
    clipping_norm
        The per-sample L2 bound ``C``.
    noise_multiplier_for
        Returns the noise multiplier for a client with the given number of samples (calibrated from a
        target epsilon, or a constant).
    seeded
        ``True`` (simulation): sampling and noise come from generators derived from
        ``(random_seed ^ DPSGD_STREAM, round, client)``, so a run reproduces run to run and on every
        backend. ``False`` (cross-silo, cross-device, where anyone who knew the seed could subtract the
        noise): fresh generators from ``secrets``, and Opacus's ``secure_mode`` noise, which resists the
        floating-point attacks on Gaussian sampling.

    Raises
    ------
    PrivacyError
        If ``clipping_norm`` is not a positive finite number, or the model has a layer Opacus cannot
        compute per-sample gradients for.

    Notes
    -----
    Momentum and Adam's moments start fresh every round, as in ``ClientTrainer``. The noise generator
    lives on the training device, so a seeded run reproduces on the same kind of device. Unseeded noise
    comes from torch's generator seeded by ``secrets``, not from a cryptographic generator (Opacus's
    ``torchcsprng`` is unmaintained); ``secure_mode`` guards against the known attacks on the floats.

    """

    def __init__(
        self,
        model: nn.Module,
        args: Any,
        *,
        clipping_norm: float,
        noise_multiplier_for: Callable[[int], float],
        seeded: bool,
    ) -> None:
        super().__init__(model, args)
        if isinstance(clipping_norm, bool) or not (
            isinstance(clipping_norm, int | float) and math.isfinite(clipping_norm) and clipping_norm > 0
        ):
            raise PrivacyError(f"dp_args.clipping_norm must be a positive number, got {clipping_norm!r}")
        self.check_model(model)
        self.clipping_norm = float(clipping_norm)
        self.noise_multiplier_for = noise_multiplier_for
        self.seeded = seeded

    @staticmethod
    def check_model(model: nn.Module) -> None:
        """Refuse a model that Opacus cannot train with per-sample gradients (BatchNorm, plain LSTM...).

        Raises
        ------
        PrivacyError
            Naming the first unsupported layer and why.

        """
        validators = _opacus().validators.ModuleValidator.VALIDATORS
        for name, module in model.named_modules():
            if not any(p.requires_grad for p in module.parameters(recurse=False)):
                continue
            errors = list(validators[type(module)](module)) if type(module) in validators else []
            if errors:
                reason = str(errors[0]).split(". ")[0].rstrip(".")
            elif any(True for _ in module.buffers(recurse=False)):
                # Buffers such as running statistics mix samples outside the gradient that is clipped.
                reason = "a trainable layer with buffers gets no per-sample gradients"
            else:
                continue
            raise PrivacyError(
                f"dpsgd: layer '{name or '(model)'}' ({type(module).__name__}) is not supported by Opacus "
                f"({reason}); opacus.validators.ModuleValidator.fix(model) swaps in a replacement where "
                "Opacus has one"
            )

    def train(self, train_data: ClientData, device: torch.device, args: Any) -> dict[str, float]:
        """Train by DP-SGD for ``args.epochs`` epochs.

        Returns
        -------
        dict[str, float]
            ``train_loss`` (mean over the samples drawn, penalty included), ``num_samples``,
            ``num_steps`` (``epochs * ceil(n / batch_size)``, empty batches included),
            ``dp_sample_rate`` (``q``) and ``dp_noise_multiplier``.

        Raises
        ------
        PrivacyError
            If ``noise_multiplier_for`` returns a negative or non-finite value.

        """
        n = len(train_data)
        batch_size = args.batch_size
        sample_rate, num_steps = poisson_schedule(n, batch_size, args.epochs)
        if n == 0:
            return {
                "train_loss": float("nan"),
                "num_samples": 0,
                "num_steps": num_steps,
                "dp_sample_rate": sample_rate,
                "dp_noise_multiplier": 0.0,
            }
        noise_multiplier = float(self.noise_multiplier_for(n))
        if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
            raise PrivacyError(
                f"dpsgd: the noise multiplier for client {self.id} ({n} samples) must be a non-negative "
                f"number, got {noise_multiplier!r}"
            )
        model = to_device(self.model, device)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        sampling_generator, noise_generator = self._generators(args.random_seed, device)
        opacus = _opacus()
        grad_sample_module = opacus.GradSampleModule(model, loss_reduction="sum", strict=True)
        try:
            optimizer = opacus.optimizers.DPOptimizer(
                self._base_optimizer(params, args),
                noise_multiplier=noise_multiplier,
                max_grad_norm=self.clipping_norm,
                expected_batch_size=min(batch_size, n),
                loss_reduction="mean",
                generator=noise_generator,
                secure_mode=not self.seeded,
            )
            sampler = opacus.utils.uniform_sampler.UniformWithReplacementSampler(
                num_samples=n,
                sample_rate=sample_rate,
                generator=sampling_generator,
                steps=math.ceil(n / batch_size),
            )
            with warnings.catch_warnings():
                # Opacus's backward hooks fire on module outputs because the inputs need no gradient;
                # torch warns about that, and it is what per-sample gradients need.
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                loss_sum, seen = self._epochs(
                    grad_sample_module, optimizer, sampler, args.epochs, train_data, device
                )
        finally:
            grad_sample_module.cleanup()
            for p in model.parameters():
                p.grad = None
                for attr in _OPACUS_PARAM_ATTRS:
                    if hasattr(p, attr):
                        delattr(p, attr)
        return {
            "train_loss": loss_sum / seen if seen else float("nan"),
            "num_samples": n,
            "num_steps": num_steps,
            "dp_sample_rate": sample_rate,
            "dp_noise_multiplier": noise_multiplier,
        }

    def _epochs(
        self,
        grad_sample_module: nn.Module,
        optimizer: Any,
        sampler: Iterable[list[int]],
        epochs: int,
        train_data: ClientData,
        device: torch.device,
    ) -> tuple[float, int]:
        """Run ``epochs`` passes of the sampler's steps; return the loss total and the samples drawn."""
        named = {name: p for name, p in self.model.named_parameters() if p.requires_grad}
        params = list(named.values())
        loss_sum = torch.zeros((), device=device)
        seen = 0
        for _ in range(epochs):
            for chosen in sampler:
                optimizer.zero_grad(set_to_none=True)
                batch = len(chosen)
                if batch:
                    index = train_data.indices[torch.tensor(chosen, dtype=torch.long)]
                    x, y = train_data.x[index].to(device), train_data.y[index].to(device)
                    loss = F.cross_entropy(grad_sample_module(x), y, reduction="sum")
                    loss.backward()
                    loss_sum += loss.detach()
                    seen += batch
                else:
                    # An empty Poisson batch still releases noise: skipping the step would reveal that
                    # the batch was empty, and the accountant counts every step.
                    for p in params:
                        p.grad_sample = p.new_zeros((0, *p.shape))  # type: ignore[attr-defined]
                penalty_grads: Sequence[torch.Tensor] = ()
                if self.penalty is not None:
                    value = self.penalty(named, self.penalty_anchor or {})
                    loss_sum += value.detach() * batch
                    penalty_grads = torch.autograd.grad(
                        value, params, allow_unused=True, materialize_grads=True
                    )
                # Clip, noise and average the data gradient; the penalty reads no sample, so its exact
                # gradient is added afterwards, as in the non-private loss.
                optimizer.pre_step()
                if penalty_grads:
                    with torch.no_grad():
                        for p, g in zip(params, penalty_grads, strict=True):
                            if p.grad is not None:
                                p.grad.add_(g)
                optimizer.original_optimizer.step()
        # One conversion at the end instead of a host sync per step.
        return float(loss_sum), seen

    def _generators(self, seed: int, device: torch.device) -> tuple[torch.Generator, torch.Generator]:
        """Return the Poisson-sampling generator (CPU, as Opacus's sampler draws) and the noise generator."""
        if self.seeded:
            sampling = client_generator(seed ^ DPSGD_STREAM, self.round_idx, self.id)
            noise_seed = int(torch.randint(2**62, (1,), generator=sampling))
        else:
            sampling = torch.Generator().manual_seed(secrets.randbits(63))
            noise_seed = secrets.randbits(63)
        return sampling, torch.Generator(device=device).manual_seed(noise_seed)

    @staticmethod
    def _base_optimizer(params: Sequence[torch.Tensor], args: Any) -> torch.optim.Optimizer:
        """Return the optimizer DP-SGD wraps: Adam or SGD with the run's settings, as ``ClientTrainer``."""
        if args.client_optimizer == "adam":
            return torch.optim.Adam(params, lr=args.learning_rate, weight_decay=args.weight_decay)
        return torch.optim.SGD(
            params, lr=args.learning_rate, momentum=args.momentum, weight_decay=args.weight_decay
        )


def dpsgd_trainer(model: nn.Module, args: Any, custom_trainer: bool) -> DPSGDTrainer | None:
    """Return the run's DP-SGD trainer when ``dp_args`` asks for ``dpsgd``, else ``None``.

    Raises
    ------
    PrivacyError
        If the run also has a custom ``ClientTrainer`` (DP-SGD replaces the training loop, so a user's
        loop cannot be made private behind its back), or if Opacus cannot handle the model.

    """
    from fedml.core.privacy.settings import privacy_plan

    plan = privacy_plan(args)
    if plan is None or plan.mode != "dpsgd":
        return None
    if custom_trainer:
        raise PrivacyError(
            "dp_args.dp_solution_type dpsgd trains every client with its own Opacus loop, so it cannot "
            "wrap a custom ClientTrainer; drop client_trainer, or use ldp or cdp"
        )
    return DPSGDTrainer(
        model,
        args,
        clipping_norm=plan.clipping_norm,
        noise_multiplier_for=plan.dpsgd_noise,
        seeded=plan.seeded,
    )

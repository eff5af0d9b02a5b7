"""Evaluation of a classifier on a dataset view, in large batches without gradients."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from fedml.ml.functional import cross_entropy_sum

if TYPE_CHECKING:
    from fedml.data import ClientData

EVAL_BATCH_SIZE = 2048
"""Samples per forward pass when evaluating; evaluation holds no activations for backprop."""


def evaluate(model: nn.Module, data: ClientData, device: torch.device) -> dict[str, float]:
    """Return ``{"accuracy", "loss", "num_samples"}`` of ``model`` on ``data`` (cross-entropy, argmax).

    The model is put in eval mode for the pass and its previous mode is restored.
    """
    was_training = model.training
    model.eval()
    correct, loss_sum, total = 0, 0.0, 0
    with torch.no_grad():
        for x, y in data.batches(EVAL_BATCH_SIZE):
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss_sum += float(cross_entropy_sum(logits, y))
            correct += int(logits.argmax(dim=1).eq_(y).sum())
            total += len(y)
    model.train(was_training)
    if total == 0:
        return {"accuracy": float("nan"), "loss": float("nan"), "num_samples": 0}
    return {"accuracy": correct / total, "loss": loss_sum / total, "num_samples": total}

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from fedml.data.dataset import ClientData
from fedml.ml.evaluation import EVAL_BATCH_SIZE, evaluate


def test_loss_and_accuracy_are_cross_entropy_and_argmax_over_every_batch():
    generator = torch.Generator().manual_seed(0)
    n = EVAL_BATCH_SIZE + 37  # two batches, the last one short
    x, y = torch.randn(n, 5, generator=generator), torch.randint(0, 4, (n,), generator=generator)
    model = nn.Linear(5, 4)
    # Large logits: a loss computed without the log-sum-exp's shift would overflow.
    with torch.no_grad():
        model.weight.mul_(40)
    view = ClientData(x, y, torch.randperm(n, generator=generator), batch_size=10)
    metrics = evaluate(model, view, torch.device("cpu"))
    with torch.no_grad():
        logits = model(x)
    assert metrics["num_samples"] == n
    assert abs(metrics["loss"] - float(F.cross_entropy(logits, y))) < 1e-4 * max(1.0, metrics["loss"])
    assert metrics["accuracy"] == int((logits.argmax(1) == y).sum()) / n
    assert model.training

import pytest
import torch
from torch.nn import functional as F  # noqa: N812

from fedml.ml import functional


@pytest.mark.parametrize("classes", [2, 10, 15, 16, 62])
@pytest.mark.parametrize("vector_bytes", [32, 64])
def test_log_softmax_last_equals_torch_over_narrow_and_wide_dims(monkeypatch, classes, vector_bytes):
    monkeypatch.setattr(functional, "_cpu_vector_bytes", lambda: vector_bytes)
    h = torch.randn(7, 5, classes, generator=torch.Generator().manual_seed(classes)) * 10
    out = functional.log_softmax_last(h)
    assert out.shape == h.shape
    torch.testing.assert_close(out, F.log_softmax(h, dim=-1))
    # Narrower than a vector: computed over the transposed view, which comes back as a view of it.
    assert out.is_contiguous() == (classes * h.element_size() >= vector_bytes)


@pytest.mark.parametrize("classes", [2, 10, 16, 62])
@pytest.mark.parametrize("vector_bytes", [32, 64])
def test_cross_entropy_sum_equals_torch_over_narrow_and_wide_classes(monkeypatch, classes, vector_bytes):
    monkeypatch.setattr(functional, "_cpu_vector_bytes", lambda: vector_bytes)
    generator = torch.Generator().manual_seed(classes)
    logits = torch.randn(300, classes, generator=generator) * 10
    labels = torch.randint(0, classes, (300,), generator=generator)
    assert functional.narrow_on_cpu(logits) == (classes * 4 < vector_bytes)
    loss = functional.cross_entropy_sum(logits, labels)
    assert loss.shape == ()
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels, reduction="sum"))

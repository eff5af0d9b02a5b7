import numpy as np
import pytest
import torch

import fedml
from fedml.data import SyntheticDataset
from fedml.errors import DataError


def test_generating_a_client_twice_gives_identical_data():
    ds = SyntheticDataset(client_num=50, alpha=1.0, beta=1.0, seed=3, batch_size=10)
    x1, y1 = ds.local_train(7).tensors()
    x2, y2 = (
        SyntheticDataset(client_num=50, alpha=1.0, beta=1.0, seed=3, batch_size=10).local_train(7).tensors()
    )
    assert torch.equal(x1, x2)
    assert torch.equal(y1, y2)
    assert x1.shape == (ds.local_sample_num(7), 60)
    assert x1.dtype == torch.float32
    assert int(y1.min()) >= 0
    assert int(y1.max()) < 10


def test_seed_and_client_change_the_data():
    ds = SyntheticDataset(client_num=50, alpha=1.0, beta=1.0, seed=3, batch_size=10)
    other = SyntheticDataset(client_num=50, alpha=1.0, beta=1.0, seed=4, batch_size=10)
    assert not torch.equal(ds.local_train(0).tensors()[0][:5], ds.local_train(1).tensors()[0][:5])
    assert not torch.equal(ds.local_train(0).tensors()[0][:5], other.local_train(0).tensors()[0][:5])


def test_sizes_are_power_law_and_train_test_split_is_disjoint():
    ds = SyntheticDataset(client_num=10_000, alpha=1.0, beta=1.0, seed=0, batch_size=10, max_samples=100_000)
    sizes = ds.sizes
    assert sizes.min() >= 50
    assert np.median(sizes) < sizes.mean() / 2  # heavy right tail
    assert sizes.max() > 20 * np.median(sizes)
    train, test = ds.local_train(5), ds.local_test(5)
    assert len(train) + len(test) == sizes[5]
    assert set(train.indices.tolist()).isdisjoint(test.indices.tolist())


def test_only_requested_clients_are_materialised(monkeypatch):
    ds = SyntheticDataset(client_num=100_000, alpha=1.0, beta=1.0, seed=0, batch_size=10)
    generated = []
    original = SyntheticDataset.client_tensors
    monkeypatch.setattr(
        SyntheticDataset, "client_tensors", lambda self, c: generated.append(c) or original(self, c)
    )
    ds.local_train(99_999)
    ds.local_sample_num(12)
    assert ds.train_data_num > 100_000 * 40
    assert generated == [99_999]
    assert len(ds.test_global) == ds.test_data_num
    assert len(generated) == 1 + 100  # the fixed sample of test clients, once
    assert len(ds.test_global) == ds.test_data_num
    assert len(generated) == 101


def test_alpha_beta_control_heterogeneity():
    def label_spread(alpha, beta):
        ds = SyntheticDataset(client_num=40, alpha=alpha, beta=beta, seed=0, batch_size=10)
        return np.std([ds.local_train(c).tensors()[0].mean().item() for c in range(40)])

    assert label_spread(0.0, 0.0) < label_spread(1.0, 1.0)


def test_load_from_config(make_args):
    args = make_args(dataset="synthetic", synthetic_alpha=0.5, synthetic_beta=0.5, client_num_in_total=30)
    dataset, output_dim = fedml.data.load(args)
    assert output_dim == 10
    assert dataset.client_num == 30
    assert fedml.data.input_shape("synthetic") == (60,)
    assert dataset.alpha == 0.5
    assert dataset.beta == 0.5
    assert len(dataset.train_data_local_dict) == 30
    assert len(dataset.train_data_local_dict[3]) == dataset.local_sample_num(3)


def test_bad_client_index_is_a_data_error():
    ds = SyntheticDataset(client_num=5, alpha=1.0, beta=1.0, seed=0, batch_size=10)
    with pytest.raises(DataError, match="client index"):
        ds.local_train(5)

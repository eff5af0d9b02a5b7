import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

import fedml
from fedml.data import from_client_datasets
from fedml.errors import DataError


class Squares(Dataset):
    """A map-style dataset that is not a TensorDataset: items are computed."""

    def __init__(self, n, offset):
        self.n, self.offset = n, offset

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        value = float(i + self.offset)
        return torch.tensor([value, value**2]), (i + self.offset) % 3


def test_client_datasets_and_tensor_pairs_become_one_client_each_with_a_global_test():
    tensors = (torch.randn(4, 2), torch.tensor([0, 1, 2, 0]))
    test = (torch.randn(6, 2), torch.tensor([0, 1, 2, 0, 1, 2]))

    ds = from_client_datasets([Squares(3, 0), tensors, TensorDataset(*tensors)], global_test=test)

    assert ds.client_num == 3
    assert [ds.local_sample_num(c) for c in range(3)] == [3, 4, 4]
    x, y = ds.local_train(0).tensors()
    assert x.tolist() == [[0.0, 0.0], [1.0, 1.0], [2.0, 4.0]]
    assert y.tolist() == [0, 1, 2]
    assert torch.equal(ds.test_global.tensors()[0], test[0])
    assert ds.output_dim == 3


def test_per_client_test_sets_without_a_global_one_make_the_union_the_global_test():
    ds = from_client_datasets(
        [Squares(3, 0), Squares(2, 5)], test=[Squares(2, 10), Squares(1, 20)], output_dim=4
    )

    assert ds.test_data_num == 3
    assert ds.local_test(1).tensors()[0].tolist() == [[20.0, 400.0]]
    assert ds.output_dim == 4


def test_per_client_tests_and_a_global_test_are_kept_apart():
    global_test = (torch.zeros(5, 2), torch.zeros(5, dtype=torch.int64))

    ds = from_client_datasets([Squares(3, 0)], test=[Squares(2, 10)], global_test=global_test)

    assert ds.test_data_num == 5
    assert torch.equal(ds.test_global.tensors()[0], global_test[0])
    assert ds.local_test(0).tensors()[0].tolist() == [[10.0, 100.0], [11.0, 121.0]]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"train": []}, "train is empty"),
        ({"train": [Squares(2, 0)]}, r"give each client's test sets \(test=\), a global_test="),
        ({"train": [Squares(2, 0)], "test": []}, "0 test sets for 1 clients"),
        (
            {
                "train": [(torch.zeros(2, 2), torch.zeros(3, dtype=torch.int64))],
                "global_test": (torch.zeros(1, 2), torch.zeros(1, dtype=torch.int64)),
            },
            r"train\[0\]: 2 inputs but 3 labels",
        ),
        (
            {
                "train": [Squares(2, 0), (torch.zeros(2, 3), torch.zeros(2, dtype=torch.int64))],
                "test": [Squares(1, 0), Squares(1, 0)],
            },
            "differ in shape",
        ),
        (
            {"train": ["nope"], "global_test": (torch.zeros(1, 2), torch.zeros(1, dtype=torch.int64))},
            r"train\[0\]: expected a map-style torch Dataset",
        ),
    ],
)
def test_bad_inputs_name_the_client_at_fault(kwargs, match):
    with pytest.raises(DataError, match=match):
        from_client_datasets(**kwargs)


def test_a_custom_dataset_trains_with_fedml_runner(tmp_path):
    clients = [Squares(20, k) for k in range(3)]
    args = fedml.init(
        [],
        overrides={
            "comm_round": 2,
            "client_num_in_total": 3,
            "client_num_per_round": 3,
            "run_dir": str(tmp_path),
            "quiet": True,
            "plots": False,
        },
    )
    dataset = from_client_datasets(clients, global_test=(torch.randn(9, 2), torch.tensor([0, 1, 2] * 3)))
    model = fedml.model.create(args, dataset.output_dim, input_shape=dataset.input_shape)

    result = fedml.FedMLRunner(args, fedml.device.get_device(args), dataset, model).run()

    assert len(result.history) == 2
    assert 0.0 <= result.final_metrics["test_accuracy"] <= 1.0

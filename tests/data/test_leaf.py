import json

import numpy as np
import pytest
import torch

import fedml.data
from fedml.config import load_arguments
from fedml.data.leaf import ALL_LETTERS, encode_text
from fedml.errors import DataError

from .formats import data_args, femnist_users, random_text, shakespeare_users, write_leaf


def write_femnist(root, train_sizes, test_sizes):
    write_leaf(root, femnist_users(train_sizes, seed=1), "train", files=2)
    write_leaf(root, femnist_users(test_sizes, seed=2), "test", files=1)


def test_femnist_defaults_to_one_client_per_writer_with_their_own_test_samples(tmp_path):
    write_femnist(tmp_path, {"w_b": 5, "w_a": 3, "w_c": 4}, {"w_b": 2, "w_a": 1, "w_c": 2})
    args = load_arguments(overrides={"dataset": "femnist", "data_cache_dir": str(tmp_path), "batch_size": 2})

    dataset, output_dim = fedml.data.load(args)

    assert output_dim == 62
    assert dataset.input_shape == (1, 28, 28)
    assert dataset.train_x.dtype == torch.float32
    # Writers in sorted order: w_a, w_b, w_c.
    assert [dataset.local_sample_num(c) for c in range(dataset.client_num)] == [3, 5, 4]
    assert [len(dataset.local_test(c)) for c in range(3)] == [1, 2, 2]
    assert args.partition_method == "natural"


def test_femnist_pixels_and_labels_are_the_files_values(tmp_path):
    users = femnist_users({"only": 2}, seed=3)
    write_leaf(tmp_path, users, "train")
    write_leaf(tmp_path, users, "test")

    dataset, _ = fedml.data.load(
        data_args(
            dataset="femnist", data_cache_dir=str(tmp_path), partition_method="natural", client_num_in_total=1
        )
    )

    assert np.allclose(dataset.train_x[1].flatten().numpy(), users["only"][0][1])
    assert dataset.train_y.tolist() == users["only"][1]


def test_fewer_clients_than_writers_keep_each_writer_whole_and_its_tests_with_it(tmp_path):
    sizes = {f"w{i}": 2 + i for i in range(6)}
    write_femnist(tmp_path, sizes, {w: 1 for w in sizes})
    args = load_arguments(
        overrides={
            "dataset": "femnist",
            "data_cache_dir": str(tmp_path),
            "client_num_in_total": 3,
            "client_num_per_round": 3,
        }
    )

    dataset, _ = fedml.data.load(args)

    assert dataset.client_num == 3
    assert sorted(len(dataset.local_test(c)) for c in range(3)) == [2, 2, 2]
    assert sum(dataset.local_sample_num(c) for c in range(3)) == sum(sizes.values())


def test_an_explicit_partition_method_overrides_natural(tmp_path):
    write_femnist(tmp_path, {"a": 6, "b": 6}, {"a": 2, "b": 2})
    args = load_arguments(
        overrides={
            "dataset": "femnist",
            "data_cache_dir": str(tmp_path),
            "partition_method": "homo",
            "client_num_in_total": 4,
            "client_num_per_round": 4,
        }
    )

    dataset, _ = fedml.data.load(args)

    assert [dataset.local_sample_num(c) for c in range(4)] == [3, 3, 3, 3]


def test_the_leaf_folder_may_be_under_the_dataset_name(tmp_path):
    write_femnist(tmp_path / "femnist" / "data", {"a": 2}, {"a": 1})

    dataset, _ = fedml.data.load(
        data_args(
            dataset="femnist", data_cache_dir=str(tmp_path), partition_method="natural", client_num_in_total=1
        )
    )

    assert dataset.train_data_num == 2


def test_shakespeare_encodes_leafs_alphabet_and_predicts_the_next_character(tmp_path):
    texts = {"ROMEO": random_text(90, seed=1), "JULIET": random_text(85, seed=2)}
    write_leaf(tmp_path, shakespeare_users(texts), "train")
    write_leaf(tmp_path, shakespeare_users({"ROMEO": random_text(82, seed=3)}), "test")
    args = load_arguments(overrides={"dataset": "shakespeare", "data_cache_dir": str(tmp_path)})

    dataset, output_dim = fedml.data.load(args)

    assert output_dim == len(ALL_LETTERS) == 80
    assert dataset.input_shape == (80,)
    assert dataset.train_x.dtype == torch.int64
    juliet = dataset.local_train(0)  # JULIET sorts first
    x, y = juliet.tensors()
    text = texts["JULIET"]
    assert "".join(ALL_LETTERS[i] for i in x[0].tolist()) == text[:80]
    assert ALL_LETTERS[int(y[0])] == text[80]
    assert [len(dataset.local_test(c)) for c in range(2)] == [0, 2]


def test_characters_outside_the_alphabet_become_spaces():
    assert encode_text("a\tb").tolist() == [
        ALL_LETTERS.index("a"),
        ALL_LETTERS.index(" "),
        ALL_LETTERS.index("b"),
    ]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "not readable JSON"),
        (json.dumps({"users": ["u"], "num_samples": [1]}), "no 'user_data' object"),
        (json.dumps({"users": ["u"], "user_data": {"u": {"x": [[0.0] * 784]}}}), r"needs 'x' and 'y' lists"),
        (json.dumps({"users": ["u"], "user_data": {"u": {"x": [[0.0] * 5], "y": [1]}}}), "784 pixels"),
        (
            json.dumps({"users": ["u"], "user_data": {"u": {"x": [[0.0] * 784], "y": [99]}}}),
            r"outside 0\.\.61",
        ),
    ],
)
def test_malformed_json_is_a_one_line_error_naming_the_file_and_layout(tmp_path, content, match):
    write_femnist(tmp_path, {"a": 2}, {"a": 1})
    bad = tmp_path / "train" / "bad.json"
    bad.write_text(content)

    with pytest.raises(DataError, match=match) as err:
        fedml.data.load(
            data_args(dataset="femnist", data_cache_dir=str(tmp_path), partition_method="natural")
        )

    assert str(bad) in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_folders_name_where_they_were_looked_for(tmp_path):
    with pytest.raises(DataError, match="no train/ and test/ folders") as err:
        fedml.data.load(data_args(dataset="shakespeare", data_cache_dir=str(tmp_path)))

    assert str(tmp_path / "shakespeare" / "data") in str(err.value)
    assert "user_data" in str(err.value)


def test_a_shakespeare_sample_must_be_80_characters(tmp_path):
    write_leaf(tmp_path, {"u": (["short"], ["x"])}, "train")
    write_leaf(tmp_path, {"u": (["short"], ["x"])}, "test")

    with pytest.raises(DataError, match="80-character string"):
        fedml.data.load(
            data_args(dataset="shakespeare", data_cache_dir=str(tmp_path), partition_method="natural")
        )

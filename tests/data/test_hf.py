import numpy as np
import pytest
import torch

import fedml.data
from fedml.errors import ConfigError, DataError

from .formats import data_args

datasets = pytest.importorskip("datasets")
datasets.disable_progress_bars()


def table(n, seed):
    rng = np.random.default_rng(seed)
    return {
        "a": rng.random(n).astype(np.float32).tolist(),
        "b": rng.random((n, 3)).astype(np.float32).tolist(),
        "label": rng.choice(["cat", "dog", "eel"], n).tolist(),
        "user": rng.choice(["u1", "u2", "u3"], n).tolist(),
    }


def hf_args(path, **overrides):
    return data_args(dataset="hf", data_path=str(path), **overrides)


def test_a_saved_dataset_dict_becomes_tensors_and_string_labels_become_ids(tmp_path):
    train, test = table(12, 0), table(4, 1)
    datasets.DatasetDict(
        train=datasets.Dataset.from_dict(train), test=datasets.Dataset.from_dict(test)
    ).save_to_disk(str(tmp_path / "saved"))

    dataset, output_dim = fedml.data.load(hf_args(tmp_path / "saved", feature_columns=["a", "b"]))

    assert output_dim == 3
    assert dataset.input_shape == (4,)
    assert fedml.data.input_shape("hf") == (4,)
    assert torch.allclose(dataset.train_x[0], torch.tensor([train["a"][0], *train["b"][0]]))
    assert dataset.train_y.tolist() == [["cat", "dog", "eel"].index(v) for v in train["label"]]


def test_parquet_files_with_a_natural_id_column_split_by_it(tmp_path):
    train = datasets.Dataset.from_dict(table(30, 2))
    train.to_parquet(str(tmp_path / "train.parquet"))
    datasets.Dataset.from_dict(table(6, 3)).to_parquet(str(tmp_path / "test.parquet"))
    users = np.array(train["user"])

    dataset, _ = fedml.data.load(
        hf_args(
            tmp_path,
            feature_columns=["b"],
            natural_id_column="user",
            partition_method="natural",
            client_num_in_total=3,
        )
    )

    for client, user in enumerate(["u1", "u2", "u3"]):
        assert dataset.client_train_indices[client].tolist() == np.flatnonzero(users == user).tolist()
    assert sum(len(dataset.local_test(c)) for c in range(3)) == 6


def test_an_image_column_becomes_channels_first_floats(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (5, 6, 6, 3), dtype=np.uint8)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=4)})
    split = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(p) for p in pixels], "label": [0, 1, 2, 1, 0]}, features=features
    )
    datasets.DatasetDict(train=split, test=split).save_to_disk(str(tmp_path / "img"))

    dataset, output_dim = fedml.data.load(hf_args(tmp_path / "img"))

    assert output_dim == 4
    assert dataset.input_shape == (3, 6, 6)
    assert torch.allclose(dataset.train_x[2], torch.from_numpy(pixels[2].transpose(2, 0, 1) / 255.0).float())


def test_missing_path_columns_and_splits_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"data_args\.data_path"):
        fedml.data.load(data_args(dataset="hf"))
    with pytest.raises(DataError, match="no such file or folder") as err:
        fedml.data.load(hf_args(tmp_path / "nowhere"))
    assert "train*.parquet" in str(err.value)

    datasets.Dataset.from_dict(table(4, 0)).to_parquet(str(tmp_path / "train.parquet"))
    with pytest.raises(DataError, match="no test parquet files"):
        fedml.data.load(hf_args(tmp_path))

    datasets.Dataset.from_dict(table(4, 0)).to_parquet(str(tmp_path / "test.parquet"))
    with pytest.raises(ConfigError, match=r"data_args\.label_column: no column 'y'"):
        fedml.data.load(hf_args(tmp_path, label_column="y"))
    with pytest.raises(ConfigError, match=r"data_args\.feature_columns: c"):
        fedml.data.load(hf_args(tmp_path, feature_columns=["c"]))
    with pytest.raises(DataError, match="column 'user' is not numeric"):
        fedml.data.load(hf_args(tmp_path, feature_columns=["user"]))


def test_an_unreadable_parquet_file_is_one_line_naming_the_folder_and_layout(tmp_path):
    (tmp_path / "train.parquet").write_bytes(b"not parquet")
    (tmp_path / "test.parquet").write_bytes(b"not parquet")

    with pytest.raises(DataError, match="cannot read the train parquet files") as err:
        fedml.data.load(hf_args(tmp_path))

    assert str(tmp_path) in str(err.value)
    assert "\n" not in str(err.value)

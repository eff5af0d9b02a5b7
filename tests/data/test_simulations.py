"""The new datasets train end to end from a YAML file, on generated files of their real format."""

import yaml

import fedml

from .formats import femnist_users, write_cifar10, write_leaf


def run(tmp_path, sections):
    tracking = {"run_dir": str(tmp_path / "runs"), "quiet": True, "plots": False, "save_model": False}
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**sections, "tracking_args": tracking}))
    return fedml.run_simulation(argv=["--cf", str(config)])


def test_cifar10_with_augmentation_trains(tmp_path):
    write_cifar10(tmp_path / "cache", per_batch=8)

    result = run(
        tmp_path,
        {
            "data_args": {
                "dataset": "cifar10",
                "data_cache_dir": str(tmp_path / "cache"),
                "download": False,
                "partition_method": "homo",
            },
            "model_args": {"model": "lr"},
            "train_args": {
                "client_num_in_total": 2,
                "client_num_per_round": 2,
                "comm_round": 2,
                "batch_size": 8,
            },
        },
    )

    assert [record["round"] for record in result.history] == [1, 2]


def test_femnist_trains_one_client_per_writer_by_default(tmp_path):
    write_leaf(tmp_path / "cache", femnist_users({"w1": 6, "w2": 4, "w3": 5}, seed=0), "train")
    write_leaf(tmp_path / "cache", femnist_users({"w1": 2, "w2": 2, "w3": 2}, seed=1), "test")

    result = run(
        tmp_path,
        {
            "data_args": {"dataset": "femnist", "data_cache_dir": str(tmp_path / "cache")},
            "model_args": {"model": "lr"},
            "train_args": {"client_num_per_round": 3, "comm_round": 1},
        },
    )

    assert result.history[-1]["round"] == 1
    config = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert config["train_args"]["client_num_in_total"] == 3
    assert config["data_args"]["partition_method"] == "natural"

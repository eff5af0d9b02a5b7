"""Every prebuilt job runs for two rounds on tiny generated files of its dataset's real format."""

import logging
import math
from pathlib import Path

import numpy as np
import pytest

from fedml.cli import main
from fedml.errors import ConfigError
from fedml.jobs import JOBS_DIR, find_jobs, get_job, jobs_table, read_card, run_job

from .data.formats import (
    femnist_users,
    random_text,
    shakespeare_users,
    write_cifar10,
    write_cifar100,
    write_leaf,
    write_tff,
)

JOBS = find_jobs()


def write_femnist(cache: Path) -> None:
    write_leaf(cache / "femnist", femnist_users({"w1": 5, "w2": 4, "w3": 3}, seed=0), "train")
    write_leaf(cache / "femnist", femnist_users({"w1": 2, "w2": 2, "w3": 1}, seed=1), "test")


def write_shakespeare(cache: Path) -> None:
    texts = {f"s{i}": random_text(86, seed=i) for i in range(3)}
    write_leaf(cache / "shakespeare", shakespeare_users(texts), "train")
    write_leaf(cache / "shakespeare", shakespeare_users({"s0": random_text(83, seed=9)}), "test")


def write_fed_emnist(cache: Path) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("test", 2)):
        clients = {
            f"f{i}": {
                "pixels": rng.random((n, 28, 28), dtype=np.float32),
                "label": rng.integers(0, 62, n).astype(np.int32),
            }
            for i in range(3)
        }
        write_tff(cache / f"fed_emnist_{split}.h5", clients)


def write_fed_cifar100(cache: Path) -> None:
    rng = np.random.default_rng(0)
    for split, names in (("train", ["0", "1", "2"]), ("test", ["9"])):
        clients = {
            name: {
                "image": rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8),
                "label": rng.integers(0, 100, 3),
            }
            for name in names
        }
        write_tff(cache / f"fed_cifar100_{split}.h5", clients)


def write_fed_shakespeare(cache: Path) -> None:
    for split, count in (("train", 3), ("test", 2)):
        clients = {
            f"ROLE{i}": {"snippets": np.array([random_text(6, seed=i).encode()], dtype=object)}
            for i in range(count)
        }
        write_tff(cache / f"shakespeare_{split}.h5", clients)


WRITERS = {
    "mnist": lambda cache: None,
    "synthetic": lambda cache: None,
    "cifar10": lambda cache: write_cifar10(cache, per_batch=3),
    "cifar100": lambda cache: write_cifar100(cache, n=8),
    "femnist": write_femnist,
    "shakespeare": write_shakespeare,
    "fed_emnist": write_fed_emnist,
    "fed_cifar100": write_fed_cifar100,
    "fed_shakespeare": write_fed_shakespeare,
}
"""Dataset -> a writer of tiny files in its real on-disk format under the cache folder."""

TFF = {"fed_emnist", "fed_cifar100", "fed_shakespeare"}


@pytest.mark.parametrize("name", sorted(JOBS))
def test_every_job_runs_two_rounds_on_generated_data(name, tmp_path, caplog):
    job = JOBS[name]
    if job.dataset in TFF:
        pytest.importorskip("h5py")
    cache = tmp_path / "cache"
    cache.mkdir()
    WRITERS[job.dataset](cache)
    overrides = [
        f"data_cache_dir={cache}",
        "download=false",
        f"run_dir={tmp_path / 'runs'}",
        "comm_round=2",
        "client_num_in_total=2",
        "client_num_per_round=2",
        "batch_size=4",
        "epochs=1",
        # Only the last round is evaluated: the MNIST test set is 1,000 digits through the CNN.
        "frequency_of_the_test=2",
        "save_model=false",
        "plots=false",
        "quiet=true",
    ]
    if job.dataset == "synthetic":
        overrides.append("synthetic_max_samples=20")
    if job.dataset == "mnist":
        # The embedded 4,000 digits over 200 clients: 20 a client, so the CNN's rounds stay short.
        overrides.append("client_num_in_total=200")

    with caplog.at_level(logging.INFO, logger="fedml"):
        result = run_job(name, overrides)

    assert "Final Accuracy after Round 2:" in caplog.text
    assert [record["round"] for record in result.history] == [2]
    assert len(result.round_seconds) == 2
    assert math.isfinite(result.final_metrics["test_loss"])
    assert 0.0 <= result.final_metrics["test_accuracy"] <= 1.0


def test_every_recipe_says_what_accuracy_to_expect_and_where_it_comes_from():
    assert len(JOBS) >= 8
    for job in JOBS.values():
        figure = job.expected_accuracy
        assert figure == "not measured" or figure[0].isdigit(), (job.name, figure)
        if figure != "not measured":
            assert job.source.startswith(("our measurement", "paper")), (job.name, job.source)
        assert job.title.endswith(".")
        assert job.name.startswith(job.dataset + "_"), job.name


def test_listing_has_a_row_and_a_command_per_recipe():
    table = jobs_table(JOBS)

    for job in JOBS.values():
        row = next(line for line in table.splitlines() if line.startswith(job.name + " "))
        assert row.endswith(f"fedml jobs run {job.name}")
        assert job.dataset in row
        assert job.model in row


def test_unknown_job_lists_the_valid_names():
    with pytest.raises(
        ConfigError, match="unknown job 'mnist_lr_fedprx'; did you mean mnist_lr_fedprox"
    ) as err:
        get_job("mnist_lr_fedprx")

    assert all(name in str(err.value) for name in JOBS)


def test_a_recipe_without_its_card_fields_is_refused(tmp_path):
    (tmp_path / "bare.yaml").write_text("# Bare.\n# source: nowhere\ncommon_args: {random_seed: 0}\n")
    (tmp_path / "untitled.yaml").write_text("common_args: {random_seed: 0}\n")

    with pytest.raises(ConfigError, match=r"bare\.yaml: .* lacks 'expected accuracy'"):
        read_card(tmp_path / "bare.yaml")
    with pytest.raises(ConfigError, match=r"untitled\.yaml: a recipe starts with a comment line"):
        read_card(tmp_path / "untitled.yaml")


def test_a_bad_override_or_a_cf_is_refused():
    with pytest.raises(ConfigError, match="drop --cf"):
        run_job("mnist_lr_fedprox", ["--cf", "other.yaml"])
    with pytest.raises(ConfigError, match="comm_rounds"):
        run_job("mnist_lr_fedprox", ["comm_rounds=2"])


def test_cli_lists_and_refuses_an_unknown_job(capsys):
    listed = main(["jobs", "list"])
    listing = capsys.readouterr().out
    unknown = main(["jobs", "run", "nope", "comm_round=1"])
    error = capsys.readouterr().err

    assert listed == 0
    assert all(f"fedml jobs run {name}" in listing for name in JOBS)
    assert unknown == 2
    assert error.startswith("fedml: error: fedml jobs: unknown job 'nope'")
    assert main(["jobs", "run", "comm_round=1"]) == 2
    assert "needs a recipe NAME first" in capsys.readouterr().err


def test_cli_shows_a_recipe_file(capsys):
    assert main(["jobs", "show", "mnist_lr_fedprox"]) == 0
    assert capsys.readouterr().out == (JOBS_DIR / "mnist_lr_fedprox.yaml").read_text()


def test_cli_help_names_the_jobs_actions(capsys):
    assert main(["jobs", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: fedml jobs list")
    assert "fedml jobs run NAME [key=value ...]" in out
    assert main(["jobs", "frobnicate"]) == 2
    assert "expected list, show or run, got 'frobnicate'" in capsys.readouterr().err

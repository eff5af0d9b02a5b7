import json
from pathlib import Path

import numpy as np
import torch

from fedml.cli import main
from fedml.data import FederatedDataset, data_stats, stats_table, write_stats
from fedml.runs import find_runs


def dataset_of(sizes, classes=3):
    labels = torch.cat([torch.arange(n) % classes for n in sizes])
    x = torch.zeros(len(labels), 1)
    starts = np.cumsum([0, *sizes])
    clients = [list(range(starts[k], starts[k + 1])) for k in range(len(sizes))]
    return FederatedDataset.from_tensors(x, labels, x, labels, clients, output_dim=classes)


def test_counts_and_histograms_per_client():
    stats = data_stats(dataset_of([4, 1, 2]))

    assert stats.train.tolist() == [4, 1, 2]
    assert stats.labels.tolist() == [[2, 1, 1], [1, 0, 0], [1, 1, 0]]
    assert stats.test.tolist() == [4, 1, 2]

    table = stats_table(stats)
    rows = table.splitlines()
    assert "3 clients, 3 classes" in rows[0]
    assert "min 1, median 2, mean 2.3, max 4" in rows[1]
    assert rows[-3].split() == ["0", "4", "4", "3", "0:2", "1:1", "2:1"]


def test_many_clients_show_the_largest_and_smallest_only():
    sizes = list(range(1, 101))

    table = stats_table(data_stats(dataset_of(sizes)), rows=6)

    lines = table.splitlines()
    assert "showing the 3 largest and 3 smallest of 100 clients" in table
    listed = [int(line.split()[0]) for line in lines[4:]]
    assert listed == [99, 98, 97, 2, 1, 0]


def test_many_labels_are_cut_to_the_most_frequent():
    labels = torch.arange(20)
    x = torch.zeros(20, 1)

    table = stats_table(data_stats(FederatedDataset.from_tensors(x, labels, x, labels, [list(range(20))])))

    assert "(+14 more)" in table.splitlines()[-1]


def test_write_stats_puts_text_json_and_plot_in_a_new_folder(tmp_path):
    stats = data_stats(dataset_of([3, 5]))

    folder = write_stats(stats, tmp_path)

    assert folder.parent == tmp_path
    assert folder.name.endswith("-data-custom")
    assert json.loads((folder / "data_stats.json").read_text())["train_samples"] == [3, 5]
    assert (folder / "data_stats.png").read_bytes()[:4] == b"\x89PNG"
    assert (folder / "data_stats.txt").read_text() == stats_table(stats) + "\n"
    assert not list(folder.glob(".*partial"))
    assert find_runs(tmp_path) == []


def test_fedml_data_stats_prints_the_table_and_writes_the_plot(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(
        "data_args:\n  partition_method: shards\ntrain_args:\n  client_num_in_total: 25\n"
        f"tracking_args:\n  run_dir: {tmp_path / 'runs'}\n"
    )

    code = main(["data", "stats", "--cf", str(config)])

    out = capsys.readouterr().out
    assert code == 0
    assert "25 clients, 10 classes" in out
    assert "showing the 10 largest and 10 smallest of 25 clients" in out
    plot = out.strip().splitlines()[-1].removeprefix("plot: ")
    assert plot.startswith(str(tmp_path / "runs"))
    assert Path(plot).read_bytes()[:4] == b"\x89PNG"


def test_fedml_data_needs_the_stats_action(capsys):
    assert main(["data"]) == 2
    assert "expected stats" in capsys.readouterr().err

"""fedml.plots: a run's curves and several runs compared, as PNGs; matplotlib only when plotting."""

from __future__ import annotations

import math
import sys

import pytest

from fedml.plots import DPI, PANEL_INCHES, compare_figure, plot_compare, plot_run, run_figure

from .conftest import run_python

HISTORY = [
    {"round": 1, "test_accuracy": 0.5, "test_loss": 1.5, "train_loss": 1.7, "seconds": 0.1},
    {"round": 2, "test_accuracy": 0.7, "test_loss": 1.0, "train_loss": None, "seconds": 0.2},
    {"round": 3, "test_accuracy": 0.8, "test_loss": 0.8, "train_loss": math.nan, "seconds": 0.3},
]


def _size(panels: int) -> tuple[int, int]:
    width, height = PANEL_INCHES
    return round(height * panels * DPI), round(width * DPI)


def test_plot_run_writes_a_png_of_accuracy_and_loss_panels(tmp_path):
    image = pytest.importorskip("matplotlib.image")

    path = plot_run(HISTORY, tmp_path / "curves.png", "run")

    pixels = image.imread(path)
    assert pixels.shape[:2] == _size(2)
    assert pixels.std() > 0
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]


def test_clients_and_epsilon_add_panels(tmp_path):
    image = pytest.importorskip("matplotlib.image")
    with_clients = [{**record, "clients": 10 - record["round"]} for record in HISTORY]
    with_epsilon = [{**record, "epsilon": 0.5 * record["round"]} for record in with_clients]

    three = image.imread(plot_run(with_clients, tmp_path / "three.png", "run"))
    four = image.imread(plot_run(with_epsilon, tmp_path / "four.png", "run"))

    assert three.shape[:2] == _size(3)
    assert four.shape[:2] == _size(4)
    assert [ax.get_ylabel() for ax in run_figure(with_epsilon, "run").axes] == [
        "test accuracy",
        "loss",
        "clients aggregated",
        "epsilon spent",
    ]


def test_none_and_nan_values_are_left_out_of_their_curve():
    pytest.importorskip("matplotlib")

    loss = run_figure(HISTORY, "run").axes[1]

    test, train = loss.get_lines()
    assert list(test.get_xdata()) == [1, 2, 3]
    assert list(train.get_xdata()) == [1]


def test_compare_has_one_legend_entry_per_run(tmp_path):
    image = pytest.importorskip("matplotlib.image")
    runs = {"sgd": HISTORY, "adam": [{**r, "test_accuracy": r["test_accuracy"] / 2} for r in HISTORY]}

    figure = compare_figure(runs)
    path = plot_compare(runs, tmp_path / "compare.png")

    legend = figure.axes[0].get_legend()
    assert [text.get_text() for text in legend.get_texts()] == ["sgd", "adam"]
    assert figure.axes[1].get_legend() is None
    assert image.imread(path).shape[:2] == _size(2)


def test_a_missing_matplotlib_names_the_extra(tmp_path, monkeypatch):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)

    with pytest.raises(ImportError, match=r'pip install "fedml\[plots\]"'):
        plot_run(HISTORY, tmp_path / "curves.png", "run")
    assert not any(tmp_path.iterdir())


def test_import_fedml_does_not_import_matplotlib():
    code = "import sys, fedml, fedml.cli, fedml.plots, fedml.run_report; print('matplotlib' in sys.modules)"

    out = run_python("-c", code)

    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"

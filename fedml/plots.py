"""Plots of runs: one run's learning curves (``curves.png``) and several runs' curves overlaid.

matplotlib is optional (``pip install "fedml[plots]"``) and imported only when a plot is drawn, so
``import fedml`` never loads it. Figures are drawn on matplotlib's headless Agg canvas directly rather
than through ``pyplot``, so plotting neither needs a display nor changes the application's backend.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedml.core.files import atomic_write

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Record = Mapping[str, Any]
"""One evaluated round as a line of ``metrics.jsonl``: ``round``, ``test_accuracy``, ... (None: unknown)."""

PANEL_INCHES = (7.0, 2.6)
"""Width and height of one panel; a figure of ``n`` panels stacked is ``7.0 x 2.6 n`` inches."""

DPI = 100
"""Pixels per inch of the written PNGs."""


def run_figure(history: Sequence[Record], title: str) -> Figure:
    """Draw one run's curves, one panel per quantity stacked over a shared round axis.

    Panels: test accuracy; test and train loss; clients aggregated per round (when a record has
    ``clients``); the privacy budget epsilon spent so far (when a record has ``epsilon``). None and
    NaN values (a round whose clients had no samples) are left out of their curve.

    Parameters
    ----------
    history
        The run's records in round order (``RunResult.history`` or the lines of ``metrics.jsonl``).
    title
        The figure's title, usually the run directory's name.

    Raises
    ------
    ImportError
        When matplotlib is not installed, naming the extra that installs it.

    """
    panels: list[tuple[str, list[tuple[str, str]]]] = [
        ("test accuracy", [("test_accuracy", "test")]),
        ("loss", [("test_loss", "test"), ("train_loss", "train")]),
    ]
    if any(record.get("clients") is not None for record in history):
        panels.append(("clients aggregated", [("clients", "clients")]))
    if any(record.get("epsilon") is not None for record in history):
        panels.append(("epsilon spent", [("epsilon", "epsilon")]))
    figure = _figure(len(panels))
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (label, series) in zip(axes, panels, strict=True):
        for key, name in series:
            rounds, values = _series(history, key)
            ax.plot(rounds, values, marker="o", markersize=3, label=name)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if label == "clients aggregated":
            from matplotlib.ticker import MaxNLocator

            # Counts: whole numbers from zero, so a steady round shows as the flat line it is.
            ax.set_ylim(bottom=0, top=max([1.0, *_series(history, "clients")[1]]) * 1.15)
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        if len(series) > 1:
            ax.legend(loc="best", fontsize="small")
    if not history:
        axes[0].text(0.5, 0.5, "no evaluated rounds", ha="center", va="center", transform=axes[0].transAxes)
    _finish(axes[-1], figure, title)
    return figure


def compare_figure(runs: Mapping[str, Sequence[Record]]) -> Figure:
    """Draw the test accuracy and test loss of several runs overlaid, one legend entry per run.

    Parameters
    ----------
    runs
        Run name (the legend's label) -> that run's records in round order.

    Raises
    ------
    ImportError
        When matplotlib is not installed, naming the extra that installs it.

    """
    figure = _figure(2)
    accuracy, loss = figure.subplots(2, 1, sharex=True)
    for name, history in runs.items():
        line = accuracy.plot(*_series(history, "test_accuracy"), marker="o", markersize=3, label=name)[0]
        loss.plot(*_series(history, "test_loss"), marker="o", markersize=3, color=line.get_color())
    accuracy.set_ylabel("test accuracy")
    loss.set_ylabel("test loss")
    for ax in (accuracy, loss):
        ax.grid(alpha=0.3)
    accuracy.legend(loc="best", fontsize="small")
    _finish(loss, figure, f"{len(runs)} runs compared")
    return figure


def plot_run(history: Sequence[Record], path: Path, title: str) -> Path:
    """Write ``run_figure(history, title)`` to the PNG ``path`` atomically and return ``path``.

    Examples
    --------
    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp()) / "curves.png"
    >>> plot_run([{"round": 1, "test_accuracy": 0.5, "test_loss": 1.2, "train_loss": 1.4}], out, "demo").name
    'curves.png'

    """
    return save_png(run_figure(history, title), path)


def plot_compare(runs: Mapping[str, Sequence[Record]], path: Path) -> Path:
    """Write ``compare_figure(runs)`` to the PNG ``path`` atomically and return ``path``."""
    return save_png(compare_figure(runs), path)


def save_png(figure: Figure, path: Path) -> Path:
    """Render ``figure`` to PNG in memory, then write it to ``path`` atomically; return ``path``.

    Raises
    ------
    OSError
        When ``path`` cannot be written (a missing folder, a permission); ``path`` is unchanged.

    """
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    atomic_write(path, lambda file: file.write(buffer.getvalue()))
    return path


def new_figure(width: float, height: float) -> Figure:
    """Return an empty figure of ``width`` x ``height`` inches that renders without a display (Agg).

    Raises
    ------
    ImportError
        When matplotlib is not installed, naming the extra that installs it.

    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(
            "plots need the 'matplotlib' package, which is not installed; "
            'install it with: pip install "fedml[plots]"'
        ) from exc
    figure = Figure(figsize=(width, height), layout="tight")
    FigureCanvasAgg(figure)
    return figure


def _figure(panels: int) -> Figure:
    width, height = PANEL_INCHES
    return new_figure(width, height * panels)


def _series(history: Sequence[Record], key: str) -> tuple[list[float], list[float]]:
    """Return the rounds and values of ``key``, leaving out records where it is missing, None or NaN."""
    points = [
        (float(record["round"]), float(value))
        for record in history
        if isinstance(value := record.get(key), (int, float)) and math.isfinite(value)
    ]
    return [r for r, _ in points], [v for _, v in points]


def _finish(bottom: Axes, figure: Figure, title: str) -> None:
    from matplotlib.ticker import MaxNLocator

    bottom.set_xlabel("round")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.suptitle(title)

"""Plain-text reports of runs: the list (``fedml runs list``), one run in full (``show``), runs compared."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fedml.runs import RunInfo

HIGHLIGHTS = (
    "common_args.random_seed",
    "data_args.partition_method",
    "data_args.partition_alpha",
    "train_args.client_num_in_total",
    "train_args.client_num_per_round",
    "train_args.comm_round",
    "train_args.epochs",
    "train_args.batch_size",
    "train_args.client_optimizer",
    "train_args.learning_rate",
    "defense_args.defense_type",
    "attack_args.attack_type",
)
"""The ``config.yaml`` keys ``fedml runs show`` lists (those a run has and that are set)."""

_METRIC_ORDER = ("round", "test_accuracy", "test_loss", "train_loss", "clients", "epsilon", "seconds")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """Return ``rows`` under ``headers`` as aligned plain text; columns in ``right`` align right.

    Examples
    --------
    >>> print(format_table(["run", "acc"], [["a", "9.5%"], ["bb", "10.0%"]], right=[1]))
    run    acc
    ---  -----
    a     9.5%
    bb   10.0%

    """
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        padded = (
            str(c).rjust(w) if i in right else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        return "  ".join(padded).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def runs_table(runs: Sequence[RunInfo]) -> str:
    """Return the table ``fedml runs list`` prints: one row per run, in the order given."""
    headers = ["name", "date", "dataset", "model", "algorithm", "backend", "rounds", "accuracy", "wall"]
    rows = [
        [
            run.name,
            run.date.strftime("%Y-%m-%d %H:%M") if run.date else "-",
            run.dataset or "-",
            run.model or "-",
            run.algorithm or "-",
            run.backend or "-",
            rounds_text(run),
            percent(run.final_accuracy),
            duration(run.wall_seconds),
            run.status,
        ]
        for run in runs
    ]
    return format_table([*headers, "status"], rows, right=[6, 7, 8])


def rounds_text(run: RunInfo) -> str:
    """Return ``"5"``, or ``"3/5"`` for a run that completed fewer rounds than it planned."""
    if run.planned_rounds and run.rounds != run.planned_rounds:
        return f"{run.rounds}/{run.planned_rounds}"
    return str(run.rounds)


def percent(value: float | None) -> str:
    """Return a fraction as a percentage with two decimals, or ``-`` for None."""
    return "-" if value is None else f"{100 * value:.2f}%"


def duration(seconds: float | None) -> str:
    """Return ``seconds`` as ``0.0123s``, ``4.2s``, ``3m05s`` or ``2h01m``; ``-`` for None."""
    if seconds is None:
        return "-"
    if seconds < 59.5:
        return f"{seconds:.3g}s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def show_report(run: RunInfo) -> str:
    """Return what ``fedml runs show`` prints: the run, its config highlights, final metrics, timings, rounds.

    Examples
    --------
    >>> from pathlib import Path
    >>> run = RunInfo(Path("runs/r1"), "r1", None, dataset="mnist", rounds=1,
    ...               history=[{"round": 1, "test_accuracy": 0.5, "test_loss": 1.0}])
    >>> print(show_report(run))
    run     r1
    path    runs/r1
    status  ok
    ran     mnist on -, rounds 1
    <BLANKLINE>
    final metrics
      round          1
      test_accuracy  50.00%
      test_loss      1.0000
    <BLANKLINE>
    rounds
    round  test_accuracy  test_loss
    -----  -------------  ---------
        1         50.00%     1.0000

    """
    summary = run.summary or {}
    status = f"{run.status}: {run.error}" if run.error else run.status
    what = " / ".join(x for x in (run.dataset, run.model, run.algorithm) if x) or "-"
    versions = [f"{name} {summary[key]}" for name, key in _VERSIONS if summary.get(key)]
    sections = [
        _pairs(
            None,
            [
                ("run", run.name),
                ("path", str(run.path)),
                ("status", status),
                ("started", run.date.isoformat(sep=" ") if run.date else "-"),
                ("ran", f"{what} on {run.backend or '-'}, rounds {rounds_text(run)}"),
                ("versions", ", ".join(versions)),
            ],
        ),
        _pairs("config", [(key.partition(".")[2], _value(run.setting(key))) for key in HIGHLIGHTS]),
        _pairs("final metrics", [(k, _metric(k, v)) for k, v in _ordered(run.final_metrics)]),
        _pairs("timings", _timing_pairs(run)),
    ]
    if run.history:
        keys = _metric_keys(run.history)
        rows = [[_metric(k, record.get(k)) for k in keys] for record in run.history]
        sections.append("rounds\n" + format_table(keys, rows, right=range(len(keys))))
    return "\n\n".join(s for s in sections if s)


def compare_report(runs: Sequence[RunInfo]) -> str:
    """Return the side-by-side table ``fedml runs compare`` prints: one column per run.

    Rows: what ran, the outcome (final and best accuracy, final test loss, wall time), then every
    ``config.yaml`` key whose value differs between the runs.
    """
    rows: list[list[str]] = [
        ["status", *(run.status for run in runs)],
        ["dataset", *(run.dataset or "-" for run in runs)],
        ["model", *(run.model or "-" for run in runs)],
        ["algorithm", *(run.algorithm or "-" for run in runs)],
        ["backend", *(run.backend or "-" for run in runs)],
        ["rounds", *(rounds_text(run) for run in runs)],
        ["final accuracy", *(percent(run.final_accuracy) for run in runs)],
        ["best accuracy", *(_best(run) for run in runs)],
        ["final test loss", *(_metric("test_loss", run.final_metrics.get("test_loss")) for run in runs)],
        ["wall", *(duration(run.wall_seconds) for run in runs)],
    ]
    keys = sorted({f"{s}.{k}" for run in runs for s, keys in run.config.items() for k in keys})
    for key in keys:
        values = [_value(run.setting(key)) for run in runs]
        if len(set(values)) > 1:
            rows.append([key, *values])
    return format_table(["", *(run.name for run in runs)], rows)


_VERSIONS = (("fedml", "fedml_version"), ("torch", "torch_version"), ("git", "git_commit"))


def _timing_pairs(run: RunInfo) -> list[tuple[str, str]]:
    summary = run.summary or {}
    phases = summary.get("phases") or run.timings.get("phases") or {}
    pairs = [("wall", duration(run.wall_seconds))]
    pairs += [
        (name, duration(seconds)) for name, seconds in phases.items() if isinstance(seconds, float | int)
    ]
    per_round = run.timings.get("round_seconds") or []
    if per_round:
        pairs.append(("per round", f"{duration(sum(per_round) / len(per_round))} mean of {len(per_round)}"))
    pairs.append(("engine", str(run.timings.get("engine") or "")))
    if isinstance(summary.get("peak_memory_mb"), float | int):
        pairs.append(("peak memory", f"{summary['peak_memory_mb']:.0f} MB"))
    return pairs


def _pairs(title: str | None, pairs: list[tuple[str, str]]) -> str:
    pairs = [(key, value) for key, value in pairs if value not in ("", "-")]
    if not pairs:
        return ""
    width = max(len(key) for key, _ in pairs)
    indent = "" if title is None else "  "
    lines = [f"{indent}{key.ljust(width)}  {value}" for key, value in pairs]
    return "\n".join(lines if title is None else [title, *lines])


def _ordered(record: dict[str, Any]) -> list[tuple[str, Any]]:
    return sorted(record.items(), key=lambda item: _rank(item[0]))


def _metric_keys(history: list[dict[str, Any]]) -> list[str]:
    keys = {key for record in history for key in record}
    return sorted(keys, key=_rank)


def _rank(key: str) -> tuple[int, str]:
    return (_METRIC_ORDER.index(key), "") if key in _METRIC_ORDER else (len(_METRIC_ORDER), key)


def _metric(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key.endswith("accuracy") and isinstance(value, float | int):
        return percent(value)
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _value(value: Any) -> str:
    return "-" if value is None else str(value)


def _best(run: RunInfo) -> str:
    scored = [r for r in run.history if isinstance(r.get("test_accuracy"), float | int)]
    if not scored:
        return "-"
    best = max(scored, key=lambda r: r["test_accuracy"])
    return f"{percent(best['test_accuracy'])} (round {best['round']})"

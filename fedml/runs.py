"""Run directories read back: one run's record (``read_run``), every run under a folder, a run by name.

A run directory (written by ``fedml.tracking.RunTracker``) holds ``config.yaml``, ``metrics.jsonl``,
``timings.json`` and, at the end of a run, ``summary.json``; a failed run holds ``error.txt``.
``summary.json`` is read when present; older and failed runs fall back to the other files.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from fedml.errors import ConfigError

RUN_FILES = ("summary.json", "config.yaml", "metrics.jsonl")
"""A folder holding any of these is a run directory."""

STATUSES = ("ok", "failed", "incomplete", "unreadable")
"""``RunInfo.status``: finished; stopped by an error (``error.txt``); neither (still running, or killed);
a file of it is corrupt (``RunInfo.error`` says which and where)."""

_STAMP = re.compile(r"^(\d{8}-\d{6})-")


@dataclass
class RunInfo:
    """One run directory, read back.

    Attributes
    ----------
    path, name
        The run directory and its name (``<YYYYmmdd-HHMMSS>-<run_name>``).
    date
        When the run started (local time), or None when nothing says.
    dataset, model, algorithm, backend
        What ran (empty when not known).
    rounds
        Rounds completed; ``planned_rounds`` is ``train_args.comm_round`` (0 when not known).
    final_accuracy
        Test accuracy at the last evaluation, or None.
    wall_seconds
        Wall time of the run, or None when not known.
    status
        One of ``STATUSES``.
    error
        Why the run failed (``error.txt``'s first line) or why it cannot be read; empty otherwise.
    history, config, timings, summary
        The lines of ``metrics.jsonl``, ``config.yaml`` by section, ``timings.json`` and ``summary.json``
        (None when absent).

    """

    path: Path
    name: str
    date: datetime | None
    dataset: str = ""
    model: str = ""
    algorithm: str = ""
    backend: str = ""
    rounds: int = 0
    planned_rounds: int = 0
    final_accuracy: float | None = None
    wall_seconds: float | None = None
    status: str = "ok"
    error: str = ""
    history: list[dict[str, Any]] = field(default_factory=list, repr=False)
    config: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    timings: dict[str, Any] = field(default_factory=dict, repr=False)
    summary: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def final_metrics(self) -> dict[str, Any]:
        """The last evaluation (``round``, ``test_accuracy``, ...): the summary's, else the last record."""
        if self.summary and isinstance(self.summary.get("final_metrics"), dict):
            return dict(self.summary["final_metrics"])
        return dict(self.history[-1]) if self.history else {}

    def setting(self, dotted: str) -> Any:
        """Return the value of ``section.key`` in ``config.yaml``, or None when the run has no such key."""
        section, _, key = dotted.partition(".")
        return self.config.get(section, {}).get(key)


def is_run_dir(path: Path) -> bool:
    """Return whether ``path`` is a folder holding one of ``RUN_FILES``."""
    return path.is_dir() and any((path / name).is_file() for name in RUN_FILES)


def read_run(path: Path) -> RunInfo:
    """Read the run directory ``path``.

    Raises
    ------
    ConfigError
        When ``path`` is not a run directory, or one of its files is corrupt: the message names the
        file and, where it can, the line.

    """
    if not is_run_dir(path):
        raise ConfigError(f"{path}: not a run directory (it has none of {', '.join(RUN_FILES)})")
    summary = read_json(path / "summary.json")
    config = read_config(path / "config.yaml")
    timings = read_json(path / "timings.json") or {}
    history = read_history(path / "metrics.jsonl")
    s = summary or {}
    train = config.get("train_args", {})
    done = max([history[-1]["round"] if history else 0, len(timings.get("round_seconds") or [])])
    if (path / "error.txt").is_file():
        status = "failed"
        error = _first_line(path / "error.txt")
    else:
        status = "ok" if summary is not None or timings else "incomplete"
        error = ""
    info = RunInfo(
        path=path,
        name=path.name,
        date=_started(s.get("started")) or _date_of(path),
        dataset=str(s.get("dataset") or config.get("data_args", {}).get("dataset") or ""),
        model=str(s.get("model") or config.get("model_args", {}).get("model") or ""),
        algorithm=str(s.get("algorithm") or train.get("federated_optimizer") or ""),
        backend=str(s.get("backend") or config.get("comm_args", {}).get("backend") or ""),
        rounds=s["rounds"] if isinstance(s.get("rounds"), int) else done,
        planned_rounds=planned if isinstance(planned := train.get("comm_round"), int) else 0,
        status=status,
        error=error,
        history=history,
        config=config,
        timings=timings,
        summary=summary,
    )
    accuracy = info.final_metrics.get("test_accuracy")
    info.final_accuracy = float(accuracy) if isinstance(accuracy, (int, float)) else None
    info.wall_seconds = _wall_seconds(s, timings, history)
    return info


def find_runs(run_dir: Path) -> list[RunInfo]:
    """Return the runs in ``run_dir``, newest first; folders and files that are not runs are skipped.

    A run whose files are corrupt is listed with status ``unreadable`` and the problem in ``error``, so
    one broken run does not hide the others.

    Raises
    ------
    ConfigError
        When ``run_dir`` is not a folder.

    """
    runs = []
    for path in _run_dirs(run_dir):
        try:
            runs.append(read_run(path))
        except ConfigError as exc:
            runs.append(RunInfo(path, path.name, _date_of(path), status="unreadable", error=str(exc)))
    return sorted(runs, key=lambda run: (run.date or datetime.min, run.name), reverse=True)


def resolve_run(run_dir: Path, spec: str) -> Path:
    """Return the run directory that ``spec`` names.

    ``spec`` is a path to a run directory, or the name of one in ``run_dir``, or a prefix or part of
    exactly one such name (``20250101-1200``, ``mnist-cnn``): an exact name wins over prefixes, and a
    prefix over parts.

    Raises
    ------
    ConfigError
        When ``spec`` names no run (the message lists close names) or several (it lists them).

    """
    candidate = Path(spec).expanduser()
    if is_run_dir(candidate):
        return candidate
    if "/" in spec or candidate.is_absolute():
        raise ConfigError(f"{spec}: not a run directory (it has none of {', '.join(RUN_FILES)})")
    names = [path.name for path in _run_dirs(run_dir)]
    for matches in (
        [name for name in names if name == spec],
        [name for name in names if name.startswith(spec)],
        [name for name in names if spec in name],
    ):
        if len(matches) == 1:
            return run_dir / matches[0]
        if len(matches) > 1:
            raise ConfigError(f"run {spec!r} is ambiguous in {run_dir}: it matches {_listing(matches)}")
    close = _close_names(spec, names)
    hint = f"; did you mean {_listing(close)}?" if close else f" ({len(names)} runs there)"
    raise ConfigError(f"no run {spec!r} in {run_dir}{hint}")


def read_history(path: Path) -> list[dict[str, Any]]:
    """Read ``metrics.jsonl``: one record per line, each with an integer ``round``; [] when absent.

    A last line without its newline that is not JSON is a record cut short when the run was killed,
    and is left out.

    Raises
    ------
    ConfigError
        Naming the file and line of a line that is not a JSON record.

    """
    text = _read_text(path)
    if text is None:
        return []
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            if number == len(lines):
                break
            raise ConfigError(f"{path}:{number}: not a JSON record ({exc})") from None
        if not isinstance(record, dict) or type(record.get("round")) is not int:
            raise ConfigError(f"{path}:{number}: a record needs an integer 'round', got {line[:60]!r}")
        records.append(record)
    return records


def read_config(path: Path) -> dict[str, dict[str, Any]]:
    """Read ``config.yaml`` as section -> keys; {} when absent.

    Raises
    ------
    ConfigError
        Naming the file and line of invalid YAML, or the file when it is not sections of keys.

    """
    text = _read_text(path)
    if text is None:
        return {}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"{path}{where}: not valid YAML ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(isinstance(v, dict | None) for v in data.values()):
        raise ConfigError(f"{path}: expected sections of keys (common_args: ..., train_args: ...)")
    return {str(name): dict(keys or {}) for name, keys in data.items()}


def read_json(path: Path) -> dict[str, Any] | None:
    """Read a JSON object (``summary.json``, ``timings.json``); None when the file is absent.

    Raises
    ------
    ConfigError
        Naming the file and line of invalid JSON, or the file when it is not an object.

    """
    text = _read_text(path)
    if text is None:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _run_dirs(run_dir: Path) -> list[Path]:
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such folder of runs (tracking_args.run_dir; pass --run_dir DIR)")
    return sorted(path for path in run_dir.iterdir() if is_run_dir(path))


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _first_line(path: Path) -> str:
    text = _read_text(path) or ""
    return text.strip().splitlines()[0] if text.strip() else "(error.txt is empty)"


def _started(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        started = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    # Naive local time, like the stamps of run directory names, so the two sort together.
    return started.astimezone().replace(tzinfo=None) if started.tzinfo else started


def _date_of(path: Path) -> datetime | None:
    match = _STAMP.match(path.name)
    if match:
        try:
            return datetime.strptime(match.group(1), "%Y%m%d-%H%M%S")
        except ValueError:
            pass
    try:
        return datetime.fromtimestamp(path.stat().st_mtime)
    except OSError:
        return None


def _wall_seconds(
    summary: dict[str, Any], timings: dict[str, Any], history: list[dict[str, Any]]
) -> float | None:
    if isinstance(summary.get("wall_seconds"), (int, float)):
        return float(summary["wall_seconds"])
    phases = timings.get("phases")
    if isinstance(phases, dict) and phases:
        return float(sum(v for v in phases.values() if isinstance(v, (int, float))))
    # No timings (a failed or killed run): the last record's seconds since the run started.
    seconds = history[-1].get("seconds") if history else None
    return float(seconds) if isinstance(seconds, (int, float)) else None


def _close_names(spec: str, names: list[str]) -> list[str]:
    def score(name: str) -> float:
        short = _STAMP.sub("", name)
        return max(difflib.SequenceMatcher(None, spec, n).ratio() for n in (name, short))

    return sorted((n for n in names if score(n) >= 0.5), key=score, reverse=True)[:3]


def _listing(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"

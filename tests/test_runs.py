"""Run directories read back (fedml.runs), their reports (fedml.run_report) and ``fedml runs``."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

import fedml
from fedml.errors import ConfigError
from fedml.run_report import compare_report, format_table, runs_table, show_report
from fedml.runs import find_runs, read_run, resolve_run

from .conftest import run_python

SUMMARY = {
    "name": "own-summary",
    "started": "2030-01-02T03:04:05+00:00",
    "wall_seconds": 12.5,
    "phases": {"setup": 0.5, "rounds": 12.0},
    "peak_memory_mb": 321.0,
    "final_metrics": {"round": 2, "test_accuracy": 0.625, "test_loss": 0.9, "train_loss": 0.8},
    "rounds": 2,
    "seed": 0,
    "dataset": "my-dataset",
    "model": "my-model",
    "algorithm": "FedAvg",
    "backend": "sp",
    "training_type": "simulation",
    "fedml_version": "0.1.0",
    "torch_version": "2.5.0",
    "git_commit": "abc1234",
}


@dataclass
class Runs:
    folder: Path
    small: Path  # learning rate 0.03, summary.json removed: read from the other files
    large: Path  # learning rate 0.1, as the run left it
    summary: Path  # a copy of ``large`` with the summary.json above
    failed: Path  # one round of two, then error.txt, no timings.json
    ancient: Path  # a copy of ``small`` whose name dates it in 2000


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    folder = tmp_path_factory.mktemp("runs")
    small, large = (
        fedml.run_simulation(
            argv=[], comm_round=2, download=False, run_dir=str(folder), learning_rate=lr, run_name=name
        ).run_dir
        for lr, name in ((0.03, "lr-small"), (0.1, "lr-large"))
    )
    (small / "summary.json").unlink(missing_ok=True)
    summary = shutil.copytree(large, folder / "20300102-030405-own-summary")
    (summary / "summary.json").write_text(json.dumps(SUMMARY))
    failed = shutil.copytree(small, folder / f"{small.name[:15]}-crashed")
    first = (failed / "metrics.jsonl").read_text().splitlines()[0]
    (failed / "metrics.jsonl").write_text(first + "\n")
    (failed / "timings.json").unlink()
    (failed / "error.txt").write_text("RuntimeError: boom\nmore detail\n")
    ancient = shutil.copytree(small, folder / "20000101-000000-ancient")
    (folder / "notes").mkdir()
    (folder / "notes" / "todo.txt").write_text("not a run")
    (folder / "compare-20250101-000000.png").write_bytes(b"png")
    return Runs(folder, small, large, summary, failed, ancient)


def _corrupt(runs: Runs, tmp_path: Path, name: str, text: str) -> Path:
    run = shutil.copytree(runs.small, tmp_path / f"20250101-000000-{name}")
    (run / name).write_text(text)
    return run


def test_a_run_without_summary_is_read_from_its_other_files(runs):
    history = [json.loads(line) for line in (runs.small / "metrics.jsonl").read_text().splitlines()]
    phases = json.loads((runs.small / "timings.json").read_text())["phases"]

    run = read_run(runs.small)

    assert run.summary is None
    assert (run.dataset, run.model, run.algorithm, run.backend) == ("mnist", "lr", "FedAvg", "sp")
    assert (run.rounds, run.planned_rounds, run.status) == (2, 2, "ok")
    assert run.final_accuracy == history[-1]["test_accuracy"]
    assert run.wall_seconds == pytest.approx(sum(phases.values()))
    assert run.date is not None
    assert run.date.strftime("%Y%m%d-%H%M%S") == run.name[:15]
    assert run.setting("train_args.learning_rate") == 0.03


def test_summary_json_wins_over_the_other_files(runs):
    run = read_run(runs.summary)

    assert (run.dataset, run.model) == ("my-dataset", "my-model")
    assert run.wall_seconds == 12.5
    assert run.final_accuracy == 0.625
    assert run.final_metrics["test_loss"] == 0.9
    assert run.date is not None
    assert run.date.year == 2030


def test_a_failed_run_reports_its_error_and_the_rounds_it_reached(runs):
    run = read_run(runs.failed)

    assert run.status == "failed"
    assert run.error == "RuntimeError: boom"
    assert (run.rounds, run.planned_rounds) == (1, 2)
    assert run.wall_seconds == run.history[-1]["seconds"]


def test_find_runs_lists_runs_newest_first_and_skips_the_rest(runs):
    found = find_runs(runs.folder)

    assert found[0].path == runs.summary
    assert found[-1].path == runs.ancient
    assert {run.path for run in found} == {
        runs.small,
        runs.large,
        runs.summary,
        runs.failed,
        runs.ancient,
    }


def test_find_runs_refuses_a_missing_folder(tmp_path):
    with pytest.raises(ConfigError, match="no such folder of runs"):
        find_runs(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("lr-large", "large"), ("20000101", "ancient"), ("own-sum", "summary"), ("crashed", "failed")],
)
def test_resolve_run_by_name_prefix_or_part(runs, spec, expected):
    assert resolve_run(runs.folder, spec) == getattr(runs, expected)


def test_resolve_run_takes_a_path_and_an_exact_name(runs, tmp_path):
    assert resolve_run(tmp_path, str(runs.large)) == runs.large
    assert resolve_run(runs.folder, runs.small.name) == runs.small
    with pytest.raises(ConfigError, match="not a run directory"):
        resolve_run(runs.folder, str(runs.folder / "notes"))


def test_an_ambiguous_run_lists_what_it_matches(runs):
    with pytest.raises(ConfigError, match="ambiguous") as error:
        resolve_run(runs.folder, "lr-")

    assert runs.small.name in str(error.value)
    assert runs.large.name in str(error.value)


def test_an_unknown_run_suggests_close_names(runs):
    with pytest.raises(ConfigError, match="no run 'lr-lareg'") as error:
        resolve_run(runs.folder, "lr-lareg")

    assert f"did you mean {runs.large.name}" in str(error.value)


def test_a_corrupt_metrics_line_names_the_file_and_line(runs, tmp_path):
    good = (runs.small / "metrics.jsonl").read_text().splitlines()
    run = _corrupt(runs, tmp_path, "metrics.jsonl", f"{good[0]}\n{{not json\n{good[1]}\n")

    with pytest.raises(ConfigError, match=r"metrics\.jsonl:2: not a JSON record"):
        read_run(run)


def test_a_record_cut_short_at_the_end_is_left_out(runs, tmp_path):
    good = (runs.small / "metrics.jsonl").read_text().splitlines()
    run = _corrupt(runs, tmp_path, "metrics.jsonl", f"{good[0]}\n{good[1][:20]}")

    assert [record["round"] for record in read_run(run).history] == [1]


def test_a_corrupt_config_names_the_file_and_line(runs, tmp_path):
    run = _corrupt(runs, tmp_path, "config.yaml", "common_args:\n  random_seed: 0\ntrain_args: [1, 2\n")

    with pytest.raises(ConfigError, match=r"config\.yaml:\d+: not valid YAML"):
        read_run(run)
    listed = find_runs(tmp_path)
    assert [(r.status, "config.yaml" in r.error) for r in listed] == [("unreadable", True)]


def test_format_table_aligns_columns():
    text = format_table(["name", "n"], [["a", "1"], ["long", "100"]], right=[1])

    assert text.splitlines() == ["name    n", "----  ---", "a       1", "long  100"]


def test_runs_table_has_a_row_per_run_with_its_numbers(runs):
    found = find_runs(runs.folder)
    small = read_run(runs.small)

    lines = runs_table(found).splitlines()

    assert lines[0].split() == [
        "name",
        "date",
        "dataset",
        "model",
        "algorithm",
        "backend",
        "rounds",
        "accuracy",
        "wall",
        "status",
    ]
    assert len(lines) == 2 + len(found)
    row = next(line for line in lines if line.startswith(runs.small.name)).split()
    assert row[3:8] == ["mnist", "lr", "FedAvg", "sp", "2"]
    assert row[8] == f"{100 * small.final_accuracy:.2f}%"
    failed = next(line for line in lines if line.startswith(runs.failed.name)).split()
    assert failed[-1] == "failed"
    assert "1/2" in failed


def test_show_report_has_config_final_metrics_timings_and_rounds(runs):
    run = read_run(runs.small)

    text = show_report(run)

    assert "learning_rate         0.03" in text
    assert f"test_accuracy  {100 * run.final_accuracy:.2f}%" in text
    assert "timings" in text
    assert "engine     vectorized" in text
    rounds = text.split("rounds\n", 1)[1].splitlines()
    assert [line.split()[0] for line in rounds[2:]] == ["1", "2"]
    assert "failed: RuntimeError: boom" in show_report(read_run(runs.failed))
    assert "peak memory  321 MB" in show_report(read_run(runs.summary))


def test_compare_report_puts_runs_side_by_side_with_what_differs(runs):
    text = compare_report([read_run(runs.small), read_run(runs.large)])

    lines = text.splitlines()
    assert lines[0].split() == [runs.small.name, runs.large.name]
    assert next(line for line in lines if line.startswith("train_args.learning_rate")).split()[1:] == [
        "0.03",
        "0.1",
    ]
    assert not any(line.startswith("train_args.epochs") for line in lines)


def test_cli_runs_list_prints_the_table(runs):
    out = run_python("-m", "fedml", "runs", "list", "--run_dir", str(runs.folder))

    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].startswith("name")
    for path in (runs.small, runs.large, runs.failed):
        assert path.name in out.stdout


def test_cli_runs_list_reads_the_run_dir_from_a_config_file(runs, tmp_path):
    config = tmp_path / "fedml.yaml"
    config.write_text(f"tracking_args:\n  run_dir: {runs.folder}\n")

    out = run_python("-m", "fedml", "runs", "list", "--cf", str(config))

    assert out.returncode == 0, out.stderr
    assert runs.ancient.name in out.stdout


def test_cli_runs_show_and_plot(runs):
    pytest.importorskip("matplotlib")
    shown = run_python("-m", "fedml", "runs", "show", "lr-small", "--run_dir", str(runs.folder))
    plotted = run_python("-m", "fedml", "runs", "plot", "lr-large", "--run_dir", str(runs.folder))

    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("run ")
    assert runs.small.name in shown.stdout.splitlines()[0]
    assert plotted.returncode == 0, plotted.stderr
    assert plotted.stdout.strip() == str(runs.large / "curves.png")
    assert (runs.large / "curves.png").stat().st_size > 0


def test_cli_runs_compare_prints_the_table_and_writes_the_plot(runs, tmp_path):
    pytest.importorskip("matplotlib")
    out_file = tmp_path / "both.png"

    given = run_python(
        "-m",
        "fedml",
        "runs",
        "compare",
        "lr-small",
        "--out",
        str(out_file),
        "lr-large",
        "--run_dir",
        str(runs.folder),
    )
    default = run_python("-m", "fedml", "runs", "compare", str(runs.small), str(runs.failed))

    assert given.returncode == 0, given.stderr
    assert "train_args.learning_rate" in given.stdout
    assert given.stdout.splitlines()[-1] == f"plot: {out_file}"
    assert out_file.stat().st_size > 0
    assert default.returncode == 0, default.stderr
    written = Path(default.stdout.splitlines()[-1].removeprefix("plot: "))
    assert written.parent == runs.folder
    assert written.name.startswith("compare-")
    assert written.is_file()


def test_cli_unknown_run_is_one_line_and_exit_2(runs):
    out = run_python("-m", "fedml", "runs", "show", "no-such-run", "--run_dir", str(runs.folder))

    assert out.returncode == 2
    assert out.stderr.startswith("fedml: error: no run 'no-such-run'")
    assert len(out.stderr.splitlines()) == 1


def test_cli_runs_refuses_a_wrong_number_of_runs(runs):
    out = run_python("-m", "fedml", "runs", "compare", "lr-small", "--run_dir", str(runs.folder))

    assert out.returncode == 2
    assert "takes 2 or more RUNs" in out.stderr

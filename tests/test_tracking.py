import io
import json
import logging
import re
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml

from fedml import tracking
from fedml.tracking import Progress, RunResult, RunTracker, configure_logging, role_logger

STAMP = "20240102-030405"


@pytest.fixture
def fixed_clock(monkeypatch):
    """Make every run directory carry the timestamp ``STAMP``."""
    monkeypatch.setattr(tracking.time, "strftime", lambda fmt: STAMP)


@contextmanager
def bare_logging():
    """Strip the root and ``fedml`` loggers of handlers and the ``fedml`` level; restore them on exit.

    Used inside the test body, because pytest adds its capturing handlers to the root logger only then.
    """
    root, fedml_logger = logging.getLogger(), logging.getLogger("fedml")
    saved = [(lg, lg.handlers[:], lg.level) for lg in (root, fedml_logger)]
    for lg in (root, fedml_logger):
        lg.handlers = []
    fedml_logger.setLevel(logging.NOTSET)
    try:
        yield fedml_logger
    finally:
        for lg, handlers, level in saved:
            lg.handlers = handlers
            lg.setLevel(level)


def lines_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_run_directory_is_timestamp_dataset_model_and_optimizer(make_args, tmp_path):
    args = make_args()

    tracker = RunTracker(args)

    assert tracker.run_dir.parent == tmp_path / "runs"
    assert re.fullmatch(r"\d{8}-\d{6}-mnist-lr-FedAvg", tracker.run_dir.name)
    assert tracker.run_dir.is_dir()


def test_run_name_replaces_the_default_name(make_args, fixed_clock):
    tracker = RunTracker(make_args(run_name="exp-1", federated_optimizer="FedProx"))

    assert tracker.run_dir.name == f"{STAMP}-exp-1"


def test_runs_started_in_the_same_second_get_numbered_directories(make_args, fixed_clock):
    args = make_args()

    names = [RunTracker(args).run_dir.name for _ in range(3)]

    assert names == [f"{STAMP}-mnist-lr-FedAvg", f"{STAMP}-mnist-lr-FedAvg-2", f"{STAMP}-mnist-lr-FedAvg-3"]


def test_config_yaml_is_the_resolved_configuration(make_args):
    args = make_args(comm_round=3, learning_rate=0.05)

    tracker = RunTracker(args)
    written = yaml.safe_load((tracker.run_dir / "config.yaml").read_text(encoding="utf-8"))

    assert written == args.to_dict()
    assert written["train_args"]["comm_round"] == 3
    assert written["train_args"]["learning_rate"] == 0.05


def test_config_yaml_keeps_the_section_order(make_args):
    args = make_args()

    tracker = RunTracker(args)
    written = yaml.safe_load((tracker.run_dir / "config.yaml").read_text(encoding="utf-8"))

    assert list(written) == list(args.to_dict())


def test_each_log_round_appends_one_metrics_line_at_once(make_args):
    tracker = RunTracker(make_args())
    metrics = tracker.run_dir / "metrics.jsonl"

    first = tracker.log_round(0, {"accuracy": 0.5, "loss": 1.25}, train_loss=2.0)
    after_one = lines_of(metrics)
    second = tracker.log_round(4, {"accuracy": 0.75, "loss": 0.5}, train_loss=1.0)

    assert after_one == [first]
    assert lines_of(metrics) == [first, second]
    assert tracker.history == [first, second]
    assert {k: first[k] for k in ("round", "test_accuracy", "test_loss", "train_loss")} == {
        "round": 1,
        "test_accuracy": 0.5,
        "test_loss": 1.25,
        "train_loss": 2.0,
    }
    assert second["round"] == 5
    assert 0 <= first["seconds"] <= second["seconds"]


def test_log_round_stores_plain_floats(make_args):
    tracker = RunTracker(make_args())

    record = tracker.log_round(0, {"accuracy": torch.tensor(0.25), "loss": 3}, train_loss=torch.tensor(1.5))

    assert [type(record[k]) for k in ("test_accuracy", "test_loss", "train_loss")] == [float, float, float]
    assert record["test_loss"] == 3.0


def test_start_and_log_round_write_role_prefixed_lines(make_args, caplog):
    tracker = RunTracker(make_args(comm_round=4))

    with caplog.at_level(logging.INFO, logger="fedml"):
        tracker.start(client_num=10)
        tracker.log_round(1, {"accuracy": 0.875, "loss": 0.1}, train_loss=0.2)

    assert [r.getMessage() for r in caplog.records] == [
        "[FedML-Server(0)]: Dataset: mnist, Clients: 10, Rounds: 4, Algorithm: FedAvg",
        "[FedML-Server(0)]: Round 2: Training completed with accuracy 87.5%.",
    ]


def test_finish_saves_the_model_and_returns_the_result(make_args, caplog):
    tracker = RunTracker(make_args(save_model=True))
    tracker.log_round(0, {"accuracy": 0.5, "loss": 1.0}, train_loss=1.5)
    last = tracker.log_round(1, {"accuracy": 0.625, "loss": 0.75}, train_loss=1.0)
    state = {"w": torch.arange(3.0), "n": torch.tensor(7)}

    with caplog.at_level(logging.INFO, logger="fedml"):
        result = tracker.finish(state)

    saved = torch.load(tracker.run_dir / "model.pt", weights_only=True)
    assert set(saved) == {"w", "n"}
    assert torch.equal(saved["w"], state["w"])
    assert torch.equal(saved["n"], state["n"])
    assert isinstance(result, RunResult)
    assert result.final_metrics == last
    assert result.history == tracker.history
    assert result.run_dir == tracker.run_dir
    assert result.model_state is state
    assert "[FedML-Server(0)]: Final Accuracy after Round 2: 62.5%." in [
        r.getMessage() for r in caplog.records
    ]


def test_finish_without_save_model_writes_no_model(make_args):
    tracker = RunTracker(make_args(save_model=False))
    tracker.log_round(0, {"accuracy": 0.5, "loss": 1.0}, train_loss=1.5)

    result = tracker.finish({"w": torch.zeros(1)})

    assert not (tracker.run_dir / "model.pt").exists()
    assert len(lines_of(tracker.run_dir / "metrics.jsonl")) == 1
    assert result.final_metrics["round"] == 1


def test_finish_without_evaluated_rounds_has_empty_final_metrics(make_args, caplog):
    tracker = RunTracker(make_args())

    with caplog.at_level(logging.INFO, logger="fedml"):
        result = tracker.finish({"w": torch.zeros(1)})

    assert result.final_metrics == {}
    assert result.history == []
    assert not any("Final Accuracy" in r.getMessage() for r in caplog.records)
    assert (tracker.run_dir / "metrics.jsonl").read_text(encoding="utf-8") == ""


def test_fail_writes_the_error_and_keeps_the_metrics_so_far(make_args):
    tracker = RunTracker(make_args(save_model=True))
    record = tracker.log_round(0, {"accuracy": 0.5, "loss": 1.0}, train_loss=1.5)

    tracker.fail(ValueError("client 3 diverged"))

    assert (tracker.run_dir / "error.txt").read_text(encoding="utf-8") == "ValueError: client 3 diverged\n"
    assert lines_of(tracker.run_dir / "metrics.jsonl") == [record]
    assert not (tracker.run_dir / "model.pt").exists()


def test_a_successful_run_writes_no_error_file(make_args):
    tracker = RunTracker(make_args())

    tracker.finish({})

    assert not (tracker.run_dir / "error.txt").exists()


def test_role_logger_prefixes_the_role_and_rank(caplog):
    with caplog.at_level(logging.INFO, logger="fedml"):
        role_logger("Server", 0).info("hello %s", "world")
        role_logger("Client", 3).warning("late by %d s", 2)

    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("fedml", logging.INFO, "[FedML-Server(0)]: hello world"),
        ("fedml", logging.WARNING, "[FedML-Client(3)]: late by 2 s"),
    ]


def test_role_logger_can_use_another_logger(caplog):
    with caplog.at_level(logging.INFO, logger="fedml.custom"):
        role_logger("Server", 0, name="fedml.custom").info("x")

    assert [(r.name, r.getMessage()) for r in caplog.records] == [("fedml.custom", "[FedML-Server(0)]: x")]


def test_configure_logging_prints_bare_lines_to_stdout_when_nothing_is_configured(capsys):
    with bare_logging() as fedml_logger:
        configure_logging()
        configure_logging()
        role_logger("Server", 0).info("Round %d", 1)
        fedml_logger.debug("hidden")
        handlers, level = list(fedml_logger.handlers), fedml_logger.level

    assert len(handlers) == 1
    assert level == logging.INFO
    assert capsys.readouterr().out == "[FedML-Server(0)]: Round 1\n"


def test_configure_logging_adds_no_handler_when_the_app_configured_logging():
    app_handler = logging.StreamHandler(io.StringIO())

    with bare_logging() as fedml_logger:
        logging.getLogger().addHandler(app_handler)
        configure_logging()
        role_logger("Server", 0).warning("to the app")
        fedml_handlers, root_handlers = list(fedml_logger.handlers), list(logging.getLogger().handlers)

    assert fedml_handlers == []
    assert root_handlers == [app_handler]
    assert app_handler.stream.getvalue() == "[FedML-Server(0)]: to the app\n"


def test_configure_logging_keeps_a_level_the_app_chose():
    with bare_logging() as fedml_logger:
        fedml_logger.setLevel(logging.WARNING)
        configure_logging()
        level = fedml_logger.level

    assert level == logging.WARNING


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_draws_nothing_when_stderr_is_not_a_tty(monkeypatch):
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    bar = Progress(3)
    bar.advance(0.5, 2, 2)
    bar.close()
    assert stderr.getvalue() == ""


def test_progress_shows_rounds_the_last_accuracy_and_replies_on_a_terminal():
    screen = Terminal()
    bar = Progress(5, initial=1, file=screen)
    bar.advance(0.8123, replied=3, expected=4)
    shown = screen.getvalue()
    bar.close()
    assert "2/5" in shown
    assert "acc=81.2%" in shown
    assert "clients=3/4" in shown
    assert "<" in shown  # tqdm's elapsed<remaining: the ETA


def test_quiet_draws_no_bar_even_on_a_terminal(make_args, monkeypatch, caplog):
    import fedml

    screen = Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    caplog.set_level("INFO", logger="fedml")
    result = fedml.run_simulation(argv=[], **make_args_overrides(make_args), comm_round=2, quiet=True)
    assert screen.getvalue() == ""
    assert "Training completed" not in caplog.text
    assert "Final Accuracy after Round 2" in caplog.text
    assert len(result.history) == 2


def make_args_overrides(make_args):
    args = make_args()
    return {"download": False, "run_dir": args.run_dir, "data_cache_dir": args.data_cache_dir}


def test_log_level_warning_hides_the_info_lines(make_args, capsys):
    import fedml

    with bare_logging():
        fedml.run_simulation(argv=[], **make_args_overrides(make_args), comm_round=1, log_level="WARNING")
        printed = capsys.readouterr().out
    assert "Final Accuracy" not in printed
    assert "Dataset: mnist" not in printed


def test_summary_json_says_what_ran_how_it_ended_and_its_cost(make_args):
    import fedml

    result = fedml.run_simulation(argv=[], **make_args_overrides(make_args), comm_round=2, random_seed=5)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert summary["error"] is None
    assert summary["rounds"] == 2
    assert summary["seed"] == 5
    assert (summary["dataset"], summary["model"], summary["algorithm"]) == ("mnist", "lr", "FedAvg")
    assert summary["final_metrics"]["test_accuracy"] == result.final_metrics["test_accuracy"]
    assert summary["final_metrics"]["clients"] == 10
    assert summary["peak_memory_mb"] > 50
    assert summary["wall_seconds"] > 0
    assert set(summary["phases"]) == {"data", "setup", "rounds"}
    assert summary["torch_version"] == torch.__version__
    assert summary["name"] == result.run_dir.name
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["clients"] for r in records] == [10, 10]


def test_a_failed_run_has_a_summary_saying_why(make_args):
    args = make_args(comm_round=2)
    tracker = RunTracker(args)
    tracker.log_round(0, {"accuracy": 0.5, "loss": 1.0}, 0.7, clients=3)
    tracker.fail(RuntimeError("boom"))
    summary = json.loads((tracker.run_dir / "summary.json").read_text())
    assert (summary["status"], summary["error"], summary["rounds"]) == ("failed", "RuntimeError: boom", 1)


def test_git_commit_names_the_checkout_and_whether_it_changed(tmp_path):
    import subprocess

    def git(*argv):
        subprocess.run(["git", "-C", str(tmp_path), *argv], check=True, capture_output=True)

    assert tracking.git_commit(tmp_path) is None
    git("init", "-q")
    (tmp_path / "a.txt").write_text("one")
    git("add", "a.txt")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "one")
    clean = tracking.git_commit(tmp_path)
    assert clean is not None
    assert re.fullmatch(r"[0-9a-f]{40}", clean)
    (tmp_path / "a.txt").write_text("two")
    assert tracking.git_commit(tmp_path) == clean + "+dirty"


def test_a_non_finite_value_is_written_as_null_so_every_line_is_strict_json(make_args):
    import json as json_module

    from fedml.tracking import RunTracker

    tracker = RunTracker(make_args())
    tracker.log_round(0, {"accuracy": 0.5, "loss": float("inf")}, float("nan"))
    tracker.finish({})

    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    (line,) = (tracker.run_dir / "metrics.jsonl").read_text().splitlines()
    record = json_module.loads(line, parse_constant=refuse)
    assert (record["train_loss"], record["test_loss"], record["test_accuracy"]) == (None, None, 0.5)


def _run(args):
    import torch

    import fedml

    dataset, output_dim = fedml.data.load(args)
    model = fedml.model.create(args, output_dim)
    return fedml.FedMLRunner(args, torch.device("cpu"), dataset, model).run()


def test_a_run_directory_that_cannot_be_made_is_one_clear_line(make_args, tmp_path):
    from fedml.errors import ConfigError

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.raises(
        ConfigError, match=r"tracking_args.run_dir: cannot create a run directory in .*not-a-folder"
    ):
        _run(make_args(comm_round=1, run_dir=str(blocker)))


def test_a_full_disk_keeps_the_last_good_checkpoint_and_reports_its_own_error(make_args, monkeypatch):
    import torch

    from fedml.core.checkpoint import load_checkpoint

    real_save, saves = torch.save, []

    def save(obj, target, *args, **kwargs):
        saves.append(obj)
        if len(saves) == 2:
            target.write(b"half a checkpoint")
            raise OSError(28, "No space left on device")
        return real_save(obj, target, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    args = make_args(comm_round=3, checkpoint_frequency=1, client_num_per_round=2)
    with pytest.raises(OSError, match="No space left on device"):
        _run(args)
    (run_dir,) = Path(args.run_dir).iterdir()
    assert load_checkpoint(run_dir / "checkpoint.pt").rounds_done == 1
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".partial")]
    assert "No space left on device" in (run_dir / "error.txt").read_text()


def test_an_unwritable_error_file_does_not_mask_the_runs_error(make_args, monkeypatch):
    import fedml
    import fedml.tracking

    real = fedml.tracking.atomic_write_text

    def write(path, text):
        if path.name == "error.txt":
            raise OSError(28, "No space left on device")
        real(path, text)

    class Broken(fedml.ClientTrainer):
        def train(self, train_data, device, args):
            raise RuntimeError("the client's disk is on fire")

    monkeypatch.setattr(fedml.tracking, "atomic_write_text", write)
    args = make_args(comm_round=1, client_num_per_round=2, engine="sequential")
    dataset, output_dim = fedml.data.load(args)
    model = fedml.model.create(args, output_dim)
    runner = fedml.FedMLRunner(args, torch.device("cpu"), dataset, model, client_trainer=Broken(model, args))
    with pytest.raises(RuntimeError, match="the client's disk is on fire"):
        runner.run()


def test_a_default_run_leaves_curves_png_and_one_without_plots_does_not(make_args):
    import matplotlib.image

    import fedml

    result = fedml.run_simulation(argv=[], **make_args_overrides(make_args), comm_round=2)
    image = matplotlib.image.imread(result.run_dir / "curves.png")
    assert image.shape[0] > image.shape[1] > 100
    plain = fedml.run_simulation(argv=[], **make_args_overrides(make_args), comm_round=1, plots=False)
    assert not (plain.run_dir / "curves.png").exists()


def test_without_matplotlib_the_run_succeeds_and_says_how_to_get_plots(make_args, monkeypatch, caplog):
    import builtins

    import fedml

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    caplog.set_level("INFO", logger="fedml")
    result = fedml.run_simulation(argv=[], **make_args_overrides(make_args), comm_round=1)
    assert not (result.run_dir / "curves.png").exists()
    assert 'pip install "fedml[plots]"' in caplog.text


def test_a_run_logs_to_tensorboard_and_mlflow_and_both_read_back(make_args):
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import fedml
    from fedml.loggers.mlflow import default_tracking_uri

    overrides = make_args_overrides(make_args)
    result = fedml.run_simulation(
        argv=[], **overrides, comm_round=3, loggers=["tensorboard", "mlflow"], auth_token="s3cret"
    )
    accuracies = [r["test_accuracy"] for r in result.history]

    events = EventAccumulator(str(result.run_dir / "tensorboard"))
    events.Reload()
    logged = events.Scalars("test/accuracy")
    assert [e.step for e in logged] == [1, 2, 3]
    assert [e.value for e in logged] == pytest.approx(accuracies, abs=1e-6)

    client = MlflowClient(tracking_uri=default_tracking_uri(Path(overrides["run_dir"]) / "mlruns"))
    (run,) = client.search_runs([client.get_experiment_by_name("fedml").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == result.run_dir.name
    assert run.data.params["train_args.comm_round"] == "3"
    assert run.data.params["comm_args.auth_token"] == "<redacted>"
    history = client.get_metric_history(run.info.run_id, "test_accuracy")
    assert [m.step for m in history] == [1, 2, 3]
    assert [m.value for m in history] == pytest.approx(accuracies)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model.pt", "curves.png", "summary.json", "config.yaml"} <= artifacts


def test_a_failed_run_ends_its_mlflow_run_failed(make_args):
    from mlflow import MlflowClient

    import fedml
    from fedml.loggers.mlflow import default_tracking_uri

    class Broken(fedml.ClientTrainer):
        def train(self, train_data, device, args):
            raise RuntimeError("the client's disk is on fire")

    args = make_args(comm_round=1, client_num_per_round=2, engine="sequential", loggers=["mlflow"])
    dataset, output_dim = fedml.data.load(args)
    model = fedml.model.create(args, output_dim)
    runner = fedml.FedMLRunner(args, torch.device("cpu"), dataset, model, client_trainer=Broken(model, args))
    with pytest.raises(RuntimeError, match="on fire"):
        runner.run()
    client = MlflowClient(tracking_uri=default_tracking_uri(Path(args.run_dir) / "mlruns"))
    (run,) = client.search_runs([client.get_experiment_by_name("fedml").experiment_id])
    assert run.info.status == "FAILED"
    assert "on fire" in run.data.tags["fedml.error"]

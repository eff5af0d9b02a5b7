"""The run loggers: each driven through start/log_round/finish (or fail), then its store read back."""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from fedml.config import Arguments, load_arguments
from fedml.errors import ConfigError, FedMLError
from fedml.loggers import LOGGERS, RunLogger, create_loggers, flatten
from fedml.tracking import redacted

ROUNDS = [
    {"round": 1, "test_accuracy": 0.25, "test_loss": 2.0, "train_loss": 2.5, "seconds": 1.0, "clients": 10},
    {"round": 2, "test_accuracy": 0.5, "test_loss": 1.5, "train_loss": None, "seconds": 2.0, "clients": 8},
    {"round": 4, "test_accuracy": 0.75, "test_loss": 1.0, "train_loss": math.nan, "seconds": 3, "clients": 9},
]
"""Evaluated rounds 1, 2 and 4 (round 3 not evaluated); round 2 and 4 have no usable train_loss."""

SUMMARY = {"round": 4, "test_accuracy": 0.75, "engine": "sequential", "phases": {"setup": 0.5}}


@pytest.fixture(autouse=True)
def no_leftover_threads() -> Iterator[None]:
    """Fail a test that leaves a thread running (a writer or client not closed)."""
    before = set(threading.enumerate())
    yield
    left = [t for t in threading.enumerate() if t not in before]
    for thread in left:
        thread.join(timeout=5)
    assert [t.name for t in left if t.is_alive()] == []


@pytest.fixture
def config(make_args: Callable[..., Arguments]) -> dict[str, dict[str, Any]]:
    """The redacted configuration of a run with a secret and a value longer than MLflow's param limit."""
    raw = make_args(learning_rate=0.125).to_dict()
    raw["comm_args"]["auth_token"] = "s3cret"
    raw["train_args"]["notes"] = "x" * 900
    return redacted(raw)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run directory with the files a finished run leaves."""
    path = tmp_path / "runs" / "20240102-030405-mnist-lr-FedAvg"
    path.mkdir(parents=True)
    (path / "config.yaml").write_text("train_args: {}\n", encoding="utf-8")
    (path / "model.pt").write_bytes(b"\0" * 64)
    (path / "plots").mkdir()
    (path / "plots" / "curves.png").write_bytes(b"png")
    return path


def drive(logger: RunLogger, run_dir: Path, config: dict[str, dict[str, Any]]) -> None:
    """Run the whole sequence on ``logger`` with the ROUNDS and SUMMARY."""
    logger.start(run_dir, config)
    for record in ROUNDS:
        logger.log_round(record)
    artifacts = [run_dir / "config.yaml", run_dir / "model.pt", run_dir / "plots", run_dir / "missing.json"]
    logger.finish(SUMMARY, artifacts)


# Registry and configuration


def test_registry_lists_both_loggers() -> None:
    assert LOGGERS.names() == ["mlflow", "tensorboard"]


def test_unknown_logger_name_fails_at_load() -> None:
    with pytest.raises(ConfigError, match=r"tracking_args\.loggers") as info:
        load_arguments(overrides={"loggers": ["wandb"]})
    assert "tensorboard" in str(info.value)


def test_unknown_logger_name_outside_config_lists_the_valid_ones() -> None:
    args = SimpleNamespace(loggers=["tensorbord"])
    with pytest.raises(ConfigError, match="did you mean tensorboard"):
        create_loggers(args)


def test_no_loggers_by_default(make_args: Callable[..., Arguments]) -> None:
    assert create_loggers(make_args()) == []


@pytest.mark.parametrize(
    ("name", "hidden"),
    [("tensorboard", ["tensorboard", "torch.utils.tensorboard"]), ("mlflow", ["mlflow"])],
)
def test_missing_package_names_its_extra(
    make_args: Callable[..., Arguments], monkeypatch: pytest.MonkeyPatch, name: str, hidden: list[str]
) -> None:
    monkeypatch.delitem(sys.modules, f"fedml.loggers.{name}", raising=False)
    for module in hidden:
        monkeypatch.setitem(sys.modules, module, None)  # None makes `import module` raise ImportError
    with pytest.raises(ImportError, match=rf'pip install "fedml\[{name}\]"'):
        create_loggers(make_args(loggers=[name]))


def test_create_loggers_builds_each_named_logger_once(
    make_args: Callable[..., Arguments], tmp_path: Path
) -> None:
    tb = pytest.importorskip("fedml.loggers.tensorboard")
    ml = pytest.importorskip("fedml.loggers.mlflow")
    loggers = create_loggers(
        make_args(loggers=["mlflow", "tensorboard", "mlflow"], mlflow_experiment="study")
    )
    assert [type(lg) for lg in loggers] == [ml.MlflowLogger, tb.TensorBoardLogger]
    assert all(isinstance(lg, RunLogger) for lg in loggers)
    mlflow_logger = loggers[0]
    assert mlflow_logger.experiment == "study"
    database = tmp_path / "runs" / "mlruns" / "mlflow.db"
    assert mlflow_logger.tracking_uri == f"sqlite:///{database.as_posix()}"


def test_flatten_gives_dotted_keys() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": None}}, "e": [1]}) == {"a.b": 1, "a.c.d": None, "e": [1]}


# TensorBoard


@pytest.fixture
def tensorboard() -> Any:
    """The TensorBoard logger module and the event reader, or a skip when the extra is missing."""
    pytest.importorskip("tensorboard")
    return pytest.importorskip("fedml.loggers.tensorboard")


def read_events(log_dir: Path) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def test_tensorboard_scalars_read_back_per_round(
    tensorboard: Any, run_dir: Path, config: dict[str, dict[str, Any]]
) -> None:
    logger = tensorboard.TensorBoardLogger()
    drive(logger, run_dir, config)

    events = read_events(run_dir / "tensorboard")
    points = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert points["test/accuracy"] == [(1, 0.25), (2, 0.5), (4, 0.75)]
    assert points["test/loss"] == [(1, 2.0), (2, 1.5), (4, 1.0)]
    assert points["train/loss"] == [(1, 2.5)]  # None and NaN are skipped
    assert points["clients"] == [(1, 10.0), (2, 8.0), (4, 9.0)]
    assert points["final/phases.setup"] == [(4, 0.5)]
    assert "round" not in points
    assert logger.writer is None


def test_tensorboard_writes_config_text_and_hparams(
    tensorboard: Any, run_dir: Path, config: dict[str, dict[str, Any]]
) -> None:
    from tensorboard.plugins.hparams import plugin_data_pb2

    drive(tensorboard.TensorBoardLogger(), run_dir, config)

    events = read_events(run_dir / "tensorboard")
    text = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "learning_rate: 0.125" in text
    assert "s3cret" not in text
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["train_args.learning_rate"].number_value == 0.125
    assert start.session_start_info.hparams["comm_args.auth_token"].string_value == "<redacted>"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    assert {m.name.tag for m in experiment.experiment.metric_infos} == {"test/accuracy", "final/phases.setup"}


def test_tensorboard_fail_writes_the_error_and_closes(
    tensorboard: Any, run_dir: Path, config: dict[str, dict[str, Any]]
) -> None:
    logger = tensorboard.TensorBoardLogger()
    logger.start(run_dir, config)
    logger.log_round(ROUNDS[0])
    logger.fail(RuntimeError("diverged"))
    logger.fail(RuntimeError("again"))  # a second end is a no-op
    logger.finish(SUMMARY, [])

    events = read_events(run_dir / "tensorboard")
    errors = events.Tensors("error/text_summary")
    assert [e.tensor_proto.string_val[0].decode().strip() for e in errors] == ["RuntimeError: diverged"]
    assert [(e.step, e.value) for e in events.Scalars("test/accuracy")] == [(1, 0.25)]
    assert logger.writer is None


def test_tensorboard_unwritable_run_dir_fails_at_start(
    tensorboard: Any, tmp_path: Path, config: dict[str, dict[str, Any]]
) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("", encoding="utf-8")
    logger = tensorboard.TensorBoardLogger()
    with pytest.raises(ConfigError, match="tensorboard cannot write event files"):
        logger.start(not_a_dir, config)
    logger.fail(RuntimeError("after a failed start"))  # safe: nothing was started


def test_tensorboard_error_after_start_is_one_warning(
    tensorboard: Any,
    run_dir: Path,
    config: dict[str, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = tensorboard.TensorBoardLogger()
    logger.start(run_dir, config)
    calls = []

    def broken(*args: Any, **kwargs: Any) -> None:
        calls.append(args)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(logger.writer, "add_scalar", broken)
    with caplog.at_level(logging.WARNING, logger="fedml.loggers"):
        for record in ROUNDS:
            logger.log_round(record)
        logger.finish(SUMMARY, [])

    warnings = [r for r in caplog.records if r.name == "fedml.loggers"]
    assert len(warnings) == 1
    assert "tensorboard logger: could not log round 1" in warnings[0].getMessage()
    assert "No space left on device" in warnings[0].getMessage()
    assert len(calls) == 1  # nothing more is sent once broken
    assert logger.writer is None  # still closed


def test_tensorboard_start_twice_is_an_error(
    tensorboard: Any, run_dir: Path, config: dict[str, dict[str, Any]]
) -> None:
    logger = tensorboard.TensorBoardLogger()
    logger.start(run_dir, config)
    with pytest.raises(FedMLError, match="already called"):
        logger.start(run_dir, config)
    logger.finish({}, [])


# MLflow


@pytest.fixture
def mlflow() -> Any:
    """The MLflow logger module, or a skip when the extra is missing.

    Imported inside the test, where pytest's environment keeps MLflow's telemetry thread off.
    """
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    return pytest.importorskip("fedml.loggers.mlflow")


def settable_environment() -> dict[str, str]:
    """The process environment less MLflow's telemetry session, which MLflow itself sets and unsets.

    (Whether its telemetry client is on depends on when mlflow was first imported in the process,
    during a test or, in a pytest-xdist worker, at collection.)
    """
    return {k: v for k, v in os.environ.items() if not k.startswith("_MLFLOW_TELEMETRY")}


def only_run(tracking_uri: str, experiment: str = "fedml") -> Any:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None
    runs = client.search_runs([found.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def test_mlflow_run_reads_back_params_metrics_artifacts(
    mlflow: Any, run_dir: Path, config: dict[str, dict[str, Any]]
) -> None:
    logger = mlflow.MlflowLogger(run_dir.parent / "mlruns", experiment="study")
    drive(logger, run_dir, config)

    assert (run_dir.parent / "mlruns" / "mlflow.db").is_file()
    client, run = only_run(logger.tracking_uri, "study")
    assert run.info.status == "FINISHED"
    assert run.info.run_name == run_dir.name
    assert run.data.tags["fedml.run_dir"] == str(run_dir)
    params = run.data.params
    assert params["train_args.learning_rate"] == "0.125"
    assert params["comm_args.auth_token"] == "<redacted>"
    assert params["train_args.notes"] == "x" * 497 + "..."
    assert len(params) == len(flatten(config))

    def history(key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]

    assert history("test_accuracy") == [(1, 0.25), (2, 0.5), (4, 0.75)]
    assert history("clients") == [(1, 10.0), (2, 8.0), (4, 9.0)]
    assert history("train_loss") == [(1, 2.5)]
    assert history("phases.setup") == [(4, 0.5)]
    assert history("round") == []
    assert run.data.tags["summary.engine"] == "sequential"
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert top == {"config.yaml", "model.pt", "plots"}
    assert [a.path for a in client.list_artifacts(run.info.run_id, "plots")] == ["plots/curves.png"]
    assert run.info.artifact_uri.startswith((run_dir.parent / "mlruns" / "artifacts").as_uri())


def test_mlflow_fail_ends_the_run_failed_with_the_error(
    mlflow: Any, run_dir: Path, config: dict[str, dict[str, Any]]
) -> None:
    logger = mlflow.MlflowLogger(run_dir.parent / "mlruns")
    logger.start(run_dir, config)
    logger.log_round(ROUNDS[0])
    logger.fail(ValueError("loss is NaN"))
    logger.finish(SUMMARY, [run_dir / "model.pt"])  # after fail: a no-op

    client, run = only_run(logger.tracking_uri)
    assert run.info.status == "FAILED"
    assert run.data.tags["fedml.error"] == "ValueError: loss is NaN"
    assert client.list_artifacts(run.info.run_id) == []


def test_mlflow_two_runs_in_one_process_keep_apart(
    mlflow: Any, tmp_path: Path, config: dict[str, dict[str, Any]]
) -> None:
    import mlflow as mlflow_package

    global_uri, environment = mlflow_package.get_tracking_uri(), settable_environment()
    first = mlflow.MlflowLogger(tmp_path / "a" / "mlruns")
    second = mlflow.MlflowLogger(tmp_path / "b" / "mlruns")
    first.start(tmp_path / "a" / "run-1", config)
    second.start(tmp_path / "b" / "run-2", config)
    first.log_round(ROUNDS[0])
    second.log_round(ROUNDS[1])
    second.fail(RuntimeError("stopped"))
    first.finish(SUMMARY, [])

    _, run_a = only_run(first.tracking_uri)
    _, run_b = only_run(second.tracking_uri)
    assert (run_a.info.run_name, run_a.info.status, run_a.data.metrics["test_accuracy"]) == (
        "run-1",
        "FINISHED",
        0.25,
    )
    assert (run_b.info.run_name, run_b.info.status, run_b.data.metrics["test_accuracy"]) == (
        "run-2",
        "FAILED",
        0.5,
    )
    assert mlflow_package.get_tracking_uri() == global_uri
    assert settable_environment() == environment


def test_mlflow_bad_tracking_uri_fails_at_start(
    mlflow: Any, run_dir: Path, config: dict[str, dict[str, Any]]
) -> None:
    logger = mlflow.MlflowLogger(run_dir.parent / "mlruns", tracking_uri="bogus://nowhere")
    with pytest.raises(ConfigError, match=r"tracking_args\.mlflow_tracking_uri: .*bogus://nowhere"):
        logger.start(run_dir, config)
    logger.fail(RuntimeError("after a failed start"))  # safe: nothing was started


def test_mlflow_local_store_without_database_packages_names_the_extra(
    mlflow: Any, run_dir: Path, config: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = mlflow.importlib.util.find_spec
    monkeypatch.setattr(
        mlflow.importlib.util, "find_spec", lambda name, *a: None if name == "alembic" else real(name, *a)
    )
    with pytest.raises(ImportError, match=r'alembic.*pip install "fedml\[mlflow\]"'):
        mlflow.MlflowLogger(run_dir.parent / "mlruns").start(run_dir, config)


def test_mlflow_error_after_start_is_one_warning(
    mlflow: Any,
    run_dir: Path,
    config: dict[str, dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from mlflow.exceptions import MlflowException

    logger = mlflow.MlflowLogger(run_dir.parent / "mlruns")
    logger.start(run_dir, config)
    calls = []

    def unreachable(*args: Any, **kwargs: Any) -> None:
        calls.append(args)
        raise MlflowException("API request failed: connection refused")

    monkeypatch.setattr(logger.client, "log_batch", unreachable)
    with caplog.at_level(logging.WARNING, logger="fedml.loggers"):
        for record in ROUNDS:
            logger.log_round(record)
        logger.finish(SUMMARY, [run_dir / "model.pt"])

    warnings = [r for r in caplog.records if r.name == "fedml.loggers"]
    assert [w.levelno for w in warnings] == [logging.WARNING]
    assert "mlflow logger: could not log round 1" in warnings[0].getMessage()
    assert len(calls) == 1
    client, run = only_run(logger.tracking_uri)
    assert run.info.status == "FINISHED"  # the run is still ended
    assert client.list_artifacts(run.info.run_id) == []  # nothing more was sent once broken


def test_mlflow_params_refused_at_start_leave_a_run_that_fail_ends(
    mlflow: Any, run_dir: Path, config: dict[str, dict[str, Any]]
) -> None:
    logger = mlflow.MlflowLogger(run_dir.parent / "mlruns")
    bad = {**config, "train_args": {**config["train_args"], "no?such!name": 1}}
    with pytest.raises(ConfigError, match="cannot log to MLflow") as info:
        logger.start(run_dir, bad)
    logger.fail(info.value)

    _, run = only_run(logger.tracking_uri)
    assert run.info.status == "FAILED"
    assert run.data.tags["fedml.error"].startswith("ConfigError: tracking_args.mlflow_tracking_uri")


def test_numpy_scalars_are_logged_like_floats(
    tensorboard: Any, run_dir: Path, config: dict[str, dict[str, Any]]
) -> None:
    import numpy as np

    logger = tensorboard.TensorBoardLogger()
    logger.start(run_dir, config)
    logger.log_round({"round": np.int64(3), "test_accuracy": np.float32(0.5), "test_loss": np.float64("nan")})
    logger.finish({}, [])

    events = read_events(run_dir / "tensorboard")
    assert [(e.step, e.value) for e in events.Scalars("test/accuracy")] == [(3, 0.5)]
    assert "test/loss" not in events.Tags()["scalars"]

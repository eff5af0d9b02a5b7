"""``MlflowLogger``: a run's configuration, per-round metrics and files as one MLflow run."""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException

from fedml.errors import ConfigError, FedMLError
from fedml.loggers import Guard, clip, finite, flatten, round_of

PARAM_LIMIT = 500
"""Longest param value sent, in characters: the smallest limit of MLflow servers (newer ones take 6000)."""

TAG_LIMIT = 5000
"""Longest tag value sent, in characters (MLflow's limit)."""

BATCH = 100
"""Params per ``log_batch`` call: MLflow accepts at most 100."""


def default_tracking_uri(store_dir: Path) -> str:
    """Return the local store's URI, ``sqlite:///<store_dir>/mlflow.db`` (absolute).

    SQLite, because MLflow 3 refuses its ``file:`` store unless an environment variable allows it,
    and a database store needs no server (only ``sqlalchemy`` and ``alembic``, in the extra).
    """
    return f"sqlite:///{(store_dir / 'mlflow.db').resolve().as_posix()}"


class MlflowLogger:
    """Logs a run to MLflow through its own ``mlflow.MlflowClient``, leaving MLflow's global state alone.

    Parameters
    ----------
    store_dir
        Where the local store lives when ``tracking_uri`` is None: the database
        ``<store_dir>/mlflow.db`` and the artifacts under ``<store_dir>/artifacts/``. View it with
        ``mlflow ui --backend-store-uri sqlite:///<store_dir>/mlflow.db``.
    tracking_uri
        An MLflow tracking URI (``http://host:5000``, ``sqlite:///path.db``, ``databricks``, ...), or
        None for the local store.
    experiment
        The experiment's name; created when missing.

    Notes
    -----
    ``start`` creates a run named after the run directory, tagged ``fedml.run_dir``, with the
    flattened configuration as params (``train_args.learning_rate``, ...; values cut to
    ``PARAM_LIMIT`` characters). ``log_round`` logs each metric at step = round; ``finish`` logs the
    numeric summary values not logged every round as metrics, the others as ``summary.<key>`` tags,
    uploads the artifacts and ends the run ``FINISHED``; ``fail`` tags ``fedml.error`` and ends it
    ``FAILED``. MLflow 3 may send usage telemetry; ``DO_NOT_TRACK=true`` turns it off.

    """

    def __init__(self, store_dir: Path, tracking_uri: str | None = None, experiment: str = "fedml") -> None:
        self.store_dir = Path(store_dir)
        self.local = tracking_uri is None
        self.tracking_uri = tracking_uri or default_tracking_uri(self.store_dir)
        self.experiment = experiment
        self.guard = Guard("mlflow")
        self.client: MlflowClient | None = None
        self.run_id: str | None = None
        self._logged: set[str] = set()
        self._last_step = 0

    def start(self, run_dir: Path, config: Mapping[str, Mapping[str, Any]]) -> None:
        """Create the MLflow run for ``run_dir`` and log the configuration as its params.

        Raises
        ------
        ConfigError
            If the tracking URI cannot be used or the run cannot be created there.
        ImportError
            If the local store's database packages are missing (the extra ``mlflow`` installs them).
        FedMLError
            If this logger was already started.

        """
        if self.client is not None:
            raise FedMLError("mlflow logger: start was already called; a logger records one run")
        if self.local:
            _require_database()
        try:
            if self.local:
                self.store_dir.mkdir(parents=True, exist_ok=True)
            client = MlflowClient(tracking_uri=self.tracking_uri)
            experiment_id = self._experiment_id(client)
            run = client.create_run(
                experiment_id, run_name=Path(run_dir).name, tags={"fedml.run_dir": str(run_dir)}
            )
            # Kept before the params go, so that ``fail`` after an error here ends the run FAILED.
            self.client, self.run_id = client, run.info.run_id
            params = [Param(k, clip(str(v), PARAM_LIMIT)) for k, v in flatten(config).items()]
            for first in range(0, len(params), BATCH):
                client.log_batch(run.info.run_id, params=params[first : first + BATCH])
        except (MlflowException, OSError) as exc:
            raise ConfigError(
                f"tracking_args.mlflow_tracking_uri: cannot log to MLflow at {self.tracking_uri!r} ({exc})"
            ) from exc

    def log_round(self, record: Mapping[str, float | None]) -> None:
        """Log each finite metric of ``record`` at step ``record["round"]``."""
        client, run_id = self.client, self.run_id
        if client is None or run_id is None:
            return

        def send() -> None:
            step = round_of(record)
            now = int(time.time() * 1000)
            metrics = {k: finite(v) for k, v in record.items() if k != "round"}
            kept = [Metric(k, v, now, step) for k, v in metrics.items() if v is not None]
            client.log_batch(run_id, metrics=kept)
            self._logged.update(m.key for m in kept)
            self._last_step = step

        self.guard.run(f"log round {record.get('round')}", send)

    def finish(self, summary: Mapping[str, Any], artifacts: Sequence[Path]) -> None:
        """Log ``summary`` and the existing files among ``artifacts``; end the run ``FINISHED``."""
        client, run_id = self.client, self.run_id
        if client is None or run_id is None:
            return
        self.guard.run("log the summary", lambda: self._log_summary(client, run_id, summary))
        for path in map(Path, artifacts):
            if path.is_file():
                self.guard.run(f"upload {path.name}", partial(client.log_artifact, run_id, str(path)))
            elif path.is_dir():
                upload = partial(client.log_artifacts, run_id, str(path), artifact_path=path.name)
                self.guard.run(f"upload {path.name}/", upload)
        self._end(RunStatus.to_string(RunStatus.FINISHED))

    def fail(self, error: BaseException) -> None:
        """Tag the run ``fedml.error`` with ``error`` and end it ``FAILED``."""
        client, run_id = self.client, self.run_id
        if client is None or run_id is None:
            return
        message = clip(f"{type(error).__name__}: {error}", TAG_LIMIT)
        self.guard.run("tag the error", lambda: client.set_tag(run_id, "fedml.error", message), always=True)
        self._end(RunStatus.to_string(RunStatus.FAILED))

    def _experiment_id(self, client: MlflowClient) -> str:
        found = client.get_experiment_by_name(self.experiment)
        if found is not None:
            return str(found.experiment_id)
        location = (self.store_dir / "artifacts").resolve().as_uri() if self.local else None
        try:
            return str(client.create_experiment(self.experiment, artifact_location=location))
        except MlflowException:
            # Another process may have created it since the lookup.
            found = client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return str(found.experiment_id)

    def _log_summary(self, client: MlflowClient, run_id: str, summary: Mapping[str, Any]) -> None:
        now = int(time.time() * 1000)
        metrics: list[Metric] = []
        tags: list[RunTag] = []
        for key, value in flatten(summary).items():
            number = finite(value)
            if number is not None:
                if key != "round" and key not in self._logged:
                    metrics.append(Metric(key, number, now, self._last_step))
            elif isinstance(value, (str, bool)):
                tags.append(RunTag(f"summary.{key}", clip(str(value), TAG_LIMIT)))
        client.log_batch(run_id, metrics=metrics, tags=tags)

    def _end(self, status: str) -> None:
        client, run_id = self.client, self.run_id
        self.run_id = None
        if client is not None and run_id is not None:
            self.guard.run("end the run", lambda: client.set_terminated(run_id, status), always=True)


def from_args(args: Any) -> MlflowLogger:
    """Return an ``MlflowLogger`` for ``mlflow_tracking_uri`` (default: a store in ``<run_dir>/mlruns``)."""
    return MlflowLogger(
        Path(args.run_dir).expanduser() / "mlruns", args.mlflow_tracking_uri, args.mlflow_experiment
    )


def _require_database() -> None:
    missing = [name for name in ("sqlalchemy", "alembic") if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f"the local MLflow store needs {' and '.join(missing)}, which is not installed; install it "
            'with: pip install -e ".[mlflow]"  (or pip install "fedml[mlflow]"), or set '
            "tracking_args.mlflow_tracking_uri to an MLflow server"
        )

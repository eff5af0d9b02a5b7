"""``TensorBoardLogger``: a run's metrics as TensorBoard scalars in ``<run_dir>/tensorboard/``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from fedml.errors import ConfigError, FedMLError
from fedml.loggers import Guard, finite, flatten, round_of

TAGS = {
    "test_accuracy": "test/accuracy",
    "test_loss": "test/loss",
    "train_loss": "train/loss",
    "epsilon": "privacy/epsilon",
    "seconds": "time/seconds",
}
"""Record key -> scalar tag; other keys (``clients``, ...) are their own tag."""


def tag(key: str) -> str:
    """Return the scalar tag of the record key ``key``: ``test_accuracy`` -> ``test/accuracy``."""
    return TAGS.get(key, key)


class TensorBoardLogger:
    """Writes TensorBoard event files with ``torch.utils.tensorboard.SummaryWriter``.

    ``start`` writes the configuration as text (``config``); ``log_round`` one scalar per metric at
    step = round (``test/accuracy``, ``test/loss``, ``train/loss``, ``clients``, ``privacy/epsilon``,
    ``time/seconds``); ``finish`` the flattened configuration as hyperparameters with the final
    metrics, so that runs compare in TensorBoard's HParams tab; ``fail`` the error as text
    (``error``). The writer is flushed after every round and closed by ``finish`` or ``fail``.

    View with ``tensorboard --logdir <tracking_args.run_dir>``: each run directory is one run.
    """

    def __init__(self) -> None:
        self.guard = Guard("tensorboard")
        self.writer: SummaryWriter | None = None
        self.log_dir: Path | None = None
        self._config: dict[str, Any] = {}
        self._logged: set[str] = set()
        self._last_step = 0

    def start(self, run_dir: Path, config: Mapping[str, Mapping[str, Any]]) -> None:
        """Open ``<run_dir>/tensorboard/`` and write the configuration as text.

        Raises
        ------
        ConfigError
            If the event file cannot be created there.
        FedMLError
            If this logger was already started.

        """
        if self.writer is not None or self.log_dir is not None:
            raise FedMLError("tensorboard logger: start was already called; a logger records one run")
        log_dir = Path(run_dir) / "tensorboard"
        try:
            log_dir.mkdir(parents=True, exist_ok=True)
            writer = SummaryWriter(log_dir=str(log_dir))
        except OSError as exc:
            raise ConfigError(
                f"tracking_args.loggers: tensorboard cannot write event files in {log_dir} "
                f"({exc.strerror or exc})"
            ) from exc
        self.writer, self.log_dir = writer, log_dir
        self._config = flatten(config)
        text = yaml.safe_dump({k: dict(v) for k, v in config.items()}, sort_keys=False)
        # Indented, so TensorBoard's markdown renders the YAML as a code block.
        self.guard.run("write the configuration", lambda: writer.add_text("config", _indent(text)))

    def log_round(self, record: Mapping[str, float | None]) -> None:
        """Add a scalar per finite metric of ``record`` at step ``record["round"]`` and flush."""
        writer = self.writer
        if writer is None:
            return

        def write() -> None:
            step = round_of(record)
            for key, value in record.items():
                number = finite(value)
                if key != "round" and number is not None:
                    writer.add_scalar(tag(key), number, global_step=step)
                    self._logged.add(key)
            writer.flush()
            self._last_step = step

        self.guard.run(f"log round {record.get('round')}", write)

    def finish(self, summary: Mapping[str, Any], artifacts: Sequence[Path]) -> None:
        """Write the hyperparameters with the numeric ``summary`` values as their metrics; close.

        A summary value under a key logged every round is read from that round's scalar (its last
        point); any other numeric value is written as ``final/<key>`` at the last round's step.
        TensorBoard keeps no files, so ``artifacts`` are not copied.
        """
        writer = self.writer
        if writer is None:
            return
        self.guard.run("write the hyperparameters", lambda: self._write_hparams(writer, summary))
        self._close()

    def fail(self, error: BaseException) -> None:
        """Write ``error`` as text (``error``) and close the writer."""
        writer = self.writer
        if writer is None:
            return
        message = f"{type(error).__name__}: {error}"
        self.guard.run("write the error", lambda: writer.add_text("error", _indent(message)))
        self._close()

    def _write_hparams(self, writer: SummaryWriter, summary: Mapping[str, Any]) -> None:
        metrics: dict[str, float] = {}
        for key, value in flatten(summary).items():
            number = finite(value)
            if key == "round" or number is None:
                continue
            if key in self._logged:
                metrics[tag(key)] = number
            else:
                writer.add_scalar(f"final/{key}", number, global_step=self._last_step)
                metrics[f"final/{key}"] = number
        params = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in self._config.items()}
        file_writer = writer._get_file_writer()
        for part in hparams(params, metrics):
            file_writer.add_summary(part, self._last_step)

    def _close(self) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            self.guard.run("close the event file", writer.close, always=True)


def from_args(args: Any) -> TensorBoardLogger:
    """Return a ``TensorBoardLogger`` (it needs no settings: the run directory comes with ``start``)."""
    return TensorBoardLogger()


def _indent(text: str) -> str:
    return "".join(f"    {line}\n" for line in text.splitlines())

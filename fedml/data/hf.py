"""``dataset: hf``: a Hugging Face ``datasets`` dataset from ``save_to_disk`` or parquet files, as tensors."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field

from fedml.config.sections import ComponentSettings, read_settings
from fedml.data.dataset import RawData
from fedml.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

EXTRA_HINT = 'pip install -e ".[data]"  (or pip install "fedml[data]")'

LAYOUT = (
    "a DatasetDict saved with save_to_disk holding 'train' and 'test', or a folder of parquet files "
    "train*.parquet and test*.parquet (also train/*.parquet or data/train-*.parquet, and test alike)"
)


class HfSettings(ComponentSettings):
    """The ``hf`` dataset's keys in ``data_args``: where it is and which columns are what."""

    section = "data_args"
    data_path: str | None = None
    label_column: str = "label"
    feature_columns: list[str] = Field(default_factory=list)
    natural_id_column: str | None = None


def load_hf(args: Any) -> RawData:
    """Load ``data_args.data_path`` with the ``label_column``, ``feature_columns`` and ``natural_id_column``.

    Inputs: one feature column keeps its per-sample shape (an image column becomes ``(C, H, W)``
    float32 in ``[0, 1]``); several are flattened and concatenated into one float32 vector. Labels:
    integers as they are, other values (strings) numbered in sorted order over both splits. With
    ``natural_id_column``, each sample's value there is its natural client.

    Raises
    ------
    ConfigError
        If ``data_path`` is unset or a named column does not exist.
    DataError
        If the files are missing or not in the expected layout; the message names the path.
    ImportError
        If ``datasets`` is not installed, naming the extra that installs it.

    """
    settings = read_settings(args, HfSettings)
    if not settings.data_path:
        raise ConfigError(
            "data_args.data_path: dataset hf needs the path of a saved dataset or parquet folder"
        )
    try:
        import datasets
    except ImportError as exc:
        raise ImportError(
            f"dataset 'hf' needs the 'datasets' package, which is not installed; {EXTRA_HINT}"
        ) from exc
    path = Path(settings.data_path).expanduser()
    train, test = _open(datasets, path)
    columns = list(train.column_names)
    for key, name in (
        ("label_column", settings.label_column),
        ("natural_id_column", settings.natural_id_column),
    ):
        if name is not None and name not in columns:
            raise ConfigError(f"data_args.{key}: no column {name!r} in {path}; columns: {', '.join(columns)}")
    features = settings.feature_columns or [
        c for c in columns if c not in {settings.label_column, settings.natural_id_column}
    ]
    unknown = [c for c in features if c not in columns]
    if unknown or not features:
        raise ConfigError(
            f"data_args.feature_columns: {', '.join(unknown) or 'no feature columns'} in {path}; "
            f"columns: {', '.join(columns)}"
        )
    train_x, test_x = (_inputs(datasets, split, features, path) for split in (train, test))
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(
            f"{path}: train and test inputs differ in shape {train_x.shape[1:]} vs {test_x.shape[1:]}"
        )
    train_y, test_y, classes = _labels(datasets, train, test, settings.label_column, path)
    groups: tuple[np.ndarray | None, np.ndarray | None] = (None, None)
    if settings.natural_id_column is not None:
        groups = _ids(_column(train, settings.natural_id_column), _column(test, settings.natural_id_column))
    logger.info(
        "hf source: %s, %d train / %d test samples, %d classes", path, len(train_y), len(test_y), classes
    )
    return RawData(
        train_x=torch.from_numpy(train_x),
        train_y=torch.from_numpy(train_y),
        test_x=torch.from_numpy(test_x),
        test_y=torch.from_numpy(test_y),
        source=f"Hugging Face dataset in {path}",
        train_groups=groups[0],
        test_groups=groups[1],
        output_dim=classes,
    )


def _open(datasets: Any, path: Path) -> tuple[Any, Any]:
    if not path.exists():
        raise DataError(f"{path}: no such file or folder (data_args.data_path); expected {LAYOUT}")
    if (path / "dataset_dict.json").is_file():
        try:
            saved = datasets.load_from_disk(str(path))
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(
                f"{path}: cannot load the saved dataset ({_first_line(exc)}); expected {LAYOUT}"
            ) from exc
        missing = [s for s in ("train", "test") if s not in saved]
        if missing:
            raise DataError(
                f"{path}: the saved DatasetDict has no {' or '.join(missing)} split; expected {LAYOUT}"
            )
        return saved["train"], saved["test"]
    if path.is_dir():
        return _parquet(datasets, path, "train"), _parquet(datasets, path, "test")
    raise DataError(f"{path}: not a saved DatasetDict or a folder of parquet files; expected {LAYOUT}")


def _parquet(datasets: Any, folder: Path, split: str) -> Any:
    import pyarrow
    import pyarrow.parquet as pq
    from datasets.table import InMemoryTable

    files = sorted(folder.glob(f"{split}*.parquet")) or sorted(folder.glob(f"{split}/*.parquet"))
    files = files or sorted(folder.glob(f"data/{split}-*.parquet"))
    if not files:
        raise DataError(f"{folder}: no {split} parquet files; expected {LAYOUT}")
    try:
        table = pyarrow.concat_tables([pq.read_table(f) for f in files])
    except (OSError, pyarrow.ArrowException) as exc:
        raise DataError(
            f"{files[0].parent}: cannot read the {split} parquet files ({_first_line(exc)}); "
            f"expected {LAYOUT}"
        ) from exc
    # The schema's Hugging Face metadata restores feature types (an image column decodes to pixels).
    features = datasets.Features.from_arrow_schema(table.schema)
    return datasets.Dataset(InMemoryTable(table), info=datasets.DatasetInfo(features=features))


def _column(split: Any, name: str) -> np.ndarray:
    return np.asarray(split.select_columns([name]).with_format("numpy")[:][name])


def _inputs(datasets: Any, split: Any, columns: list[str], path: Path) -> np.ndarray:
    arrays = []
    for name in columns:
        values = _column(split, name)
        if values.dtype == object or not (np.issubdtype(values.dtype, np.number) or values.dtype == bool):
            raise DataError(
                f"{path}: column {name!r} is not numeric with one shape per sample (got {values.dtype}); "
                "choose numeric, array or image columns with data_args.feature_columns"
            )
        if isinstance(split.features[name], datasets.Image):
            images = values.astype(np.float32) / 255.0
            values = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)
        arrays.append(values.astype(np.float32))
    if len(arrays) == 1:
        single = arrays[0]
        return np.ascontiguousarray(single[:, None] if single.ndim == 1 else single)
    return np.concatenate([a.reshape(len(a), -1) for a in arrays], axis=1)


def _labels(
    datasets: Any, train: Any, test: Any, name: str, path: Path
) -> tuple[np.ndarray, np.ndarray, int]:
    train_y, test_y = _column(train, name), _column(test, name)
    feature = train.features[name]
    if np.issubdtype(train_y.dtype, np.integer) and np.issubdtype(test_y.dtype, np.integer):
        if min(train_y.min(initial=0), test_y.min(initial=0)) < 0:
            raise DataError(f"{path}: label column {name!r} has negative labels")
        classes = int(max(train_y.max(initial=0), test_y.max(initial=0))) + 1
        if isinstance(feature, datasets.ClassLabel):
            classes = max(classes, int(feature.num_classes))
        return train_y.astype(np.int64), test_y.astype(np.int64), classes
    ids_train, ids_test = _ids(train_y, test_y)
    return ids_train, ids_test, int(max(ids_train.max(initial=-1), ids_test.max(initial=-1))) + 1


def _ids(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ids for the values: ``train``'s distinct values in sorted order, then those only in ``test``."""
    values = np.unique(train)
    extra = np.setdiff1d(np.unique(test), values)
    both = np.concatenate([values, extra])
    lookup = {value: i for i, value in enumerate(both.tolist())}
    return (
        np.array([lookup[v] for v in train.tolist()], dtype=np.int64),
        np.array([lookup[v] for v in test.tolist()], dtype=np.int64),
    )


def _first_line(exc: BaseException) -> str:
    """Return the first line of a third-party error, so that ours stays one line."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

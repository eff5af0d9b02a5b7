"""Doctest collection: leave out the modules whose optional package (a pip extra) is not installed."""

from importlib.util import find_spec

OPTIONAL = {"fedml/loggers/mlflow.py": "mlflow", "fedml/loggers/tensorboard.py": "tensorboard"}

collect_ignore = [path for path, package in OPTIONAL.items() if find_spec(package) is None]

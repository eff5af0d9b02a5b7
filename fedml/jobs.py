"""Prebuilt jobs: the named recipes in ``configs/jobs/``, their listing, and running one by name.

A recipe is an ordinary config file (``fedml run --cf`` reads it too) whose leading comment block is its
card: a one-line title, then ``expected accuracy:``, ``source:`` and optionally ``data:`` lines (a line
indented under a field continues it). The listing reads the card and the validated config; ``run_job``
loads the file through ``fedml.init``, so ``key=value`` overrides work as on every other command.

Examples
--------
>>> jobs = find_jobs()
>>> "mnist_lr_fedprox" in jobs
True
>>> jobs["mnist_lr_fedprox"].algorithm
'FedProx'

"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from fedml.core.registry import suggest
from fedml.errors import ConfigError

if TYPE_CHECKING:
    from fedml.config import Arguments
    from fedml.tracking import RunResult

JOBS_DIR = Path(__file__).resolve().parent.parent / "configs" / "jobs"
"""Where the recipes live: ``configs/jobs/`` of the source checkout this package was imported from."""

CARD_FIELDS = ("expected accuracy", "source", "data")
"""The fields of a recipe's card, in the order the listing shows them."""

REQUIRED_FIELDS = ("expected accuracy", "source")
"""Card fields every recipe must give: what accuracy to expect, and where that figure comes from."""

_FIELD = re.compile(r"^(?P<key>[a-z ]+):\s*(?P<value>.*)$")


@dataclass(frozen=True)
class Job:
    """One recipe: its file, its card and what the config runs.

    Attributes
    ----------
    name
        The file's stem, as ``fedml jobs run NAME`` takes it.
    path
        The YAML file.
    title
        The card's first line.
    expected_accuracy, source, data
        The card's fields (``data`` is ``""`` when the card has none).
    dataset, model, algorithm, backend
        ``data_args.dataset``, ``model_args.model``, ``train_args.federated_optimizer`` (with the server
        optimizer for FedOpt) and ``comm_args.backend``.
    rounds, clients_per_round
        ``comm_round`` and ``client_num_per_round``.
    clients
        ``client_num_in_total``, or ``None`` when the file leaves it to the dataset's natural clients
        (one per writer, speaker or id).

    """

    name: str
    path: Path
    title: str
    expected_accuracy: str
    source: str
    data: str
    dataset: str
    model: str
    algorithm: str
    backend: str
    rounds: int
    clients: int | None
    clients_per_round: int

    @property
    def command(self) -> str:
        """The command that runs this recipe."""
        return f"fedml jobs run {self.name}"


def read_card(path: Path) -> dict[str, str]:
    r"""Return the card of recipe ``path``: ``title`` and each field found, continuation lines joined.

    Raises
    ------
    ConfigError
        If the file cannot be read, has no leading comment, or lacks a field of ``REQUIRED_FIELDS``.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = Path(folder) / "tiny.yaml"
    ...     _ = path.write_text("# Tiny.\n# expected accuracy: not measured\n# source: none\n#   yet\n")
    ...     read_card(path)["source"]
    'none yet'

    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the recipe ({exc.strerror or exc})") from exc
    comments = []
    for line in lines:
        if not line.startswith("#"):
            break
        comments.append(line[1:])
    if not comments or not comments[0].strip():
        raise ConfigError(f"{path}: a recipe starts with a comment line giving its title")
    card = {"title": comments[0].strip()}
    current: str | None = None
    for text in comments[1:]:
        match = _FIELD.match(text.strip())
        if match and match["key"] in CARD_FIELDS and not text.startswith("  "):
            current = match["key"]
            card[current] = match["value"].strip()
        elif current is not None and text.startswith("  ") and text.strip():
            card[current] = f"{card[current]} {text.strip()}"
        else:
            current = None
    missing = [field for field in REQUIRED_FIELDS if not card.get(field)]
    if missing:
        raise ConfigError(
            f"{path}: the recipe's leading comment lacks {' and '.join(f'{m!r}' for m in missing)} "
            "(a line such as '# expected accuracy: not measured')"
        )
    return card


def read_job(path: Path) -> Job:
    """Return the recipe in ``path``, its config validated.

    Raises
    ------
    ConfigError
        For a card without its required fields or a config that does not validate.

    """
    from fedml.config import load_arguments

    card = read_card(path)
    args = load_arguments(path)
    train = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("train_args") or {}
    algorithm = args.federated_optimizer
    if algorithm == "FedOpt":
        algorithm = f"FedOpt ({args.server_optimizer})"
    return Job(
        name=path.stem,
        path=path,
        title=card["title"],
        expected_accuracy=card["expected accuracy"],
        source=card["source"],
        data=card.get("data", ""),
        dataset=args.dataset,
        model=args.model,
        algorithm=algorithm,
        backend=args.backend,
        rounds=args.comm_round,
        clients=args.client_num_in_total if "client_num_in_total" in train else None,
        clients_per_round=args.client_num_per_round,
    )


def find_jobs(folder: Path | None = None) -> dict[str, Job]:
    """Return every recipe in ``folder`` (default ``JOBS_DIR``) by name, sorted by name.

    Raises
    ------
    ConfigError
        If the folder does not exist (an installed package without the source checkout's ``configs/``),
        or for a recipe that does not read (naming its file).

    """
    folder = JOBS_DIR if folder is None else folder
    if not folder.is_dir():
        raise ConfigError(
            f"{folder}: no recipes folder; the prebuilt jobs are the YAML files in configs/jobs/ of a "
            "fedml source checkout"
        )
    return {path.stem: read_job(path) for path in sorted(folder.glob("*.yaml"))}


def get_job(name: str, folder: Path | None = None) -> Job:
    """Return the recipe ``name``.

    Raises
    ------
    ConfigError
        For an unknown name; the message lists the valid ones.

    """
    jobs = find_jobs(folder)
    if name not in jobs:
        raise ConfigError(
            f"fedml jobs: unknown job {name!r}{suggest(name, list(jobs))}; valid: {', '.join(jobs)}"
        )
    return jobs[name]


def jobs_table(jobs: Mapping[str, Job]) -> str:
    """Return the listing of ``jobs``: one row per recipe, then each recipe's accuracy source and data.

    Examples
    --------
    >>> print(jobs_table(find_jobs()).splitlines()[0])  # doctest: +NORMALIZE_WHITESPACE
    name dataset model algorithm backend rounds clients expected accuracy command

    """
    header = (
        "name",
        "dataset",
        "model",
        "algorithm",
        "backend",
        "rounds",
        "clients",
        "expected accuracy",
        "command",
    )
    rows = [
        (
            job.name,
            job.dataset,
            job.model,
            job.algorithm,
            job.backend,
            str(job.rounds),
            f"{job.clients_per_round}/{job.clients or 'natural'}",
            _short(job.expected_accuracy),
            job.command,
        )
        for job in jobs.values()
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    lines.append("")
    for job in jobs.values():
        lines.append(f"{job.name}: {job.title}")
        lines.append(f"  expected accuracy: {job.expected_accuracy}")
        lines.append(f"  source: {job.source}")
        if job.data:
            lines.append(f"  data: {job.data}")
    lines.append("")
    lines.append("Run one with: fedml jobs run NAME [key=value ...] (e.g. comm_round=5 data_cache_dir=DIR)")
    return "\n".join(lines)


def _short(expected: str) -> str:
    """Return the accuracy figure of a card's field, without the sentence that follows it."""
    return expected.split(";")[0].split(" (")[0]


def job_arguments(name: str, overrides: Sequence[str] = (), folder: Path | None = None) -> Arguments:
    """Return the arguments of recipe ``name`` with ``key=value`` ``overrides``, read by ``fedml.init``.

    ``overrides`` may also hold ``--rank``, ``--role`` and ``--run_id``, as on ``fedml run``; the recipe
    is the config file, so ``--cf`` is refused.

    Raises
    ------
    ConfigError
        For an unknown recipe, a ``--cf`` among the overrides, or a bad override.

    """
    import fedml

    job = get_job(name, folder)
    if any(
        token in {"--cf", "--config_file"} or token.startswith(("--cf=", "--config_file="))
        for token in overrides
    ):
        raise ConfigError(f"fedml jobs run {name}: the recipe {job.path} is the config file; drop --cf")
    return fedml.init(["--cf", str(job.path), *overrides])


def run_job(name: str, overrides: Sequence[str] = (), folder: Path | None = None) -> RunResult:
    """Run recipe ``name`` the five-step way, with ``key=value`` ``overrides`` on top of its file.

    Returns
    -------
    RunResult
        Final metrics, per-round history and the run directory.

    Raises
    ------
    ConfigError
        For an unknown recipe or a bad override; loading errors (missing data files) are raised as the
        loaders raise them.

    """
    import fedml

    args = job_arguments(name, overrides, folder)
    dataset, output_dim = fedml.data.load(args)
    model = fedml.model.create(args, output_dim)
    return fedml.FedMLRunner(args, fedml.device.get_device(args), dataset, model).run()

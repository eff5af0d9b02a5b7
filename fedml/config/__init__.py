"""Configuration: YAML file + command line -> one validated ``Arguments`` object with flat attribute access.

Each YAML section is a pydantic model with its defaults on the model and unknown keys forbidden; a
section's model is its core keys plus the keys that registered components (algorithms, steps,
datasets) declare for it (``fedml.config.sections.compose``). Every problem in a file is collected
and reported together, each with the file, the dotted key and, where one is close, the key that was
probably meant.

Examples
--------
>>> args = load_arguments(overrides={"comm_round": 3})
>>> args.comm_round, args.train_args.comm_round
(3, 3)

"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from fedml.config.sections import BACKENDS, ComponentSettings, Section, compose
from fedml.core.registry import Registry, suggest
from fedml.errors import ConfigError


class _Schema(Mapping[str, type[Section]]):
    """Section name -> model, composed on first use from the core sections and the registries' settings.

    Composition waits until a configuration is read, so that every component module has registered,
    and happens again when a component registers later.
    """

    def __init__(self) -> None:
        self._models: dict[str, type[Section]] = {}
        self._stamp: tuple[tuple[int, int], ...] | None = None
        self._components: list[type[ComponentSettings]] | None = None
        self._sections_of: dict[str, list[str]] = {}

    def models(self) -> dict[str, type[Section]]:
        """Return the composed models, composing again if a component has registered since."""
        stamp = tuple(registry.stamp() for registry in component_registries())
        if stamp == self._stamp:
            return self._models
        components = component_settings()
        if components != self._components:
            self._components = components
            self._models = compose(components)
            self._sections_of = {}
            for name, model in self._models.items():
                for key in model.model_fields:
                    self._sections_of.setdefault(key, []).append(name)
        self._stamp = stamp
        return self._models

    def sections_of(self, key: str) -> list[str]:
        """Return the sections holding ``key`` (several for ``byzantine_client_num``)."""
        self.models()
        return self._sections_of.get(key, [])

    def keys_to_sections(self) -> dict[str, list[str]]:
        """Return every key with the sections holding it."""
        self.models()
        return self._sections_of

    def __getitem__(self, name: str) -> type[Section]:
        return self.models()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.models())

    def __len__(self) -> int:
        return len(self.models())


def component_registries() -> tuple[Registry[Any], ...]:
    """Return the registries whose entries declare YAML keys (algorithms, steps, runners, topologies, ...)."""
    from fedml.core.algorithms import ALGORITHMS
    from fedml.core.comm.base import TRANSPORTS
    from fedml.core.steps import CLIENT_STEPS, SERVER_STEPS
    from fedml.data import DATASETS
    from fedml.runner import RUNNERS
    from fedml.simulation.topologies import TOPOLOGIES

    return (ALGORITHMS, CLIENT_STEPS, SERVER_STEPS, DATASETS, RUNNERS, TRANSPORTS, TOPOLOGIES)


def component_settings() -> list[type[ComponentSettings]]:
    """Return the settings models that the component registries declare."""
    return [model for registry in component_registries() for model in registry.settings_models()]


SECTIONS = _Schema()
"""YAML section name -> the model that validates it. A key in several sections
(``byzantine_client_num`` is in ``defense_args`` and ``attack_args``, as in FedML) is ambiguous to read
flat (an error names the sections) and written to all of them by a flat write or override."""


class Arguments:
    """All settings of one run: sections as attributes and every key as a flat attribute.

    ``args.train_args`` is the validated section; ``args.comm_round`` reads (and assigning it writes,
    with validation) the same value. Attributes that are not config keys (``rank``, ``role``,
    ``run_id``, ``config_file`` or anything user code adds) are plain attributes.
    """

    def __init__(
        self,
        sections: Mapping[str, Section],
        *,
        config_file: str | None = None,
        rank: int = 0,
        role: str = "server",
        run_id: str = "0",
    ) -> None:
        object.__setattr__(self, "_sections", dict(sections))
        # Key -> its sections among these; flat reads are hot (once per client in a round).
        homes = {
            key: [s for s in names if s in sections] for key, names in SECTIONS.keys_to_sections().items()
        }
        object.__setattr__(self, "_homes", {key: names for key, names in homes.items() if names})
        self.config_file = config_file
        self.rank = rank
        self.role = role
        self.run_id = run_id

    def __getattr__(self, name: str) -> Any:
        sections = object.__getattribute__(self, "_sections")
        if name in sections:
            return sections[name]
        homes = object.__getattribute__(self, "_homes").get(name)
        if homes:
            if len(homes) > 1:
                raise ConfigError(
                    f"{name} is a setting of {' and of '.join(homes)}, which may differ: read "
                    + " or ".join(f"args.{home}.{name}" for home in homes)
                )
            return getattr(sections[homes[0]], name)
        raise AttributeError(
            f"'Arguments' has no attribute {name!r}{_suggest(name, object.__getattribute__(self, '_homes'))}"
        )

    def __setattr__(self, name: str, value: Any) -> None:
        homes = self._homes.get(name)
        if homes:
            for section in homes:
                try:
                    setattr(self._sections[section], name, value)
                except ValidationError as exc:
                    raise ConfigError(
                        _format_errors(self.config_file, [(f"{section}.{name}", _first_msg(exc))])
                    ) from exc
        elif name in self._sections:
            raise AttributeError(f"section {name!r} cannot be replaced; set its keys instead")
        else:
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Return the resolved configuration as nested plain data, ready to be written as YAML."""
        return {name: section.model_dump() for name, section in self._sections.items()}

    def __repr__(self) -> str:
        return f"Arguments({self.to_dict()!r})"


def load_arguments(
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    rank: int = 0,
    role: str = "server",
    run_id: str = "0",
) -> Arguments:
    """Read a YAML file (or only defaults), apply overrides, validate everything and return ``Arguments``.

    Parameters
    ----------
    config_file
        Path of a YAML file with FedML's sections, or ``None`` for the defaults.
    overrides
        Keys to set on top of the file, flat (``comm_round``) or dotted (``train_args.comm_round``).
    rank, role, run_id
        Process identity, kept as plain attributes.

    Raises
    ------
    ConfigError
        Listing every unreadable file, unknown key, bad value and impossible combination at once.

    """
    source = str(config_file) if config_file is not None else None
    raw = _read_yaml(Path(config_file)) if config_file is not None else {}
    errors: list[tuple[str, str]] = []
    for section, value in raw.items():
        if section not in SECTIONS:
            errors.append((str(section), f"unknown section{_suggest(str(section), SECTIONS)}"))
        elif value is not None and not isinstance(value, Mapping):
            errors.append((section, f"must be a mapping of keys, got {type(value).__name__}"))
    values: dict[str, dict[str, Any]] = {
        name: dict(raw.get(name) or {}) for name in SECTIONS if isinstance(raw.get(name) or {}, Mapping)
    }
    for key, value in (overrides or {}).items():
        section, _, field = key.rpartition(".")
        targets = [section] if section else SECTIONS.sections_of(field)
        if not targets or any(t not in SECTIONS or field not in SECTIONS[t].model_fields for t in targets):
            errors.append((key, f"unknown override{_suggest(field, SECTIONS.keys_to_sections())}"))
        for target in targets:
            if target in SECTIONS and field in SECTIONS[target].model_fields:
                values.setdefault(target, {})[field] = value
    sections: dict[str, Section] = {}
    for name, model in SECTIONS.items():
        if name not in values:
            continue
        try:
            sections[name] = model(**values[name])
        except ValidationError as exc:
            errors.extend(_section_errors(name, model, exc))
    errors.extend(_name_checks(sections, values))
    if not errors:
        _networked_defaults(sections)
        errors.extend(_cross_checks(sections))
    if errors:
        raise ConfigError(_format_errors(source, errors))
    return Arguments(sections, config_file=source, rank=rank, role=role, run_id=run_id)


def parse_command_line(
    argv: Sequence[str] | None = None,
) -> tuple[str | None, dict[str, Any], dict[str, Any]]:
    """Split a command line into ``(config_file, identity, overrides)``.

    Understands ``--cf FILE`` (alias ``--config_file``), ``--rank N``, ``--role NAME``, ``--run_id ID``,
    ``--quiet`` (``tracking_args.quiet``) and any number of ``key=value`` overrides whose values are
    read as YAML scalars (``comm_round=5``, ``train_args.learning_rate=0.1``). ``argv`` defaults to
    ``sys.argv[1:]``.

    Other flags (``--workload heavy``, ``--out=x``) belong to the application's own parser and are left
    alone, with the bare value that follows one; but a flag spelt like one of fedml's (``--rnak``) or
    named like a config key (``--epochs 3``, meant as ``epochs=3``) is an error saying so.
    """
    parser = argparse.ArgumentParser(prog="fedml", add_help=False)
    parser.add_argument("--cf", "--config_file", dest="config_file", default=None)
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--role", default="server")
    parser.add_argument("--run_id", default="0")
    parser.add_argument("--quiet", action="store_true")
    known, rest = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    overrides: dict[str, Any] = {"quiet": True} if known.quiet else {}
    after_foreign_flag = False
    for token in rest:
        if token.startswith("-"):
            _check_foreign_flag(token)
            after_foreign_flag = "=" not in token
            continue
        key, sep, text = token.partition("=")
        if not sep or not key:
            if after_foreign_flag:
                after_foreign_flag = False
                continue
            raise ConfigError(
                f"unrecognised command-line argument {token!r}; expected --cf FILE, --rank N, --role NAME, "
                "--run_id ID or key=value overrides such as comm_round=5"
            )
        after_foreign_flag = False
        try:
            overrides[key] = yaml.safe_load(text) if text else ""
        except yaml.YAMLError as exc:
            problem = str(exc).splitlines()[0]
            raise ConfigError(f"override {token!r}: the value is not valid YAML ({problem})") from exc
    identity = {"rank": known.rank, "role": known.role, "run_id": known.run_id}
    return known.config_file, identity, overrides


_FLAGS = ("cf", "config_file", "rank", "role", "run_id", "quiet")


def _check_foreign_flag(token: str) -> None:
    """Refuse a flag that is a misspelt fedml flag or a config key; any other is the application's."""
    flag = token.partition("=")[0]
    name = flag.lstrip("-")
    if name in SECTIONS.keys_to_sections():
        raise ConfigError(
            f"command-line argument {token!r}: config keys are given as key=value, e.g. {name}=..."
        )
    close = difflib.get_close_matches(name.replace("-", "_"), _FLAGS, n=1, cutoff=0.7)
    if close:
        raise ConfigError(f"unrecognised command-line flag {flag!r}; did you mean --{close[0]}?")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {exc.start}: {exc.reason})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def _section_errors(name: str, model: type[Section], exc: ValidationError) -> list[tuple[str, str]]:
    found = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"])
        if err["type"] == "extra_forbidden":
            field = str(err["loc"][-1])
            home = next(iter(SECTIONS.sections_of(field)), None)
            hint = f"; it belongs in {home}" if home else _suggest(field, model.model_fields)
            found.append((f"{name}.{key}", f"unknown key{hint}"))
        else:
            found.append((f"{name}.{key}", f"{err['msg']} (got {err.get('input')!r})"))
    return found


def _name_checks(
    sections: Mapping[str, Any], values: Mapping[str, Mapping[str, Any]]
) -> list[tuple[str, str]]:
    """Check names against their registries, also in sections that failed validation for another key."""
    from fedml.core.algorithms import ALGORITHMS
    from fedml.data import DATASETS
    from fedml.data.partition import PARTITIONERS
    from fedml.model import MODELS

    errors = []
    for registry, section, key in (
        (DATASETS, "data_args", "dataset"),
        (MODELS, "model_args", "model"),
        (ALGORITHMS, "train_args", "federated_optimizer"),
        (PARTITIONERS, "data_args", "partition_method"),
    ):
        if section in sections:
            value = getattr(sections[section], key)
        else:
            value = values.get(section, {}).get(key, SECTIONS[section].model_fields[key].default)
        if isinstance(value, str) and value not in registry:
            errors.append((registry.key, registry.unknown(value).partition(": ")[2]))
    return errors


NETWORK_BACKENDS = {"cross_silo": "GRPC", "cross_device": "MQTT"}
"""The ``comm_args.backend`` of each networked training type when the configuration names none."""


def _networked_defaults(sections: Mapping[str, Any]) -> None:
    """Fill what a networked run leaves unset: its backend and, for one client per silo, the client count.

    The seed's cross-silo YAML names neither ``comm_args.backend`` nor ``client_num_in_total``: it runs
    over gRPC with one client (the silo's own data) per silo, ``client_num_per_round`` silos in all.
    """
    training_type = sections["common_args"].training_type
    if training_type not in NETWORK_BACKENDS:
        return
    comm, train = sections["comm_args"], sections["train_args"]
    if "backend" not in comm.model_fields_set:
        comm.backend = NETWORK_BACKENDS[training_type]
    if "client_num_in_total" not in train.model_fields_set:
        train.client_num_in_total = train.client_num_per_round


def _cross_checks(sections: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Check across keys: the combinations, then each component's own cross-check."""
    train = sections["train_args"]
    errors = []
    if train.client_num_per_round > train.client_num_in_total:
        errors.append(
            (
                "train_args.client_num_per_round",
                f"{train.client_num_per_round} clients per round but only "
                f"{train.client_num_in_total} in total (train_args.client_num_in_total)",
            )
        )
    for component in {type(section) for section in sections.values()}:
        for model in component.__mro__:
            if (
                isinstance(model, type)
                and issubclass(model, ComponentSettings)
                and "cross_check" in vars(model)
            ):
                errors.extend(model.cross_check(sections))
    backend = sections["comm_args"].backend
    canonical = {name.upper(): name for name in BACKENDS}
    if backend.upper() in canonical:
        sections["comm_args"].backend = canonical[backend.upper()]
    else:
        errors.append(("comm_args.backend", f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}"))
    if sections["comm_args"].backend == "NCCL":
        errors.extend(_presummed_checks(sections))
    return errors


def _presummed_checks(sections: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Refuse, at load, what NCCL's pre-summed all-reduce cannot serve (the runner checks it again)."""
    from fedml.core.algorithms import ALGORITHMS

    errors = []
    why = "comm_args.backend NCCL sums client updates before the server sees them, which {} cannot use"
    optimizer = sections["train_args"].federated_optimizer
    if optimizer in ALGORITHMS and not getattr(ALGORITHMS.get(optimizer), "accepts_presummed_updates", True):
        errors.append(("train_args.federated_optimizer", why.format(optimizer) + "; use backend sp or MPI"))
    defense = sections["defense_args"]
    if defense.enable_defense and defense.defense_type:
        errors.append(
            ("defense_args.enable_defense", why.format("the defense step") + "; use backend sp or MPI")
        )
    return errors


def _suggest(name: str, candidates: Mapping[str, Any] | Sequence[str]) -> str:
    return suggest(name, candidates)


def _first_msg(exc: ValidationError) -> str:
    err = exc.errors()[0]
    return f"{err['msg']} (got {err.get('input')!r})"


def _format_errors(source: str | None, errors: Sequence[tuple[str, str]]) -> str:
    where = source or "configuration (defaults and overrides)"
    lines = [f"{where}: {len(errors)} problem{'s' if len(errors) > 1 else ''}"]
    lines += [f"  - {key}: {msg}" for key, msg in errors]
    return "\n".join(lines)


__all__ = ["BACKENDS", "SECTIONS", "Arguments", "load_arguments", "parse_command_line"]

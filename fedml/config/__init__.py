"""Configuration: YAML file + command line -> one validated ``Arguments`` object with flat attribute access.

Each YAML section is a pydantic model with its defaults on the model and unknown keys forbidden.
Every problem in a file is collected and reported together, each with the file, the dotted key and,
where one is close, the key that was probably meant.

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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from fedml.config.sections import BACKENDS, SECTIONS, _Section
from fedml.errors import ConfigError

_SECTIONS_OF: dict[str, list[str]] = {}
for _name, _model in SECTIONS.items():
    for _key in _model.model_fields:
        _SECTIONS_OF.setdefault(_key, []).append(_name)
_SECTION_OF: dict[str, str] = {key: names[0] for key, names in _SECTIONS_OF.items()}
"""Key -> the first section holding it. A key in several sections (``byzantine_client_num`` is in
``defense_args`` and ``attack_args``, as in FedML) is ambiguous to read flat (an error names the
sections) and written to all of them by a flat write or override."""


class Arguments:
    """All settings of one run: sections as attributes and every key as a flat attribute.

    ``args.train_args`` is the validated section; ``args.comm_round`` reads (and assigning it writes,
    with validation) the same value. Attributes that are not config keys (``rank``, ``role``,
    ``run_id``, ``config_file`` or anything user code adds) are plain attributes.
    """

    def __init__(
        self,
        sections: Mapping[str, _Section],
        *,
        config_file: str | None = None,
        rank: int = 0,
        role: str = "server",
        run_id: str = "0",
    ) -> None:
        object.__setattr__(self, "_sections", dict(sections))
        self.config_file = config_file
        self.rank = rank
        self.role = role
        self.run_id = run_id

    def __getattr__(self, name: str) -> Any:
        sections = object.__getattribute__(self, "_sections")
        if name in sections:
            return sections[name]
        if name in _SECTION_OF:
            homes = _SECTIONS_OF[name]
            if len(homes) > 1:
                raise ConfigError(
                    f"{name} is a setting of {' and of '.join(homes)}, which may differ: read "
                    + " or ".join(f"args.{home}.{name}" for home in homes)
                )
            return getattr(sections[homes[0]], name)
        raise AttributeError(f"'Arguments' has no attribute {name!r}{_suggest(name, _SECTION_OF)}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SECTIONS_OF:
            for section in _SECTIONS_OF[name]:
                try:
                    setattr(self._sections[section], name, value)
                except ValidationError as exc:
                    raise ConfigError(
                        _format_errors(self.config_file, [(f"{section}.{name}", _first_msg(exc))])
                    ) from exc
        elif name in SECTIONS:
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
        targets = [section] if section else _SECTIONS_OF.get(field, [])
        if not targets or any(t not in SECTIONS or field not in SECTIONS[t].model_fields for t in targets):
            errors.append((key, f"unknown override{_suggest(field, _SECTION_OF)}"))
        for target in targets:
            if target in SECTIONS and field in SECTIONS[target].model_fields:
                values.setdefault(target, {})[field] = value
    sections: dict[str, _Section] = {}
    for name, model in SECTIONS.items():
        if name not in values:
            continue
        try:
            sections[name] = model(**values[name])
        except ValidationError as exc:
            errors.extend(_section_errors(name, model, exc))
    if not errors:
        errors.extend(_cross_checks(sections))
    if errors:
        raise ConfigError(_format_errors(source, errors))
    return Arguments(sections, config_file=source, rank=rank, role=role, run_id=run_id)


def parse_command_line(
    argv: Sequence[str] | None = None,
) -> tuple[str | None, dict[str, Any], dict[str, Any]]:
    """Split a command line into ``(config_file, identity, overrides)``.

    Understands ``--cf FILE`` (alias ``--config_file``), ``--rank N``, ``--role NAME``, ``--run_id ID``
    and any number of ``key=value`` overrides whose values are read as YAML scalars
    (``comm_round=5``, ``train_args.learning_rate=0.1``). ``argv`` defaults to ``sys.argv[1:]``.
    """
    parser = argparse.ArgumentParser(prog="fedml", add_help=False)
    parser.add_argument("--cf", "--config_file", dest="config_file", default=None)
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--role", default="server")
    parser.add_argument("--run_id", default="0")
    known, rest = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    overrides: dict[str, Any] = {}
    for token in rest:
        key, sep, text = token.partition("=")
        if not sep or not key or key.startswith("-"):
            raise ConfigError(
                f"unrecognised command-line argument {token!r}; expected --cf FILE, --rank N, --role NAME, "
                "--run_id ID or key=value overrides such as comm_round=5"
            )
        overrides[key] = yaml.safe_load(text) if text else ""
    identity = {"rank": known.rank, "role": known.role, "run_id": known.run_id}
    return known.config_file, identity, overrides


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror or exc})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def _section_errors(name: str, model: type[_Section], exc: ValidationError) -> list[tuple[str, str]]:
    found = []
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"])
        if err["type"] == "extra_forbidden":
            field = str(err["loc"][-1])
            home = _SECTION_OF.get(field)
            hint = f"; it belongs in {home}" if home else _suggest(field, model.model_fields)
            found.append((f"{name}.{key}", f"unknown key{hint}"))
        else:
            found.append((f"{name}.{key}", f"{err['msg']} (got {err.get('input')!r})"))
    return found


def _cross_checks(sections: Mapping[str, _Section]) -> list[tuple[str, str]]:
    from fedml.core.algorithms import algorithm_names
    from fedml.core.algorithms.fedopt import SERVER_OPTIMIZERS
    from fedml.core.attacks import ATTACK_TYPES, BYZANTINE_MODES
    from fedml.core.robust import aggregation_rule_names
    from fedml.data import dataset_names, partition_methods
    from fedml.model import model_names

    train, data = sections["train_args"], sections["data_args"]
    errors = []
    if train.client_num_per_round > train.client_num_in_total:
        errors.append(
            (
                "train_args.client_num_per_round",
                f"{train.client_num_per_round} clients per round but only "
                f"{train.client_num_in_total} in total (train_args.client_num_in_total)",
            )
        )
    named: list[tuple[str, str, Callable[[], Sequence[str]]]] = [
        ("data_args.dataset", data.dataset, dataset_names),
        ("data_args.partition_method", data.partition_method, partition_methods),
        ("model_args.model", sections["model_args"].model, model_names),
        ("train_args.federated_optimizer", train.federated_optimizer, algorithm_names),
        ("train_args.server_optimizer", train.server_optimizer, lambda: SERVER_OPTIMIZERS),
        ("attack_args.attack_mode", sections["attack_args"].attack_mode, lambda: BYZANTINE_MODES),
    ]
    errors.extend(_defense_attack_checks(sections, named, ATTACK_TYPES, aggregation_rule_names))
    for key, value, names in named:
        valid = list(names())
        if value not in valid:
            errors.append((key, f"unknown name {value!r}{_suggest(value, valid)}; valid: {', '.join(valid)}"))
    backend = sections["comm_args"].backend
    canonical = {name.upper(): name for name in BACKENDS}
    if backend.upper() in canonical:
        sections["comm_args"].backend = canonical[backend.upper()]
    else:
        errors.append(("comm_args.backend", f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}"))
    return errors


def _defense_attack_checks(
    sections: Mapping[str, _Section],
    named: list[tuple[str, str, Callable[[], Sequence[str]]]],
    attack_types: Sequence[str],
    rule_names: Callable[[], Sequence[str]],
) -> list[tuple[str, str]]:
    """Check that an enabled defense or attack names its type; queue the type names for validation."""
    defense, attack = sections["defense_args"], sections["attack_args"]
    errors = []
    if defense.enable_defense and defense.defense_type is None:
        errors.append(
            (
                "defense_args.defense_type",
                f"enable_defense is true but no type is set; valid: {', '.join(rule_names())}",
            )
        )
    if defense.defense_type is not None:
        from fedml.core.robust import chain_problems

        chain = [defense.defense_type] if isinstance(defense.defense_type, str) else defense.defense_type
        if not chain:
            errors.append(("defense_args.defense_type", "the list of rules is empty"))
        errors.extend(("defense_args.defense_type", problem) for problem in chain_problems(chain))
    if attack.enable_attack and attack.attack_type is None:
        errors.append(
            (
                "attack_args.attack_type",
                f"enable_attack is true but no type is set; valid: {', '.join(attack_types)}",
            )
        )
    if attack.attack_type is not None:
        named.append(("attack_args.attack_type", attack.attack_type, lambda: attack_types))
    if attack.enable_attack and sections["common_args"].training_type != "simulation":
        errors.append(("attack_args.enable_attack", "attacks are simulated only (common_args.training_type)"))
    if len(attack.original_class_list) != len(attack.target_class_list):
        errors.append(
            (
                "attack_args.target_class_list",
                f"{len(attack.target_class_list)} classes but original_class_list has "
                f"{len(attack.original_class_list)}",
            )
        )
    return errors


def _suggest(name: str, candidates: Mapping[str, Any] | Sequence[str]) -> str:
    pool = list(candidates)
    lowered = {c.lower(): c for c in pool}
    match = lowered.get(name.lower()) or next(
        iter(difflib.get_close_matches(name, pool, n=1, cutoff=0.6)), None
    )
    return f"; did you mean {match}?" if match else ""


def _first_msg(exc: ValidationError) -> str:
    err = exc.errors()[0]
    return f"{err['msg']} (got {err.get('input')!r})"


def _format_errors(source: str | None, errors: Sequence[tuple[str, str]]) -> str:
    where = source or "configuration (defaults and overrides)"
    lines = [f"{where}: {len(errors)} problem{'s' if len(errors) > 1 else ''}"]
    lines += [f"  - {key}: {msg}" for key, msg in errors]
    return "\n".join(lines)


__all__ = ["BACKENDS", "SECTIONS", "Arguments", "load_arguments", "parse_command_line"]

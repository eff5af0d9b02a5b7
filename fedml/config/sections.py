"""The YAML sections: one pydantic model per section, defaults on the model, unknown keys forbidden.

The core keys of each section are here. Components (algorithms, steps, datasets) add their own keys:
each declares them in a ``ComponentSettings`` model naming its section and registers it with its
registry entry; ``compose`` builds each section's model from the core part and those components, so
``fedprox_mu`` is declared (with its default) once, in FedProx's module, and the YAML is unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from fedml.errors import ConfigError

BACKENDS = ("sp", "MPI", "NCCL", "GRPC", "MQTT", "TRPC")
"""Every ``comm_args.backend`` name fedml knows; which run for which training type is the runner's table."""


class Section(BaseModel):
    """A YAML section: unknown keys are forbidden and assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)


class ComponentSettings(Section):
    """The keys a component adds to the YAML section named by ``section``, with their defaults.

    ``cross_check`` returns ``(dotted key, problem)`` pairs for what one section cannot check alone.
    """

    section: ClassVar[str]

    @classmethod
    def cross_check(cls, sections: Mapping[str, Any]) -> list[tuple[str, str]]:
        """Return the problems of these settings given every validated section (none by default)."""
        return []


def read_settings(args: Any, model: type[ComponentSettings]) -> Any:
    """Return ``model``'s keys as ``args`` has them; keys it lacks (a plain namespace) take the defaults.

    Raises
    ------
    ConfigError
        Naming the dotted key of each bad value.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> class Prox(ComponentSettings):
    ...     section = "train_args"
    ...     fedprox_mu: float = 0.01
    >>> read_settings(SimpleNamespace(), Prox).fedprox_mu
    0.01

    """
    section = getattr(args, model.section, None)
    source = section if isinstance(section, BaseModel) else args
    try:
        return model(**{key: getattr(source, key) for key in model.model_fields if hasattr(source, key)})
    except ValidationError as exc:
        problems = "; ".join(
            f"{model.section}.{'.'.join(map(str, err['loc']))}: {err['msg']} (got {err.get('input')!r})"
            for err in exc.errors()
        )
        raise ConfigError(problems) from exc


class CommonArgs(Section):
    """``common_args``: what kind of run this is, its seed and its topology.

    ``topology`` is ``star`` (a server and its clients), ``decentralized`` (gossip among the clients,
    no server) or ``hierarchical`` (clients under group aggregators under the server); the last two
    read ``topology_args`` (``fedml.simulation.topologies``).
    """

    training_type: Literal["simulation", "cross_silo", "cross_device"] = "simulation"
    random_seed: int = 0
    topology: Literal["star", "decentralized", "hierarchical"] = "star"


class DataArgs(Section):
    """``data_args``: which dataset, where it is cached, and how it is split across clients."""

    dataset: str = "mnist"
    data_cache_dir: str = "~/.cache/fedml/data"
    download: bool = True
    partition_method: str = "hetero"
    partition_alpha: float = Field(0.5, gt=0)
    shards_per_client: int = Field(2, ge=1)


class ModelArgs(Section):
    """``model_args``: which model to train."""

    model: str = "lr"


class TrainArgs(Section):
    """``train_args``: the federated optimizer, client sampling and local training."""

    federated_optimizer: str = "FedAvg"
    client_num_in_total: int = Field(10, ge=1)
    client_num_per_round: int = Field(10, ge=1)
    comm_round: int = Field(50, ge=1)
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(10, ge=1)
    client_optimizer: Literal["sgd", "adam"] = "sgd"
    learning_rate: float = Field(0.03, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    engine: Literal["auto", "sequential", "vectorized"] = "auto"
    over_selection: float = Field(1.0, ge=1.0, le=10.0)


class ValidationArgs(Section):
    """``validation_args``: how often the global model is evaluated."""

    frequency_of_the_test: int = Field(1, ge=1)


class DeviceArgs(Section):
    """``device_args``: where tensors live, and how many CPU threads one operation may use."""

    using_gpu: bool = False
    gpu_id: int = Field(0, ge=0)
    num_threads: int | None = Field(None, ge=1)


class CommArgs(Section):
    """``comm_args``: the communication backend, and for networked runs the address, security and waits.

    ``backend`` defaults by training type (``sp`` for simulation, ``GRPC`` for cross-silo, ``MQTT`` for
    cross-device). ``host``/``port`` are the gRPC server's or the MQTT broker's address. The round keys
    (``join_timeout``, ``round_timeout``, ``min_clients``, ``min_clients_per_round``, ``round_retries``)
    say how long a networked server waits for silos and with how few it goes on; unset, they follow
    ``timeout`` and ``client_num_per_round`` as docs/cross_silo.md says.
    """

    backend: str = "sp"
    timeout: float = Field(300.0, gt=0)
    max_message_mb: int = Field(1024, ge=1, le=2047)
    host: str = "127.0.0.1"
    port: int | None = Field(None, ge=1, le=65535)
    auth_token: str | None = None
    auth_token_file: str | None = None
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_client_auth: bool = False
    insecure: bool = False
    insecure_remote: bool = False
    broker_username: str | None = None
    broker_password: str | None = None
    heartbeat: float = Field(10.0, gt=0)
    join_timeout: float = Field(300.0, gt=0)
    round_timeout: float | None = Field(None, gt=0)
    min_clients: int | None = Field(None, ge=1)
    min_clients_per_round: int | None = Field(None, ge=1)
    round_retries: int = Field(3, ge=0)


class TrackingArgs(Section):
    """``tracking_args``: where run directories go and what they keep."""

    run_dir: str = "./runs"
    run_name: str | None = None
    save_model: bool = True
    checkpoint_frequency: int = Field(0, ge=0)
    resume_from: str | None = None
    loggers: list[Literal["tensorboard", "mlflow"]] = Field(default_factory=list)
    mlflow_tracking_uri: str | None = None
    mlflow_experiment: str = "fedml"
    plots: bool = True
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    quiet: bool = False


CORE_SECTIONS: dict[str, type[Section]] = {
    "common_args": CommonArgs,
    "data_args": DataArgs,
    "model_args": ModelArgs,
    "train_args": TrainArgs,
    "validation_args": ValidationArgs,
    "device_args": DeviceArgs,
    "comm_args": CommArgs,
    "tracking_args": TrackingArgs,
}
"""YAML section name -> the model of its core keys."""

SECTION_ORDER = (
    "common_args",
    "data_args",
    "model_args",
    "train_args",
    "validation_args",
    "device_args",
    "comm_args",
    "defense_args",
    "attack_args",
    "tracking_args",
)
"""The order of sections in a written ``config.yaml``; sections of new components follow."""


def compose(components: Iterable[type[ComponentSettings]]) -> dict[str, type[Section]]:
    """Return section name -> model, each section the core model plus the components naming it."""
    parts: dict[str, list[type[Section]]] = {name: [model] for name, model in CORE_SECTIONS.items()}
    for component in components:
        parts.setdefault(component.section, []).append(component)
    names = [n for n in SECTION_ORDER if n in parts] + [n for n in parts if n not in SECTION_ORDER]
    sections: dict[str, type[Section]] = {}
    for name in names:
        # Reversed, so that pydantic lists the core keys first and then each component's, in order.
        bases = tuple(reversed(parts[name]))
        title = "".join(word.title() for word in name.split("_"))
        sections[name] = bases[0] if len(bases) == 1 else create_model(title, __base__=bases)
    return sections

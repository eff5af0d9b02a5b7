"""The YAML sections: one pydantic model per section, defaults on the model, unknown keys forbidden."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

BACKENDS = ("sp", "MPI", "NCCL", "GRPC", "MQTT")
"""Every ``comm_args.backend`` name fedml knows; which run for which training type is the runner's table."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class CommonArgs(_Section):
    """``common_args``: what kind of run this is and its seed."""

    training_type: Literal["simulation", "cross_silo", "cross_device"] = "simulation"
    random_seed: int = 0


class DataArgs(_Section):
    """``data_args``: which dataset, where it is cached, and how it is split across clients."""

    dataset: str = "mnist"
    data_cache_dir: str = "~/.cache/fedml/data"
    download: bool = True
    partition_method: str = "hetero"
    partition_alpha: float = Field(0.5, gt=0)
    shards_per_client: int = Field(2, ge=1)
    synthetic_alpha: float = Field(1.0, ge=0)
    synthetic_beta: float = Field(1.0, ge=0)
    synthetic_max_samples: int = Field(1000, ge=1)


class ModelArgs(_Section):
    """``model_args``: which model to train."""

    model: str = "lr"


class TrainArgs(_Section):
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
    fedprox_mu: float = Field(0.01, ge=0)
    server_optimizer: str = "sgd"
    server_lr: float = Field(1.0, gt=0)
    server_momentum: float = Field(0.0, ge=0, lt=1)
    server_epsilon: float = Field(1e-3, gt=0)
    feddyn_alpha: float = Field(0.01, gt=0)


class ValidationArgs(_Section):
    """``validation_args``: how often the global model is evaluated."""

    frequency_of_the_test: int = Field(1, ge=1)


class DeviceArgs(_Section):
    """``device_args``: where tensors live."""

    using_gpu: bool = False
    gpu_id: int = Field(0, ge=0)


class CommArgs(_Section):
    """``comm_args``: the communication backend."""

    backend: str = "sp"
    timeout: float = Field(300.0, gt=0)
    max_message_mb: int = Field(1024, ge=1, le=2047)


class DefenseArgs(_Section):
    """``defense_args``: Byzantine-robust aggregation in place of the weighted mean.

    ``defense_type`` names one rule or a list applied in order (``[norm_diff_clipping, trimmed_mean]``).
    """

    enable_defense: bool = False
    defense_type: str | list[str] | None = None
    byzantine_client_num: int = Field(0, ge=0)
    krum_param_m: int = Field(1, ge=1)
    trim_param_b: float = Field(0.1, ge=0, lt=0.5)
    norm_bound: float = Field(5.0, gt=0)


class AttackArgs(_Section):
    """``attack_args``: simulated adversaries among the clients (simulation only)."""

    enable_attack: bool = False
    attack_type: str | None = None
    attack_mode: str = "random"
    byzantine_client_num: int = Field(0, ge=0)
    scale_factor: float = Field(10.0, gt=0)
    original_class_list: list[int] = Field(default_factory=list)
    target_class_list: list[int] = Field(default_factory=list)
    ratio_of_poisoned_client: float = Field(0.0, ge=0, le=1)
    boost_factor: float | None = Field(None, gt=0)


class TrackingArgs(_Section):
    """``tracking_args``: where run directories go and what they keep."""

    run_dir: str = "./runs"
    run_name: str | None = None
    save_model: bool = True
    checkpoint_frequency: int = Field(0, ge=0)
    resume_from: str | None = None


SECTIONS: dict[str, type[_Section]] = {
    "common_args": CommonArgs,
    "data_args": DataArgs,
    "model_args": ModelArgs,
    "train_args": TrainArgs,
    "validation_args": ValidationArgs,
    "device_args": DeviceArgs,
    "comm_args": CommArgs,
    "defense_args": DefenseArgs,
    "attack_args": AttackArgs,
    "tracking_args": TrackingArgs,
}
"""YAML section name -> the model that validates it."""

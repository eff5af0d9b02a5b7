"""``train_args.aggregation_mode`` and its keys: defaults, and the combinations refused at load."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from fedml.config import load_arguments
from fedml.cross_device.settings import FedBuffSettings
from fedml.errors import ConfigError
from tests.conftest import ROOT

CONFIG = ROOT / "configs" / "cross_device_fedavg_mnist_lr.yaml"
FEDBUFF = ROOT / "configs" / "cross_device_fedbuff_mnist_lr.yaml"


def test_sync_is_the_default_and_the_fedbuff_config_loads():
    assert load_arguments(CONFIG, {}).aggregation_mode == "sync"
    args = load_arguments(FEDBUFF, {})
    assert (args.aggregation_mode, args.buffer_size, args.max_concurrency, args.max_staleness) == (
        "async",
        4,
        5,
        10,
    )


def test_async_outside_cross_device_is_refused_naming_both_keys():
    with pytest.raises(
        ConfigError,
        match=r"train_args\.aggregation_mode: async \(FedBuff\) runs with common_args\.training_type "
        r"cross_device, not simulation",
    ):
        load_arguments(None, {"aggregation_mode": "async"})


def test_async_with_an_algorithm_that_keeps_client_state_is_refused():
    with pytest.raises(ConfigError, match=r"cannot serve train_args\.federated_optimizer SCAFFOLD"):
        load_arguments(CONFIG, {"aggregation_mode": "async", "federated_optimizer": "SCAFFOLD"})


def test_async_with_secure_aggregation_is_refused():
    sections = {
        "train_args": SimpleNamespace(aggregation_mode="async", federated_optimizer="FedAvg"),
        "common_args": SimpleNamespace(training_type="cross_device"),
        "secure_aggregation_args": SimpleNamespace(enable_secure_aggregation=True),
    }
    ((key, problem),) = FedBuffSettings.cross_check(sections)
    assert key == "train_args.aggregation_mode"
    assert "secure_aggregation_args.enable_secure_aggregation" in problem
    sections["train_args"].aggregation_mode = "sync"
    assert FedBuffSettings.cross_check(sections) == []

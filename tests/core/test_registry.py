import sys

import pytest

from fedml.core.registry import Registry, suggest
from fedml.errors import ConfigError


def test_registered_entries_are_returned_and_listed_sorted():
    registry = Registry("colour", key="paint_args.colour")
    registry.register("red", 1)
    registry.register("blue", 2)
    assert (registry.get("red"), registry.get("blue")) == (1, 2)
    assert registry.names() == ["blue", "red"]
    assert "red" in registry
    assert "green" not in registry
    assert list(registry) == ["blue", "red"]


def test_a_taken_name_is_refused_unless_replaced():
    registry = Registry("colour", key="paint_args.colour")
    registry.register("red", 1)
    with pytest.raises(ConfigError, match="a colour named 'red' is already registered"):
        registry.register("red", 2)
    registry.register("red", 3, replace=True)
    assert registry.get("red") == 3
    with pytest.raises(ConfigError, match="a colour name must be a non-empty string"):
        registry.register("", 4)


def test_an_unknown_name_names_the_key_the_closest_match_and_the_valid_ones():
    registry = Registry("colour", key="paint_args.colour")
    registry.register("yellow", 1)
    registry.register("red", 2)
    with pytest.raises(
        ConfigError,
        match=r"^paint_args\.colour: unknown colour 'yelow'; did you mean yellow\?; valid: red, yellow$",
    ):
        registry.get("yelow")
    with pytest.raises(ConfigError, match="unknown colour 'purple'; valid: red, yellow"):
        registry.get("purple")


def test_case_insensitive_registries_match_any_case():
    registry = Registry("transport", key="comm_args.backend", case_sensitive=False)
    registry.register("Mpi", 1)
    assert registry.get("mpi") == registry.get("MPI") == 1
    assert registry.names() == ["MPI"]


def test_a_lazy_entry_is_imported_on_first_use_and_a_missing_package_names_its_extra(monkeypatch):
    registry = Registry("codec", key="comm_args.codec")
    registry.register("json", "json:dumps")
    assert registry.get("json")([1]) == "[1]"
    monkeypatch.setitem(sys.modules, "grpc", None)
    registry.register("grpc", "grpc:server", extra="grpc")
    with pytest.raises(
        ImportError,
        match=r'codec \'grpc\' needs a package that is not installed.*pip install -e "\.\[grpc\]"',
    ):
        registry.get("grpc")


def test_settings_models_are_collected_in_name_order_and_dropped_on_replace():
    registry = Registry("optimizer", key="train_args.federated_optimizer")
    registry.register("b", 1, settings="collections:OrderedDict")
    registry.register("a", 2, settings=dict)
    from collections import OrderedDict

    assert registry.settings_models() == [dict, OrderedDict]
    registry.register("a", 2, replace=True)
    assert registry.settings_models() == [OrderedDict]


def test_suggest_prefers_a_case_insensitive_match():
    assert suggest("fedavg", ["FedAvg", "FedProx"]) == "; did you mean FedAvg?"
    assert suggest("zzz", ["FedAvg"]) == ""

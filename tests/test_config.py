from pathlib import Path

import pytest

from fedml.config import SECTIONS, Arguments, load_arguments, parse_command_line
from fedml.errors import ConfigError

from .conftest import ROOT


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_defaults_match_the_default_config_file():
    from_file = load_arguments(ROOT / "configs" / "simulation_sp_fedavg_mnist_lr.yaml")
    assert from_file.to_dict() == load_arguments().to_dict()


def test_default_values_are_the_documented_simulation():
    args = load_arguments()
    assert (args.dataset, args.model, args.federated_optimizer) == ("mnist", "lr", "FedAvg")
    assert (args.client_num_in_total, args.comm_round, args.batch_size) == (10, 50, 10)
    assert (args.partition_method, args.partition_alpha, args.learning_rate) == ("hetero", 0.5, 0.03)


def test_fedml_docs_example_loads_with_flat_and_section_access():
    args = load_arguments(ROOT / "configs" / "fedml_config.yaml")
    assert args.training_type == "simulation"
    assert args.random_seed == 42
    assert args.comm_round == args.train_args.comm_round == 10
    assert args.client_num_per_round == 2
    assert args.learning_rate == pytest.approx(0.01)


def test_unknown_key_names_file_dotted_key_and_suggestion(tmp_path):
    path = write(tmp_path, "train_args:\n  comm_rounds: 5\n")
    with pytest.raises(ConfigError) as err:
        load_arguments(path)
    message = str(err.value)
    assert str(path) in message
    assert "train_args.comm_rounds" in message
    assert "did you mean comm_round?" in message


def test_key_in_the_wrong_section_says_where_it_belongs(tmp_path):
    with pytest.raises(ConfigError, match=r"data_args\.comm_round: unknown key; it belongs in train_args"):
        load_arguments(write(tmp_path, "data_args: {comm_round: 5}\n"))


def test_unknown_section_is_suggested(tmp_path):
    with pytest.raises(ConfigError, match="train_arg: unknown section; did you mean train_args"):
        load_arguments(write(tmp_path, "train_arg: {comm_round: 5}\n"))


def test_all_problems_are_reported_together(tmp_path):
    path = write(
        tmp_path, "train_args: {comm_round: abc, learning_rate: -1}\ndata_args: {partition_alpha: 0}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_arguments(path)
    message = str(err.value)
    assert "3 problems" in message
    for key in ("train_args.comm_round", "train_args.learning_rate", "data_args.partition_alpha"):
        assert key in message


def test_more_clients_per_round_than_in_total_is_rejected():
    with pytest.raises(
        ConfigError, match=r"train_args\.client_num_per_round: 20 clients per round but only 10"
    ):
        load_arguments(overrides={"client_num_per_round": 20})


@pytest.mark.parametrize(
    ("key", "value", "listed"),
    [
        ("dataset", "mnistt", "mnist"),
        ("model", "resnet9000", "cnn"),
        ("federated_optimizer", "FedAvgg", "FedAvg"),
        ("partition_method", "dirichlet", "hetero"),
        ("backend", "MPII", "MPI"),
    ],
)
def test_unknown_names_list_the_valid_ones(key, value, listed):
    with pytest.raises(ConfigError) as err:
        load_arguments(overrides={key: value})
    assert repr(value) in str(err.value)
    assert listed in str(err.value)


def test_backend_names_are_case_insensitive():
    assert load_arguments(overrides={"backend": "SP"}).backend == "sp"
    assert load_arguments(overrides={"backend": "mpi"}).backend == "MPI"


def test_missing_file_and_bad_yaml_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read config file"):
        load_arguments(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_arguments(write(tmp_path, "train_args: [unclosed\n"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_arguments(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="train_args: must be a mapping"):
        load_arguments(write(tmp_path, "train_args: 5\n"))


def test_overrides_flat_and_dotted_and_unknown():
    args = load_arguments(overrides={"comm_round": 3, "data_args.partition_method": "homo"})
    assert (args.comm_round, args.partition_method) == (3, "homo")
    with pytest.raises(ConfigError, match="comm_rond: unknown override; did you mean comm_round"):
        load_arguments(overrides={"comm_rond": 3})


def test_assignment_is_validated_and_shared_with_the_section():
    args = load_arguments()
    args.comm_round = 7
    assert args.train_args.comm_round == 7
    with pytest.raises(ConfigError, match=r"train_args\.comm_round"):
        args.comm_round = 0
    args.my_own_attribute = "kept"
    assert args.my_own_attribute == "kept"


def test_unknown_attribute_suggests_a_key():
    with pytest.raises(AttributeError, match="did you mean comm_round"):
        _ = load_arguments().comm_rounds


def test_command_line_reads_file_identity_and_typed_overrides(tmp_path):
    path = write(tmp_path, "train_args: {comm_round: 4}\n")
    config_file, identity, overrides = parse_command_line(
        ["--cf", str(path), "--rank", "2", "--role", "client", "learning_rate=0.1", "download=false"]
    )
    assert config_file == str(path)
    assert identity == {"rank": 2, "role": "client", "run_id": "0"}
    assert overrides == {"learning_rate": 0.1, "download": False}
    args = load_arguments(config_file, overrides, **identity)
    assert (args.comm_round, args.rank, args.role, args.learning_rate) == (4, 2, "client", 0.1)


def test_command_line_rejects_stray_tokens():
    with pytest.raises(ConfigError, match=r"'--epochs': config keys are given as key=value, e\.g\. epochs="):
        parse_command_line(["--epochs", "3"])
    with pytest.raises(ConfigError, match="unrecognised command-line argument 'stray'"):
        parse_command_line(["stray"])


def test_the_applications_own_flags_are_left_alone_but_misspelt_fedml_flags_are_caught():
    config_file, identity, overrides = parse_command_line(
        ["--workload", "heavy", "--out=x.json", "--verbose", "comm_round=3", "--rank", "2"]
    )
    assert (config_file, identity["rank"], overrides) == (None, 2, {"comm_round": 3})
    with pytest.raises(ConfigError, match="unrecognised command-line flag '--rnak'; did you mean --rank"):
        parse_command_line(["--rnak", "1"])


def test_to_dict_round_trips_every_section(tmp_path):
    import yaml

    args = load_arguments(overrides={"comm_round": 9})
    assert set(args.to_dict()) == set(SECTIONS)
    path = write(tmp_path, yaml.safe_dump(args.to_dict()))
    assert isinstance(load_arguments(path), Arguments)
    assert load_arguments(path).comm_round == 9


def test_a_components_keys_and_defaults_come_from_its_settings_model(monkeypatch):
    from pydantic import Field

    from fedml.config.sections import ComponentSettings
    from fedml.core.algorithms import ALGORITHMS, FedAvg, register_algorithm
    from fedml.core.algorithms.fedprox import FedProxSettings

    assert load_arguments().fedprox_mu == FedProxSettings.model_fields["fedprox_mu"].default

    class SlowAvgSettings(ComponentSettings):
        section = "train_args"
        slow_factor: float = Field(0.5, gt=0, le=1)

    monkeypatch.setattr(ALGORITHMS, "_entries", dict(ALGORITHMS._entries))
    monkeypatch.setattr(ALGORITHMS, "_settings", dict(ALGORITHMS._settings))
    register_algorithm("SlowAvg", FedAvg, SlowAvgSettings)
    args = load_arguments(overrides={"federated_optimizer": "SlowAvg"})
    assert args.slow_factor == 0.5
    assert args.train_args.slow_factor == 0.5
    with pytest.raises(
        ConfigError, match=r"train_args\.slow_factor: Input should be less than or equal to 1"
    ):
        load_arguments(overrides={"slow_factor": 3})


def test_an_unknown_optimizer_is_named_with_the_closest_one():
    with pytest.raises(ConfigError, match=r"train_args\.federated_optimizer: unknown optimizer 'FedAdam'"):
        load_arguments(overrides={"federated_optimizer": "FedAdam"})
    with pytest.raises(ConfigError, match="did you mean FedProx"):
        load_arguments(overrides={"federated_optimizer": "fedprox"})


@pytest.mark.parametrize(
    ("key", "value", "section"),
    [
        ("batch_size", True, "train_args"),
        ("comm_round", 2.5, "train_args"),
        ("using_gpu", "yes", "device_args"),
    ],
)
def test_a_bool_or_string_is_not_taken_for_a_number_or_a_bool(key, value, section):
    with pytest.raises(ConfigError, match=rf"{section}\.{key}: Input should be a valid"):
        load_arguments(overrides={key: value})


def test_a_file_that_is_not_utf8_and_an_override_that_is_not_yaml_are_one_clear_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("train_args: {comm_round: 5}  # réglé\n".encode("latin-1"))
    with pytest.raises(
        ConfigError, match=r"latin1\.yaml: not a UTF-8 text file \(byte 32: invalid continuation byte\)"
    ):
        load_arguments(path)
    with pytest.raises(ConfigError, match=r"override 'learning_rate=\[1': the value is not valid YAML"):
        parse_command_line(["learning_rate=[1"])


def test_a_bad_type_and_unknown_names_are_reported_together(tmp_path):
    path = write(
        tmp_path, "train_args: {comm_round: abc, federated_optimizer: FedAdam}\nmodel_args: {model: resnet}\n"
    )
    with pytest.raises(ConfigError) as err:
        load_arguments(path)
    message = str(err.value)
    assert "3 problems" in message
    assert "train_args.comm_round: Input should be a valid integer" in message
    assert "train_args.federated_optimizer: unknown optimizer 'FedAdam'" in message
    assert "model_args.model: unknown model 'resnet'" in message


def test_quiet_on_the_command_line_is_tracking_args_quiet():
    _, _, overrides = parse_command_line(["--quiet", "comm_round=2"])
    assert overrides == {"quiet": True, "comm_round": 2}
    assert load_arguments(overrides=overrides).tracking_args.quiet is True
    assert parse_command_line(["comm_round=2"])[2] == {"comm_round": 2}

import pytest
import torch

import fedml
from fedml.core.algorithms import FedAvg, Scaffold
from fedml.core.steps import (
    CLIENT_STEPS,
    ClientStep,
    ServerStep,
    StepEntry,
    Steps,
    build_steps,
    check_compatibility,
)
from fedml.errors import ConfigError, NotSupportedError


def test_steps_are_built_from_their_sections_in_chain_order(make_args):
    assert build_steps(make_args()).all() == []
    args = make_args(
        enable_attack=True,
        attack_type="byzantine",
        enable_defense=True,
        defense_type="median",
        byzantine_client_num=1,
    )
    steps = build_steps(args)
    assert [s.name for s in steps.client] == ["attack"]
    assert [s.name for s in steps.server] == ["defense"]


class OnlyOnMPI(ClientStep):
    name = "only-mpi"
    backends = ("MPI",)


class SequentialOnly(ClientStep):
    name = "one-by-one"
    engines = ("sequential",)


class NeedsEach(ServerStep):
    name = "inspector"


def test_the_check_names_the_step_and_the_backend_or_engine():
    fedavg = FedAvg()
    check_compatibility(Steps([OnlyOnMPI()]), fedavg, "MPI")
    with pytest.raises(
        NotSupportedError, match=r"the only-mpi step does not run on comm_args\.backend sp; it runs on MPI"
    ):
        check_compatibility(Steps([OnlyOnMPI()]), fedavg, "sp")
    with pytest.raises(
        NotSupportedError, match=r"the one-by-one step does not run with train_args\.engine vectorized"
    ):
        check_compatibility(Steps([SequentialOnly()]), fedavg, "sp", engine="vectorized")
    with pytest.raises(NotSupportedError, match="which the inspector step cannot use"):
        check_compatibility(Steps(server=[NeedsEach()]), fedavg, "NCCL", presummed=True)
    check_compatibility(Steps(server=[NeedsEach()]), fedavg, "MPI", presummed=False)


def test_the_check_refuses_a_presumming_backend_for_a_per_client_algorithm(make_args):
    with pytest.raises(NotSupportedError, match="which SCAFFOLD cannot use: it needs every client's update"):
        check_compatibility(Steps(), Scaffold(make_args()), "NCCL", presummed=True)


def test_a_registered_step_joins_the_chain_and_a_taken_name_is_refused(make_args, monkeypatch):
    monkeypatch.setattr(CLIENT_STEPS, "_entries", dict(CLIENT_STEPS._entries))

    class Doubler(ClientStep):
        name = "doubler"

        def finish(self, update, global_state, ctx):
            update.state = {k: 2 * v for k, v in update.state.items()}
            return update

    CLIENT_STEPS.register("doubler", StepEntry(lambda args: Doubler(), position=5))
    with pytest.raises(ConfigError, match="a client step named 'doubler' is already registered"):
        CLIENT_STEPS.register("doubler", StepEntry(lambda args: Doubler(), position=5))
    args = make_args(comm_round=1, client_num_per_round=2, engine="sequential")
    assert [s.name for s in build_steps(args).client] == ["doubler"]
    dataset, output_dim = fedml.data.load(args)
    doubled = fedml.FedMLRunner(
        args, torch.device("cpu"), dataset, fedml.model.create(args, output_dim)
    ).run()
    monkeypatch.setattr(CLIENT_STEPS, "_entries", {})
    plain = fedml.FedMLRunner(args, torch.device("cpu"), dataset, fedml.model.create(args, output_dim)).run()
    for name, tensor in plain.model_state.items():
        assert torch.allclose(doubled.model_state[name], 2 * tensor, atol=1e-6)

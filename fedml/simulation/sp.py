"""Single-process simulation: the round driver over the in-process backend."""

from __future__ import annotations

from fedml.core.round.secure import secure_local
from fedml.simulation.base import Simulator
from fedml.simulation.topologies import run_topology
from fedml.tracking import RunResult


class SPSimulator(Simulator):
    """Runs ``comm_round`` rounds of ``train_args.federated_optimizer`` in this process.

    Clients train one by one or vectorized (``train_args.engine``; see ``Simulator``). With
    ``secure_aggregation_args`` their updates are summed through the secure-aggregation protocol among
    in-process parties (``fedml.core.round.secure``).

    Parameters
    ----------
    args, device, dataset, model, client_trainer, server_aggregator
        As for ``Simulator``.

    """

    def run(self) -> RunResult:
        """Train and evaluate all rounds; return the final metrics, history and run directory."""
        other = run_topology(self)
        if other is not None:
            return other
        backend = secure_local(self.local_backend(), self.args, self.steps, self.algorithm)
        return self.rounds().run(backend)

"""A cross-silo client: one organisation's process, training its own data when the server asks."""

from __future__ import annotations

from typing import Any

from fedml.core.comm.network import open_transport
from fedml.core.round import RoundWorker
from fedml.core.round.secure import secure_worker
from fedml.errors import ConfigError
from fedml.simulation.base import Simulator
from fedml.tracking import RunResult, role_logger


class CrossSiloClient(Simulator):
    """The silo of ``--rank N``: joins the server, trains when asked, until the server ends the run.

    The silo hosts one client, ``N - 1`` (what the server samples and logs). Its data is the
    dataset it was given: a dataset of one client is the silo's own data; a dataset split into
    ``client_num_in_total`` clients (the demo: every silo loads the same MNIST and the same
    partition) gives the silo its partition ``N - 1``.

    Parameters
    ----------
    args, device, dataset, model, client_trainer, server_aggregator
        As for ``Simulator``.

    Raises
    ------
    ConfigError
        If the rank has no partition in the dataset.

    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.backend_name = self.args.backend
        self.client = self.args.rank - 1
        total = self.args.client_num_in_total
        if self.dataset.client_num == 1:
            self.local = 0
        elif self.dataset.client_num == total and self.client < total:
            self.local = self.client
        else:
            raise ConfigError(
                f"--rank {self.args.rank}: this run has {total} silos (train_args.client_num_in_total), "
                f"ranks 1..{total}, and the dataset {self.dataset.client_num} clients; give each silo its "
                "own data (a dataset of one client) or the shared dataset split into one client per silo"
            )

    def adopt_dataset_size(self) -> None:
        """Keep ``client_num_in_total``: a silo's dataset holds its own data, not the run's client count."""

    def run(self) -> RunResult:
        """Join the server, serve its requests and return the run's result as the server reported it."""
        args = self.args
        address = str(args.rank)
        log = role_logger("Client", args.rank)
        counts = {self.client: self.dataset.local_sample_num(self.local)}
        with open_transport(args, address, server=False, log=log) as link:
            log.info("Connected to the server over %s at %s:%s", args.backend, args.host, link.port)
            # The silo's one client, by its id in the run, trains on this silo's data.
            backend = self.local_backend(
                lambda client: self.dataset.local_train(self.local), args.client_num_in_total
            )
            worker = RoundWorker(link, backend, counts, args.timeout + args.join_timeout)
            return secure_worker(worker, args, self.steps).run()

"""NCCL simulation: every rank trains its share of the sampled clients; one weighted all-reduce sums them.

torch.distributed with the ``nccl`` backend when the run uses CUDA (one GPU per local rank), ``gloo`` on
the CPU otherwise. Launch with ``torchrun`` or ``mpirun``; see ``fedml.simulation.launch``. Rank 0 runs
the round driver over ``AllReduceBackend``; the other ranks serve it with ``AllReduceWorker``. Both
train their share through the same ``LocalBackend`` as ``sp``.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fedml.core.algorithms import SummedUpdate
from fedml.core.comm import BROADCAST, Message, MessageKind, decode, encode
from fedml.core.round import LocalBackend, RoundTask, assign_clients, usable_updates
from fedml.core.round.wire import pack_assignment, pack_outcome, unpack_assignment, unpack_outcome
from fedml.core.steps import check_compatibility
from fedml.errors import ProtocolError
from fedml.ml import ClientTrainer, ServerAggregator
from fedml.simulation.base import Simulator
from fedml.simulation.launch import LaunchInfo, detect_launch
from fedml.tracking import RunResult, role_logger

if TYPE_CHECKING:
    import logging

    from fedml.data import ClientDataset


class NCCLSimulator(Simulator):
    """Runs the simulation on every rank of a torch.distributed job.

    Each round, rank 0 broadcasts the global state and the sampled clients; every rank trains its share
    (balanced by sample count), sums their sample-weighted states, and one all-reduce adds the sums and
    the weights of all ranks: the quotient is the FedAvg model, which rank 0's round driver receives as
    a ``SummedUpdate``. Only rank 0 writes the run directory; every rank returns the same ``RunResult``.
    Algorithms and steps that need every client's update on the server (FedNova, SCAFFOLD, FedDyn,
    robust aggregation) are refused at start with a ``NotSupportedError`` naming them.

    Parameters
    ----------
    args, device, dataset, model, client_trainer, server_aggregator
        As for ``Simulator``. With a CUDA ``device``, local rank ``i`` uses ``cuda:i`` and NCCL.

    """

    backend_name = "NCCL"

    def __init__(
        self,
        args: Any,
        device: torch.device,
        dataset: ClientDataset,
        model: nn.Module,
        client_trainer: ClientTrainer | None = None,
        server_aggregator: ServerAggregator | None = None,
    ) -> None:
        self.launch = detect_launch()
        if device.type == "cuda":
            device = torch.device(f"cuda:{self.launch.local_rank % torch.cuda.device_count()}")
        super().__init__(args, device, dataset, model, client_trainer, server_aggregator)
        check_compatibility(self.steps, self.algorithm, self.backend_name, presummed=True)

    def run(self) -> RunResult:
        """Join the process group, run all rounds, and return the run's result."""
        import torch.distributed as dist

        owns_group = not dist.is_initialized()
        if owns_group:
            self._init_group(dist)
        try:
            rank, world_size = dist.get_rank(), dist.get_world_size()
            share = _ShareTrainer(
                self.local_backend(),
                self.sample_counts(),
                self.device,
                rank,
                world_size,
                self.args.max_message_mb << 20,
            )
            if rank == 0:
                rounds = self.rounds()
                return rounds.run(AllReduceBackend(share, rounds.log))
            return AllReduceWorker(share).run()
        finally:
            if owns_group:
                dist.destroy_process_group()

    def _init_group(self, dist: Any) -> None:
        info = self.launch
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        log = role_logger("Server" if info.rank == 0 else "Client", info.rank)
        if backend == "gloo" and info.rank == 0:
            log.info("No CUDA device in use; torch.distributed runs on the CPU with the gloo backend")
        dist.init_process_group(
            backend,
            init_method=_init_method(info),
            rank=info.rank,
            world_size=info.world_size,
            timeout=datetime.timedelta(seconds=self.args.timeout),
        )


class _ShareTrainer:
    """What every rank does with a broadcast task: train its share, then all-reduce the weighted sum."""

    def __init__(
        self,
        local: LocalBackend,
        sample_counts: Mapping[int, int],
        device: torch.device,
        rank: int,
        world_size: int,
        max_bytes: int,
    ) -> None:
        self.local = local
        self.max_bytes = max_bytes
        self.sample_counts = sample_counts
        self.device = device
        self.rank = rank
        self.ranks = [str(r) for r in range(world_size)]
        self.log = role_logger("Server" if rank == 0 else "Client", rank)

    def broadcast(self, message: Message | None) -> Message:
        """Send ``message`` from rank 0 to every rank (``None`` on the others); return it everywhere."""
        import torch.distributed as dist

        data = encode(message) if message is not None else b""
        size = torch.tensor([len(data)], dtype=torch.int64, device=self.device)
        dist.broadcast(size, src=0)
        buffer = torch.zeros(int(size), dtype=torch.uint8, device=self.device)
        if message is not None:
            buffer.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        dist.broadcast(buffer, src=0)
        return message if message is not None else decode(buffer.cpu().numpy().tobytes(), self.max_bytes)

    def train(self, message: Message) -> SummedUpdate:
        """Train this rank's share of a broadcast task; return the all-reduced sum over every rank."""
        import torch.distributed as dist

        clients, state, payloads = unpack_assignment(message)
        share = assign_clients(clients, self.sample_counts, self.ranks)[str(self.rank)]
        task = RoundTask(message.round_idx, state, share, payloads, len(share))
        updates = usable_updates(message.round_idx, self.local.train(task), self.log)
        total = torch.zeros(_numel(state) + 3, dtype=torch.float64, device=self.device)
        for update in updates:
            total[:-3].add_(_flatten(update.state, self.device), alpha=update.weight)
            total[-3] += update.weight
            if "train_loss" in update.metrics:
                total[-2] += update.weight * update.metrics["train_loss"]
                total[-1] += update.weight
        counted = torch.tensor([len(updates)], dtype=torch.int64, device=self.device)
        dist.all_reduce(total)
        dist.all_reduce(counted)
        weight, loss_sum, loss_weight = (float(v) for v in total[-3:])
        metrics = {"train_loss": loss_sum / loss_weight} if loss_weight else {}
        mean = _unflatten(total[:-3] / weight, state) if weight > 0 else dict(state)
        return SummedUpdate(int(counted), weight, mean, metrics)


class AllReduceBackend:
    """Rank 0's backend: broadcasts each task, trains its own share, returns the all-reduced sum."""

    name = "NCCL"
    presummed = True
    retries = 0

    def __init__(self, share: _ShareTrainer, log: logging.LoggerAdapter) -> None:
        self.share = share
        self.log = log

    def open(self) -> None:
        """Nothing to prepare: the process group is up."""

    def clients(self) -> list[int]:
        """Return every client id (every rank holds the dataset)."""
        return self.share.local.clients()

    def selection_size(self, wanted: int) -> int:
        """Return ``wanted``."""
        return wanted

    def train(self, task: RoundTask) -> SummedUpdate:
        """Broadcast the task, train rank 0's share and return the sum over all ranks."""
        metadata, tensors = pack_assignment(task.global_state, task.payloads)
        message = Message(MessageKind.SYNC_MODEL, "0", BROADCAST, task.round_idx, metadata, tensors)
        return self.share.train(self.share.broadcast(message))

    def close(self, result: RunResult | None, error: BaseException | None) -> None:
        """Broadcast the end of the run (the result with the final state, or the error)."""
        metadata, state = pack_outcome(result, error)
        self.share.broadcast(Message(MessageKind.FINISH, "0", BROADCAST, -1, metadata, state))


class AllReduceWorker:
    """A rank other than 0: trains its share of every broadcast task until rank 0 broadcasts ``FINISH``."""

    def __init__(self, share: _ShareTrainer) -> None:
        self.share = share

    def run(self) -> RunResult:
        """Serve rounds until ``FINISH``; return the run's result as rank 0 reported it."""
        while True:
            message = self.share.broadcast(None)
            if message.kind == MessageKind.FINISH:
                return unpack_outcome(message, "rank 0")
            if message.kind != MessageKind.SYNC_MODEL:
                raise ProtocolError(f"rank {self.share.rank}: unexpected broadcast {message.describe()}")
            self.share.train(message)


def _init_method(info: LaunchInfo) -> str:
    # torchrun's agent already serves the rendezvous store on MASTER_PORT; env:// reuses it.
    if info.launcher == "torchrun":
        return "env://"
    return f"tcp://{info.master_addr}:{info.master_port}"


def _numel(state: Mapping[str, torch.Tensor]) -> int:
    return sum(t.numel() for t in state.values())


def _flatten(state: Mapping[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).to(device=device, dtype=torch.float64) for t in state.values()])


def _unflatten(flat: torch.Tensor, like: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state, offset = {}, 0
    for name, ref in like.items():
        part = flat[offset : offset + ref.numel()].reshape(ref.shape)
        offset += ref.numel()
        part = part if ref.dtype.is_floating_point else part.round()
        state[name] = part.to(device=ref.device, dtype=ref.dtype)
    return state

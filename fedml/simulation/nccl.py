"""NCCL simulation: every rank trains its share of the sampled clients; one weighted all-reduce averages them.

torch.distributed with the ``nccl`` backend when the run uses CUDA (one GPU per local rank), ``gloo`` on
the CPU otherwise. Launch with ``torchrun`` or ``mpirun``; see ``fedml.simulation.launch``.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fedml.core.algorithms import Client, RoundContext, Update
from fedml.core.comm import Message, MessageKind, decode, encode
from fedml.core.remote_round import assign_clients
from fedml.core.round import FederatedRound, usable_updates
from fedml.core.sampling import sample_clients
from fedml.errors import AggregationError, NotSupportedError
from fedml.ml import ClientTrainer, ServerAggregator
from fedml.simulation.base import Simulator
from fedml.simulation.launch import LaunchInfo, detect_launch
from fedml.tracking import RunResult, progress, role_logger

if TYPE_CHECKING:
    from fedml.data import FederatedDataset


class NCCLSimulator(Simulator):
    """Runs the simulation on every rank of a torch.distributed job.

    Each round, every rank trains its share of the sampled clients (balanced by sample count), sums their
    sample-weighted states, and one all-reduce adds the sums and the weights of all ranks: the quotient is
    the FedAvg model. Rank 0 passes it through ``FederatedRound.finish`` (server hooks, evaluation,
    tracking) and broadcasts the result, so every rank starts the next round from the same state. Only
    rank 0 writes the run directory; every rank returns the same ``RunResult``. Algorithms and defenses
    that need every client's update on the server (FedNova, SCAFFOLD, FedDyn, robust aggregation) are
    refused with a ``NotSupportedError``.

    Parameters
    ----------
    args, device, dataset, model, client_trainer, server_aggregator
        As for ``SPSimulator``. With a CUDA ``device``, local rank ``i`` uses ``cuda:i`` and NCCL.

    """

    def __init__(
        self,
        args: Any,
        device: torch.device,
        dataset: FederatedDataset,
        model: nn.Module,
        client_trainer: ClientTrainer | None = None,
        server_aggregator: ServerAggregator | None = None,
    ) -> None:
        self.launch = detect_launch()
        if device.type == "cuda":
            device = torch.device(f"cuda:{self.launch.local_rank % torch.cuda.device_count()}")
        super().__init__(args, device, dataset, model, client_trainer, server_aggregator)
        if not self.algorithm.accepts_presummed_updates or args.enable_defense:
            raise NotSupportedError(
                f"comm_args.backend NCCL sums client updates in one all-reduce, which {self.algorithm.name}"
                f"{' with defense_args' if args.enable_defense else ''} cannot use: it needs every client's "
                "update on the server; use backend sp or MPI"
            )

    def run(self) -> RunResult:
        """Join the process group, run all rounds, and return the run's result."""
        import torch.distributed as dist

        owns_group = not dist.is_initialized()
        if owns_group:
            self._init_group(dist)
        try:
            return self._run(dist.get_rank(), dist.get_world_size())
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

    def _run(self, rank: int, world_size: int) -> RunResult:
        import torch.distributed as dist

        args = self.args
        log = role_logger("Server" if rank == 0 else "Client", rank)
        rounds = None
        if rank == 0:
            rounds = FederatedRound(
                args, self.device, self.dataset, self.algorithm, self.trainer, self.aggregator
            )
            state = rounds.start()
        else:
            state = self.aggregator.get_model_params()
        state = self._broadcast_state(state)
        first_round = torch.tensor([rounds.first_round if rounds is not None else 0], device=self.device)
        dist.broadcast(first_round, src=0)
        counts = [self.dataset.local_sample_num(c) for c in range(self.dataset.client_num)]
        try:
            for round_idx in progress(range(int(first_round), args.comm_round), "rounds"):
                clients = sample_clients(
                    args.random_seed, round_idx, self.dataset.client_num, args.client_num_per_round
                )
                share = assign_clients(clients, counts, list(range(world_size)))[rank]
                ctx = RoundContext(round_idx, args, self.device, self.trainer, self.aggregator)
                updates = [
                    self.algorithm.client_update(
                        state, Client(c, self.dataset.local_train(c), self.algorithm.client_payload(c)), ctx
                    )
                    for c in share
                ]
                mean = self._all_reduce_mean(round_idx, state, usable_updates(round_idx, updates, log))
                if rounds is not None:
                    state = rounds.finish(round_idx, state, [mean])
                state = self._broadcast_state(state)
        except BaseException as exc:
            if rounds is not None:
                rounds.tracker.fail(exc)
            raise
        return self._share_result(rounds.result() if rounds is not None else None, state)

    def _all_reduce_mean(
        self, round_idx: int, like: Mapping[str, torch.Tensor], updates: list[Update]
    ) -> Update:
        import torch.distributed as dist

        total = torch.zeros(_numel(like) + 3, dtype=torch.float64, device=self.device)
        for update in updates:
            total[:-3].add_(_flatten(update.state, self.device), alpha=update.weight)
            total[-3] += update.weight
            if "train_loss" in update.metrics:
                total[-2] += update.weight * update.metrics["train_loss"]
                total[-1] += update.weight
        dist.all_reduce(total)
        weight, loss_sum, loss_weight = (float(v) for v in total[-3:])
        if weight <= 0:
            raise AggregationError(
                f"round {round_idx + 1}: none of the client updates is usable (non-finite values or zero "
                "weight); training diverged, try a smaller train_args.learning_rate"
            )
        metrics = {"train_loss": loss_sum / loss_weight} if loss_weight else {}
        return Update(-1, weight, _unflatten(total[:-3] / weight, like), metrics)

    def _broadcast_state(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        import torch.distributed as dist

        flat = _flatten(state, self.device)
        dist.broadcast(flat, src=0)
        return _unflatten(flat, state)

    def _share_result(self, result: RunResult | None, state: dict[str, torch.Tensor]) -> RunResult:
        import torch.distributed as dist

        if result is not None:
            metadata = {
                "final_metrics": result.final_metrics,
                "history": result.history,
                "run_dir": str(result.run_dir),
            }
            data = encode(Message(MessageKind.FINISH, 0, -1, -1, metadata))
            size = torch.tensor([len(data)], dtype=torch.int64, device=self.device)
        else:
            size = torch.zeros(1, dtype=torch.int64, device=self.device)
        dist.broadcast(size, src=0)
        buffer = torch.zeros(int(size), dtype=torch.uint8, device=self.device)
        if result is not None:
            buffer.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        dist.broadcast(buffer, src=0)
        if result is not None:
            return result
        meta = decode(buffer.cpu().numpy().tobytes()).metadata
        return RunResult(meta["final_metrics"], meta["history"], Path(meta["run_dir"]), state)


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

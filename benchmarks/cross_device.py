"""Cross-device at scale: many simulated devices, one Mosquitto, one server; sync rounds vs FedBuff.

Every device is its own MQTT connection with its own credentials (device id and password, under the
fedml ACL); the devices are spread over a few host processes, each serving its share from one loop.
MNIST (embedded subset unless full MNIST is cached) split over all devices, logistic regression, real
local training. Of the devices asked each round, ``--drop`` (10%) drop their connection mid-task (the
broker publishes their will; they reconnect and register again) and ``--straggle`` (10%) answer only
after the deadline (``--deadline`` seconds). The server runs as its own process. Then:

- seconds per round (aggregation), for sync and FedBuff;
- the server's peak memory (VmHWM) and the broker's connection count once every device is in;
- time to the target accuracy, sync over FedBuff, as a ratio (FedBuff: K = per-round, concurrency
  1.3 x per-round, polynomial staleness weight);
- the edge footprint: one edge process (the seed's snippet) against the same broker: peak memory and
  seconds to connected and to its first report, next to ``import torch`` alone.

Run from the repository root (the figures in docs/cross_device.md came from these)::

    python benchmarks/cross_device.py --quick              # 50 devices, 20 per round, 3 rounds
    python benchmarks/cross_device.py --devices 1000       # 100 per round, 10 rounds
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import heapq
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "cross_device_fedavg_mnist_lr.yaml"


def chance(seed: int, *words: object) -> float:
    """Return a number in [0, 1) fixed by ``words``: a device decides the same in the same round."""
    digest = hashlib.blake2b(repr((seed, *words)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def host(spec: dict) -> None:
    """Serve a share of the devices: connect each, answer their tasks until the server finishes."""
    import torch

    import fedml
    from fedml.config import load_arguments
    from fedml.core.comm import Message, MessageKind
    from fedml.core.comm.mqtt import MqttTransport
    from fedml.core.comm.network import NetworkSettings
    from fedml.core.round.backend import RoundTask
    from fedml.core.round.wire import pack_updates, unpack_assignment
    from fedml.errors import ProtocolError, TransportError
    from fedml.simulation.base import Simulator

    # One device trains one small client at a time: the sequential engine has no batching set-up.
    args = load_arguments(spec["job"], {"engine": "sequential"}, rank=1, role="client", run_id=spec["run_id"])
    dataset, output_dim = fedml.data.load(args)
    simulator = Simulator(args, torch.device("cpu"), dataset, fedml.model.create(args, output_dim))
    simulator.backend_name = "MQTT"
    backend = simulator.local_backend()
    links = {}
    for device in spec["devices"]:
        settings = NetworkSettings(
            host="127.0.0.1",
            port=spec["port"],
            username=str(device),
            password=spec["passwords"][str(device)],
            insecure=True,
            run_id=spec["run_id"],
            heartbeat=2.0,
            connect_timeout=60.0,
            timeout=60.0,
        )
        link = MqttTransport(settings, address=str(device), server=False)
        client = device - 1
        metadata = {
            "client_num": dataset.client_num,
            "clients": [client],
            "sample_counts": [dataset.local_sample_num(client)],
        }
        link.send(Message(MessageKind.INIT, link.address, "0", -1, metadata))
        links[device] = link
    print("ready", flush=True)
    later: list[tuple[float, int, Message]] = []
    finished: set[int] = set()
    dropped: set[tuple[int, int]] = set()
    while len(finished) < len(links):
        busy = False
        while later and later[0][0] <= time.monotonic():
            _, device, reply = heapq.heappop(later)
            with contextlib.suppress(TransportError):
                links[device].send(reply)
        for device, link in links.items():
            if device in finished:
                continue
            try:
                message = link.receive(0)
            except ProtocolError:
                continue
            except TransportError:
                continue
            busy = True
            if message.kind == MessageKind.FINISH:
                finished.add(device)
                continue
            if message.kind != MessageKind.SYNC_MODEL:
                continue
            fate = chance(spec["seed"], device, message.round_idx)
            first = (device, message.round_idx) not in dropped
            if fate < spec["drop"] and first:
                # Once per task: a device that rejoins gets the task again and then does it.
                dropped.add((device, message.round_idx))
                # Mid-task: the connection dies without a DISCONNECT, so the broker publishes the will;
                # paho reconnects and the transport registers again.
                raw = link.client.socket()
                if raw is not None:
                    raw.shutdown(socket.SHUT_RDWR)
                continue
            clients, state, payloads = unpack_assignment(message)
            updates = backend.train(RoundTask(message.round_idx, state, clients, payloads, len(clients)))
            metadata, tensors = pack_updates(updates)
            reply = Message(
                MessageKind.CLIENT_UPDATE, link.address, "0", message.round_idx, metadata, tensors
            )
            if spec["drop"] <= fate < spec["drop"] + spec["straggle"]:
                heapq.heappush(later, (time.monotonic() + spec["deadline"] + 2.0, device, reply))
            else:
                link.send(reply)
        if not busy:
            time.sleep(0.005)
    for link in links.values():
        link.close()


def peak_kib(pid: int) -> int:
    """Return the process's peak resident memory (VmHWM) in KiB, 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def connections(pid: int) -> int:
    """Return how many sockets the broker process holds, less its listener."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return -1
    sockets = 0
    for fd in fds:
        try:
            sockets += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            continue
    return sockets - 1


def run_mode(mode: str, options: argparse.Namespace, broker, passwords: dict, folder: Path) -> dict:
    """Run one job (sync or async) with its own run id; return its figures."""
    run_id = f"bench-{mode}-{os.getpid()}"
    train = {
        "client_num_in_total": options.devices,
        "client_num_per_round": options.per_round,
        "comm_round": options.rounds,
        "aggregation_mode": mode,
    }
    if mode == "async":
        train.update(buffer_size=options.per_round, max_concurrency=round(1.3 * options.per_round))
    comm = {
        "host": "127.0.0.1",
        "port": broker.port,
        "broker_username": broker.username,
        "broker_password": broker.password,
        "insecure": True,
        "round_timeout": options.deadline,
        "min_clients_per_round": max(1, round(options.per_round * 0.5)),
        "join_timeout": 600,
        "heartbeat": 2.0,
    }
    job = yaml.safe_load(CONFIG.read_text())
    job["train_args"].update(train)
    job["train_args"]["over_selection"] = 1.0
    job["common_args"]["random_seed"] = options.seed
    job.setdefault("comm_args", {}).update(comm)
    job.setdefault("tracking_args", {}).update(run_dir=str(folder / mode), quiet=True)
    job.setdefault("data_args", {})["download"] = False
    job_file = folder / f"{mode}.yaml"
    job_file.write_text(yaml.safe_dump(job))
    job_file.chmod(0o600)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    hosts = []
    ids = list(range(1, options.devices + 1))
    share = -(-len(ids) // options.hosts)
    for index in range(options.hosts):
        spec = {
            "job": str(job_file),
            "run_id": run_id,
            "port": broker.port,
            "devices": ids[index * share : (index + 1) * share],
            "passwords": passwords,
            "seed": options.seed,
            "drop": options.drop,
            "straggle": options.straggle,
            "deadline": options.deadline,
        }
        spec_file = folder / f"{mode}-host{index}.json"
        spec_file.write_text(json.dumps(spec))
        hosts.append(
            subprocess.Popen(
                [sys.executable, __file__, "--host-spec", str(spec_file)],
                env=env,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    for process in hosts:
        assert process.stdout is not None
        if process.stdout.readline().strip() != "ready":
            raise SystemExit(f"a device host of the {mode} run failed at start-up")
    connected = connections(broker.process.pid)
    began = time.monotonic()
    # To a file, not a pipe: a thousand devices make many log lines, and a full pipe would block it.
    log = folder / f"{mode}-server.log"
    sink = log.open("w")  # closed once the server has exited
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fedml",
            "run",
            "--cf",
            str(job_file),
            "--rank",
            "0",
            "--role",
            "server",
            "--run_id",
            run_id,
        ],
        env=env,
        stdout=sink,
        stderr=subprocess.STDOUT,
    )
    peak = 0
    while server.poll() is None:
        peak = max(peak, peak_kib(server.pid))
        time.sleep(0.2)
    sink.close()
    output = log.read_text(errors="replace")
    wall = time.monotonic() - began
    for process in hosts:
        # A device offline when the server ended never hears FINISH: its host is stopped.
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if server.returncode != 0:
        raise SystemExit(f"the {mode} server failed:\n{output[-3000:]}")
    (run_dir,) = list((folder / mode).iterdir())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    devices = json.loads((run_dir / "devices.json").read_text())
    timings = [r["seconds"] for r in records]
    per_round = [b - a for a, b in zip([0.0, *timings], timings, strict=False)]
    return {
        "mode": mode,
        "wall": wall,
        "records": records,
        "per_round": per_round,
        "peak_mib": peak / 1024,
        "connections": connected,
        "drops": sum(d["drops"] for d in devices.values()),
        "served": sum(d["rounds_served"] for d in devices.values()),
        "late": output.count("Dropped a late"),
    }


def time_to(records: list[dict], target: float) -> float | None:
    """Return the run's seconds when its test accuracy first reached ``target``."""
    for record in records:
        if record["test_accuracy"] >= target:
            return float(record["seconds"])
    return None


def edge_footprint(broker, passwords: dict, folder: Path) -> dict:
    """Measure one edge process (the seed's snippet) and ``import torch`` alone."""
    started = time.monotonic()
    torch_only = subprocess.run(
        [
            sys.executable,
            "-c",
            "import resource, torch; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    torch_seconds = time.monotonic() - started
    run_id = f"bench-edge-{os.getpid()}"
    job = yaml.safe_load(CONFIG.read_text())
    job["train_args"].update(client_num_in_total=1, client_num_per_round=1, comm_round=1, over_selection=1.0)
    job.setdefault("comm_args", {}).update(
        host="127.0.0.1",
        port=broker.port,
        insecure=True,
        broker_username=broker.username,
        broker_password=broker.password,
    )
    job.setdefault("tracking_args", {}).update(run_dir=str(folder / "edge"), quiet=True)
    job.setdefault("data_args", {})["download"] = False
    job_file = folder / "edge.yaml"
    job_file.write_text(yaml.safe_dump(job))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fedml",
            "run",
            "--cf",
            str(job_file),
            "--rank",
            "0",
            "--role",
            "server",
            "--run_id",
            run_id,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    edge_job = {
        **job,
        "comm_args": {**job["comm_args"], "broker_username": "1", "broker_password": passwords["1"]},
    }
    edge_file = folder / "edge-device.yaml"
    edge_file.write_text(yaml.safe_dump(edge_job))
    started = time.monotonic()
    edge = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "examples" / "cross_device_edge.py"),
            "--cf",
            str(edge_file),
            "--device_id",
            "1",
            "--run_id",
            run_id,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    connected = None
    peak = 0
    assert edge.stdout is not None
    for line in edge.stdout:
        peak = max(peak, peak_kib(edge.pid))
        if connected is None and "Connected to the server" in line:
            connected = time.monotonic() - started
        if "Finished" in line:
            break
    reported = time.monotonic() - started
    peak = max(peak, peak_kib(edge.pid))
    edge.wait(60)
    server.wait(60)
    return {
        "torch_mib": int(torch_only.stdout.strip()) / 1024,
        "torch_seconds": torch_seconds,
        "edge_mib": peak / 1024,
        "connected": connected,
        "reported": reported,
    }


def main() -> None:
    """Run the benchmark (or, with ``--host-spec``, one device host) and print its table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--per-round", dest="per_round", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--hosts", type=int, default=4, help="device host processes")
    parser.add_argument("--deadline", type=float, default=10.0, help="comm_args.round_timeout, seconds")
    parser.add_argument("--drop", type=float, default=0.1)
    parser.add_argument("--straggle", type=float, default=0.1)
    parser.add_argument("--target", type=float, default=None, help="accuracy for time-to-accuracy")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="50 devices, 20 per round, 3 rounds, 2 hosts")
    parser.add_argument("--host-spec", dest="host_spec", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.host_spec:
        host(json.loads(Path(options.host_spec).read_text()))
        return
    if options.quick:
        options.devices, options.per_round, options.rounds, options.hosts = 50, 20, 3, 2
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    from fedml.core.comm.broker import MosquittoBroker
    from fedml.cross_device.credentials import generate_credentials

    credentials = generate_credentials(options.devices)
    with (
        tempfile.TemporaryDirectory(prefix="fedml-bench-") as name,
        MosquittoBroker(
            username=credentials.server_user,
            password=credentials.server_password,
            devices=credentials.devices,
        ) as broker,
    ):
        folder = Path(name)
        results = [run_mode(mode, options, broker, credentials.devices, folder) for mode in ("sync", "async")]
        footprint = edge_footprint(broker, credentials.devices, folder)
    finals = [r["records"][-1]["test_accuracy"] for r in results]
    target = options.target if options.target is not None else round(min(finals) - 0.01, 3)
    print(
        f"{options.devices} devices ({options.hosts} host processes), {options.per_round} per round, "
        f"{options.rounds} rounds, deadline {options.deadline} s, {options.drop:.0%} drop, "
        f"{options.straggle:.0%} straggle"
    )
    print(
        "| mode | s/round (mean) | s/round (max) | final accuracy | server peak MiB | broker connections "
        "| drops seen | late updates dropped | updates aggregated |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['mode']} | {sum(r['per_round']) / len(r['per_round']):.2f} | {max(r['per_round']):.2f} "
            f"| {r['records'][-1]['test_accuracy']:.3f} | {r['peak_mib']:.0f} | {r['connections']} "
            f"| {r['drops']} | {r['late']} | {r['served']} |"
        )
    sync_t, async_t = (time_to(r["records"], target) for r in results)
    if sync_t is not None and async_t is not None:
        ratio = sync_t / async_t
        print(
            f"time to {target:.3f} accuracy: sync {sync_t:.1f} s, FedBuff {async_t:.1f} s, ratio {ratio:.2f}"
        )
    else:
        print(f"time to {target:.3f} accuracy: sync {sync_t}, FedBuff {async_t} (not reached by one of them)")
    print(
        f"edge: peak {footprint['edge_mib']:.0f} MiB (import torch alone: {footprint['torch_mib']:.0f} MiB, "
        f"{footprint['torch_seconds']:.1f} s); connected after {footprint['connected']:.1f} s, "
        f"finished its first report after {footprint['reported']:.1f} s"
    )


if __name__ == "__main__":
    main()

"""Cross-silo speed, as ratios measured in one run.

1. Model transfer: one message with a float32 state of 100 MB from a silo process to the server,
   over fedml's gRPC and MQTT transports (codec, chunks, SHA-256 included), against a bare grpcio
   client process streaming the same bytes in the same 1 MiB chunks; plaintext and TLS each against
   the raw stream of its kind. Timed on the server from its request to the whole reply; best of 3,
   interleaved.
2. Round overhead: the median round of a 10-silo cross-silo job (``fedml launch``, gRPC, TLS) against
   MPI simulation of the same configuration with 10 worker ranks (``mpirun -np 11``).
3. Load: 100 silos (25 per process, in threads: for this case only) against one server for 20 rounds;
   reports whether any update was lost (a server warning, a round without every silo) and the
   median round.

    python benchmarks/cross_silo.py            # about 3 minutes here
    python benchmarks/cross_silo.py --quick    # smaller: 16 MB, 5 rounds, 20 silos
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from fedml.core.comm import Message, MessageKind, create_transport
from fedml.core.comm.broker import BrokerTLS, MosquittoBroker, free_port
from fedml.core.comm.certs import make_deployment
from fedml.core.comm.network import NetworkSettings, TLSFiles

ROOT = Path(__file__).resolve().parent.parent
SEED = ROOT / "configs" / "cross_silo_fedavg_mnist_lr.yaml"
CHUNK = 1 << 20


SENDS = 2
"""Messages each sender process sends per case: the first warms the connection, the last is timed."""


def raw_grpc_seconds(size: int, tls: TLSFiles | None) -> float:
    """Time ``size`` bytes streamed by a bare grpcio client process in 1 MiB chunks (the last of SENDS)."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    times: list[float] = []

    def push(requests, context):
        chunks = iter(requests)
        for _ in range(SENDS):
            began = time.perf_counter()
            yield b"go"
            got = 0
            while got < size:
                got += len(next(chunks))
            times.append(time.perf_counter() - began)

    handler = grpc.method_handlers_generic_handler(
        "bench.Raw", {"Push": grpc.stream_stream_rpc_method_handler(push)}
    )
    limits = [("grpc.max_send_message_length", 2 * CHUNK), ("grpc.max_receive_message_length", 2 * CHUNK)]
    server = grpc.server(ThreadPoolExecutor(4), handlers=[handler], options=limits)
    if tls is not None:
        credentials = grpc.ssl_server_credentials([(tls.key.read_bytes(), tls.cert.read_bytes())])
        port = server.add_secure_port("127.0.0.1:0", credentials)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        spec = {"raw": True, "port": port, "size": size, "ca": str(tls.ca) if tls else None}
        subprocess.run([sys.executable, __file__, "--send", json.dumps(spec)], check=True, timeout=300)
        return times[-1]
    finally:
        server.stop(0)


def raw_grpc_send(spec: dict) -> None:
    """Run the raw grpcio client: on each ``go`` from the server, stream ``size`` bytes in 1 MiB chunks."""
    import queue

    import grpc

    limits = [("grpc.max_send_message_length", 2 * CHUNK), ("grpc.max_receive_message_length", 2 * CHUNK)]
    where = f"127.0.0.1:{spec['port']}"
    if spec["ca"]:
        credentials = grpc.ssl_channel_credentials(Path(spec["ca"]).read_bytes())
        channel = grpc.secure_channel(where, credentials, options=limits)
    else:
        channel = grpc.insecure_channel(where, options=limits)
    payload = os.urandom(spec["size"])
    view = memoryview(payload)
    outgoing: queue.Queue[bytes | None] = queue.Queue()
    call = channel.stream_stream("/bench.Raw/Push")(iter(outgoing.get, None))
    for _ in call:
        for i in range(0, len(payload), CHUNK):
            outgoing.put(bytes(view[i : i + CHUNK]))
    outgoing.put(None)
    channel.close()


def transport_seconds(backend: str, mb: int, settings: NetworkSettings) -> float:
    """Time one message carrying ``mb`` MB of float32 from a silo process to this server (last of SENDS)."""
    with create_transport(backend, settings=settings, address="0", server=True) as server:
        spec = {
            "backend": backend,
            "mb": mb,
            "port": server.port,
            "insecure": settings.insecure,
            "ca": str(settings.tls.ca) if settings.tls.ca else None,
            "username": settings.username,
            "password": settings.password,
            "max_bytes": settings.max_bytes,
            "chunk_bytes": settings.chunk_bytes,
        }
        sender = subprocess.Popen([sys.executable, __file__, "--send", json.dumps(spec)])
        try:
            server.receive(60)
            times = []
            for round_idx in range(SENDS):
                began = time.perf_counter()
                server.send(Message(MessageKind.SYNC_MODEL, "0", "1", round_idx))
                received = server.receive(120)
                times.append(time.perf_counter() - began)
                if received.tensors["w"].numel() != mb * (1 << 20) // 4:
                    raise RuntimeError(f"{backend}: the state arrived incomplete")
            server.send(Message(MessageKind.FINISH, "0", "1"))
            sender.wait(60)
            return times[-1]
        finally:
            if sender.poll() is None:
                sender.kill()


def transport_send(spec: dict) -> None:
    """Run the silo process of ``transport_seconds``: join, answer each ``SYNC_MODEL`` with the state."""
    settings = NetworkSettings(
        port=spec["port"],
        insecure=spec["insecure"],
        tls=TLSFiles(Path(spec["ca"]) if spec["ca"] else None),
        username=spec["username"],
        password=spec["password"],
        max_bytes=spec["max_bytes"],
        chunk_bytes=spec["chunk_bytes"],
    )
    state = {"w": torch.randn(spec["mb"] * (1 << 20) // 4)}
    with create_transport(spec["backend"], settings=settings, address="1", server=False) as silo:
        silo.send(Message(MessageKind.INIT, "1", "0"))
        while (request := silo.receive(120)).kind == MessageKind.SYNC_MODEL:
            silo.send(Message(MessageKind.CLIENT_UPDATE, "1", "0", request.round_idx, {}, state))


def transfer(mb: int, repeats: int, folder: Path) -> list[tuple[str, float, float]]:
    """Return (case, MB/s, ratio to raw grpcio of the same kind) for each transport case."""
    files = make_deployment(folder / "certs", ["127.0.0.1", "localhost"])
    ca, server = files["ca"], files["server"]
    tls = TLSFiles(ca.cert, server.cert, server.key)
    limit = 2 * mb << 20
    plain = NetworkSettings(port=0, insecure=True, max_bytes=limit)
    secure = NetworkSettings(port=0, tls=tls, max_bytes=limit)
    best: dict[str, float] = {}
    with (
        MosquittoBroker() as plain_broker,
        MosquittoBroker(tls=BrokerTLS(server.cert, server.key, ca.cert)) as tls_broker,
    ):
        mqtt_plain = NetworkSettings(
            port=plain_broker.port,
            insecure=True,
            username=plain_broker.username,
            password=plain_broker.password,
            max_bytes=limit,
        )
        mqtt_tls = NetworkSettings(
            port=tls_broker.port,
            tls=TLSFiles(ca.cert),
            username=tls_broker.username,
            password=tls_broker.password,
            max_bytes=limit,
        )
        size = mb * (1 << 20)
        cases = {
            "raw grpcio, plaintext": lambda: raw_grpc_seconds(size, None),
            "raw grpcio, TLS": lambda: raw_grpc_seconds(size, tls),
            "fedml GRPC, plaintext": lambda: transport_seconds("GRPC", mb, plain),
            "fedml GRPC, TLS": lambda: transport_seconds("GRPC", mb, secure),
            "fedml MQTT, plaintext": lambda: transport_seconds("MQTT", mb, mqtt_plain),
            "fedml MQTT, TLS": lambda: transport_seconds("MQTT", mb, mqtt_tls),
        }
        for _ in range(repeats):
            for name, run in cases.items():
                best[name] = min(best.get(name, float("inf")), run())
    rows = []
    for name, seconds in best.items():
        kind = "TLS" if name.endswith("TLS") else "plaintext"
        rows.append((name, mb / seconds, best[f"raw grpcio, {kind}"] / seconds))
    return rows


def median_round(run_dir: Path) -> float:
    """Return the median of a run directory's round seconds (``timings.json``)."""
    timings = json.loads((run_dir / "timings.json").read_text())
    return statistics.median(timings["round_seconds"])


def only_run(runs: Path) -> Path:
    """Return the one run directory under ``runs``."""
    (run_dir,) = list(runs.iterdir())
    return run_dir


def round_overhead(rounds: int, folder: Path) -> tuple[float, float]:
    """Return the median round seconds of a 10-silo cross-silo job and of the same over MPI."""
    common = [f"comm_round={rounds}", "client_num_per_round=10", "download=false"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    silo_runs, mpi_runs = folder / "silo-runs", folder / "mpi-runs"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "fedml",
            "launch",
            "--cf",
            str(SEED),
            "--clients",
            "10",
            *common,
            f"run_dir={silo_runs}",
        ],
        check=True,
        env=env,
        capture_output=True,
        timeout=900,
    )
    mpirun = shutil.which("mpirun") or str(Path(sys.executable).parent / "mpirun")
    subprocess.run(
        [
            mpirun,
            "-np",
            "11",
            sys.executable,
            "-m",
            "fedml",
            "simulate",
            "--cf",
            str(SEED),
            *common,
            "backend=MPI",
            "client_num_in_total=10",
            f"run_dir={mpi_runs}",
        ],
        check=True,
        env=env,
        capture_output=True,
        timeout=900,
    )
    return median_round(only_run(silo_runs)), median_round(only_run(mpi_runs))


def serve_silos(ranks: list[int], argv: list[str]) -> None:
    """Run silos ``ranks`` of one job as threads of this process (the load case only)."""
    import fedml

    torch.set_num_threads(1)
    shared = fedml.init(["--cf", str(SEED), "--rank", str(ranks[0]), "--role", "client", *argv])
    dataset, output_dim = fedml.data.load(shared)
    failures: list[BaseException] = []

    def silo(rank: int) -> None:
        try:
            args = fedml.init(["--cf", str(SEED), "--rank", str(rank), "--role", "client", *argv])
            model = fedml.model.create(args, output_dim)
            fedml.FedMLRunner(args, fedml.device.get_device(args), dataset, model).run()
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=silo, args=(rank,)) for rank in ranks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise SystemExit(f"{len(failures)} silo(s) failed: {failures[0]!r}")


def load(silos: int, rounds: int, folder: Path) -> tuple[float, int, int]:
    """Run ``silos`` silos (25 per process) for ``rounds`` rounds; return (median round, rounds, lost)."""
    runs = folder / "load-runs"
    argv = [
        f"comm_round={rounds}",
        f"client_num_per_round={silos}",
        f"client_num_in_total={silos}",
        "download=false",
        f"run_dir={runs}",
        f"comm_args.port={free_port()}",
        "auth_token=load-test",
        "partition_method=homo",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "fedml", "server", "--cf", str(SEED), *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    pools = []
    for first in range(1, silos + 1, 25):
        ranks = ",".join(str(r) for r in range(first, min(first + 25, silos + 1)))
        pools.append(
            subprocess.Popen(
                [sys.executable, __file__, "--serve-silos", ranks, *argv],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    try:
        out, _ = server.communicate(timeout=900)
        for pool in pools:
            pool.wait(120)
    finally:
        for process in [server, *pools]:
            if process.poll() is None:
                process.kill()
    if server.returncode != 0:
        raise SystemExit(f"the load server failed:\n{out[-3000:]}")
    # Silos disconnect once told to finish; anything of this kind before the last round is a loss.
    rounds_part = out.split("Final Accuracy after Round")[0]
    lost = len(re.findall(r"goes on with|failed|[Dd]ropped|Ignored|retried|disconnected", rounds_part))
    if lost:
        print(rounds_part[-3000:])
    run_dir = only_run(runs)
    evaluated = len((run_dir / "metrics.jsonl").read_text().splitlines())
    return median_round(run_dir), evaluated, lost


def main() -> None:
    """Measure and print the three tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--serve-silos", help=argparse.SUPPRESS)
    parser.add_argument("--send", help=argparse.SUPPRESS)
    known, rest = parser.parse_known_args()
    if known.send:
        spec = json.loads(known.send)
        (raw_grpc_send if spec.get("raw") else transport_send)(spec)
        return
    if known.serve_silos:
        serve_silos([int(r) for r in known.serve_silos.split(",")], rest)
        return
    mb, repeats, rounds, silos = (16, 2, 5, 20) if known.quick else (100, 3, 20, 100)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print(f"1. Model transfer, one message of {mb} MB silo -> server (best of {repeats}, interleaved)")
        print("| case | MB/s | vs raw grpcio of the same kind |\n|---|---|---|")
        for name, rate, ratio in transfer(mb, repeats, folder):
            print(f"| {name} | {rate:.0f} | {ratio:.2f} |")
        silo_round, mpi_round = round_overhead(rounds, folder)
        print(f"\n2. Round, 10 silos, {rounds} rounds (median round)")
        print("| backend | seconds per round | vs MPI simulation |\n|---|---|---|")
        print(f"| MPI simulation, 10 worker ranks | {mpi_round:.4f} | 1.00 |")
        print(
            f"| cross-silo, gRPC + TLS, 10 silo processes | {silo_round:.4f} | {silo_round / mpi_round:.2f} |"
        )
        median, evaluated, lost = load(silos, rounds, folder)
        print(f"\n3. Load: {silos} silos (25 per process) against one server, {rounds} rounds")
        print("| rounds evaluated | updates lost (server warnings) | median round, seconds |\n|---|---|---|")
        print(f"| {evaluated} of {rounds} | {lost} | {median:.3f} |")


if __name__ == "__main__":
    main()

"""Cross-silo jobs as real processes on 127.0.0.1: a server and silos over gRPC and over MQTT.

Every test starts the seed's script (or ``fedml launch``) as separate processes, bounds every wait and
stops every process in the fixture's teardown.
"""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest
import torch

import fedml
from fedml.core.comm.broker import MosquittoBroker, free_port
from tests.simulation.launchers import RUN_FILES

from .jobs import SEED_CONFIG, launch

FINAL = r"Final Accuracy after Round (\d+): ([\d.]+)%"


def network(backend: str, broker: MosquittoBroker | None) -> list[str]:
    """Overrides that put a job on a free gRPC port, or on the test's broker."""
    if backend == "GRPC":
        return ["comm_args.backend=GRPC", f"comm_args.port={free_port()}"]
    assert broker is not None
    return [
        "comm_args.backend=MQTT",
        f"comm_args.port={broker.port}",
        f"comm_args.broker_username={broker.username}",
        f"comm_args.broker_password={broker.password}",
        "comm_args.insecure=true",
    ]


def common(tmp_path: Path, *extra: str) -> list[str]:
    return ["download=false", f"run_dir={tmp_path / 'runs'}", *extra]


def final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "model.pt", weights_only=True)


def only_run_dir(runs: Path) -> Path:
    (run_dir,) = list(runs.iterdir())
    return run_dir


def test_the_seeds_file_and_yaml_run_as_printed_to_the_final_accuracy_line(job, tmp_path):
    # No overrides: gRPC with TLS from the development CA on 127.0.0.1:8890, one MNIST partition per silo.
    server = job.seed("server", 0)
    silos = [job.seed(f"client{rank}", rank) for rank in (1, 2)]
    assert server.wait(180) == 0, server.output()
    found = re.search(FINAL, server.output())
    assert found
    assert found.group(1) == "10"
    assert float(found.group(2)) > 50
    assert "Serving GRPC on 127.0.0.1:8890" in server.output()
    for silo in silos:
        assert silo.wait(30) == 0, silo.output()
        assert "Finished; the server saved the run in" in silo.output()
    run_dir = only_run_dir(tmp_path / "runs")
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 10
    assert {path.name for path in run_dir.iterdir()} >= RUN_FILES
    assert (tmp_path / "home" / ".cache" / "fedml" / "certs" / "ca.pem").exists()


@pytest.mark.parametrize("backend", ["GRPC", "MQTT"])
@pytest.mark.parametrize("optimizer", ["FedAvg", "SCAFFOLD"])
def test_with_every_silo_replying_a_job_equals_the_simulation(job, tmp_path, broker, backend, optimizer):
    settings = {"comm_round": 3, "federated_optimizer": optimizer, "random_seed": 3}
    extra = [f"{key}={value}" for key, value in settings.items()]
    args = common(tmp_path, *extra, *network(backend, broker))
    server = job.seed("server", 0, *args)
    silos = [job.seed(f"client{rank}", rank, *args) for rank in (1, 2)]
    assert server.wait(120) == 0, server.output()
    for silo in silos:
        assert silo.wait(30) == 0, silo.output()
    remote = final_state(only_run_dir(tmp_path / "runs"))
    simulated = fedml.run_simulation(
        config_file=str(SEED_CONFIG),
        argv=[],
        download=False,
        run_dir=str(tmp_path / "sp"),
        client_num_in_total=2,
        **settings,
    )
    assert remote.keys() == simulated.model_state.keys()
    for name, tensor in simulated.model_state.items():
        torch.testing.assert_close(remote[name], tensor, atol=1e-5, rtol=0)


def test_a_silo_killed_mid_round_is_left_out_and_rejoins_later(job, tmp_path):
    args = common(
        tmp_path,
        *network("GRPC", None),
        "client_num_per_round=3",
        # Enough rounds left (about 30 s of them) for a fresh process to start and rejoin on a loaded
        # machine; the run ends when they are done, whether or not the silo made it back.
        "comm_round=60",
        "min_clients_per_round=2",
        "round_timeout=20",
        "epochs=10",
    )
    server = job.seed("server", 0, *args)
    silos = {rank: job.seed(f"client{rank}", rank, *args) for rank in (1, 2, 3)}
    server.wait_for(r"Round 2: Training completed", 120)
    silos[3].kill()
    server.wait_for(r"peer 3 failed: connection lost|Peer 3 failed", 30)
    again = job.seed("client3-again", 3, *args)
    server.wait_for(r"Peer 3 rejoined", 60)
    assert server.wait(120) == 0, server.output()
    assert again.wait(30) == 0, again.output()
    assert re.search(FINAL, server.output())
    records = (only_run_dir(tmp_path / "runs") / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in records] == list(range(1, 61))


def test_a_silo_with_a_wrong_token_is_refused_while_the_others_train(job, tmp_path):
    args = common(tmp_path, *network("GRPC", None), "comm_round=3", "auth_token=right-token")
    server = job.seed("server", 0, *args)
    silos = [job.seed(f"client{rank}", rank, *args) for rank in (1, 2)]
    intruder = job.seed("intruder", 2, *args[:-1], "auth_token=wrong-token", "join_timeout=10")
    assert intruder.wait(60) != 0
    assert "refused peer 2" in intruder.output()
    assert server.wait(120) == 0, server.output()
    assert "token" in server.output()
    for silo in silos:
        assert silo.wait(30) == 0, silo.output()


def test_a_nan_and_a_wrongly_shaped_update_are_dropped_naming_their_clients(job, tmp_path):
    args = common(tmp_path, *network("GRPC", None), "client_num_per_round=3", "comm_round=2")
    server = job.seed("server", 0, *args, "min_clients_per_round=1")
    honest = job.seed("client1", 1, *args)
    faulty = Path(__file__).with_name("faulty_silo.py")
    role = ["--cf", str(SEED_CONFIG), "--role", "client"]
    nan = job.start("client2", str(faulty), *role, "--rank", "2", "--fault", "nan", *args)
    shape = job.start("client3", str(faulty), *role, "--rank", "3", "--fault", "shape", *args)
    assert server.wait(120) == 0, server.output()
    out = server.output()
    assert out.count("dropped the update of client 1 (weight") == 2
    assert "non-finite values: True" in out
    assert out.count("dropped the update of client 2, which does not fit the global model") == 2
    assert re.search(FINAL, out)
    for silo in (honest, nan, shape):
        assert silo.wait(30) == 0, silo.output()


def test_a_killed_server_resumes_from_its_checkpoint_and_the_silos_carry_on(job, tmp_path):
    runs = tmp_path / "runs"
    # Rounds long enough (and enough of them) that the kill lands mid-run however fast the runner is.
    args = common(tmp_path, *network("GRPC", None), "comm_round=12", "epochs=5", "checkpoint_frequency=1")
    first = job.seed("server", 0, *args)
    silos = [job.seed(f"client{rank}", rank, *args) for rank in (1, 2)]
    first.wait_for(r"Round 3: Training completed", 120)
    first.kill()
    (crashed,) = list(runs.iterdir())
    again = job.seed("server-again", 0, *args, f"resume_from={crashed / 'checkpoint.pt'}")
    assert again.wait(120) == 0, again.output()
    resumed_after = re.search(r"Resumed from .* after round (\d+)", again.output())
    assert resumed_after
    # Round 3's record is written before its checkpoint, so the kill may land between the two; round
    # 2's checkpoint was saved before round 3 began.
    assert 2 <= int(resumed_after.group(1)) < 12
    assert re.search(FINAL, again.output())
    for silo in silos:
        assert silo.wait(30) == 0, silo.output()
    (resumed,) = [d for d in runs.iterdir() if d != crashed]
    records = (resumed / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in records] == list(range(1, 13))


def test_mutual_tls_with_certificates_from_fedml_certs(job, tmp_path):
    from tests.conftest import run_python

    certs = tmp_path / "certs"
    made = run_python("-m", "fedml", "certs", "--out", str(certs), "--client", "silo-1", "--client", "silo-2")
    assert made.returncode == 0, made.stderr
    args = common(tmp_path, *network("GRPC", None), "comm_round=2", "tls_client_auth=true")
    ca = f"tls_ca_file={certs / 'ca.pem'}"
    server = job.seed(
        "server",
        0,
        *args,
        ca,
        f"tls_cert_file={certs / 'server.pem'}",
        f"tls_key_file={certs / 'server.key'}",
    )
    silos = [
        job.seed(
            f"client{rank}",
            rank,
            *args,
            ca,
            f"tls_cert_file={certs / f'silo-{rank}.pem'}",
            f"tls_key_file={certs / f'silo-{rank}.key'}",
        )
        for rank in (1, 2)
    ]
    without = job.seed("no-certificate", 2, *args, ca, "join_timeout=5")
    assert server.wait(120) == 0, server.output()
    assert re.search(FINAL, server.output())
    for silo in silos:
        assert silo.wait(30) == 0, silo.output()
    assert without.wait(60) != 0
    assert "tls_client_auth: true: this client needs tls_cert_file and tls_key_file" in without.output()


def test_launch_runs_a_three_silo_job_over_grpc(tmp_path):
    done = launch(tmp_path, "--clients", "3", "comm_round=3")
    assert done.returncode == 0, done.stdout[-3000:]
    assert re.search(r"\[server\] .*" + FINAL, done.stdout)
    assert "Serving GRPC on 127.0.0.1" in done.stdout
    for rank in (1, 2, 3):
        assert f"[client {rank}] " in done.stdout


def test_launch_runs_a_three_silo_job_over_mqtt_with_a_broker_of_its_own(tmp_path):
    done = launch(tmp_path, "--clients", "3", "comm_args.backend=MQTT", "comm_round=3")
    assert done.returncode == 0, done.stdout[-3000:]
    assert re.search(r"\[server\] .*" + FINAL, done.stdout)
    assert "Serving MQTT on 127.0.0.1" in done.stdout
    for rank in (1, 2, 3):
        assert f"[client {rank}] " in done.stdout


def test_the_cli_commands_and_one_liners_run_a_job(job, tmp_path):
    args = common(tmp_path, *network("GRPC", None), "comm_round=2")
    server = job.start("server", "-m", "fedml", "server", "--cf", str(SEED_CONFIG), *args)
    one_liner = "import fedml; fedml.run_cross_silo_client()"
    first = job.start("client1", "-c", one_liner, "--cf", str(SEED_CONFIG), "--rank", "1", *args)
    second = job.start("client2", "-m", "fedml", "client", "--cf", str(SEED_CONFIG), "--rank", "2", *args)
    assert server.wait(120) == 0, server.output()
    assert re.search(FINAL, server.output())
    for silo in (first, second):
        assert silo.wait(30) == 0, silo.output()
        assert "Finished; the server saved the run in" in silo.output()


def test_a_silo_trains_its_own_dataset_of_one_client(job, tmp_path):
    args = common(tmp_path, *network("GRPC", None), "comm_round=3")
    server = job.seed("server", 0, *args)
    script = str(Path(__file__).with_name("own_data_silo.py"))
    role = ["--cf", str(SEED_CONFIG), "--role", "client"]
    silos = [job.start(f"client{rank}", script, *role, "--rank", str(rank), *args) for rank in (1, 2)]
    assert server.wait(120) == 0, server.output()
    found = re.search(FINAL, server.output())
    assert found
    assert float(found.group(2)) > 70
    for silo in silos:
        assert silo.wait(30) == 0, silo.output()


def test_a_silo_that_hangs_is_left_out_once_its_heartbeats_stop(job, tmp_path):
    # A stopped process keeps its TCP connection open: only the missing keepalive answers tell.
    args = common(
        tmp_path,
        *network("GRPC", None),
        "client_num_per_round=3",
        "comm_round=4",
        "heartbeat=1",
        "round_timeout=240",
        "min_clients_per_round=2",
    )
    server = job.seed("server", 0, *args)
    silos = {rank: job.seed(f"client{rank}", rank, *args) for rank in (1, 2, 3)}
    server.wait_for(r"Round 1: Training completed", 120)
    silos[3].popen.send_signal(signal.SIGSTOP)
    try:
        server.wait_for(r"Peer 3 disconnected", 30)
        assert server.wait(60) == 0, server.output()
    finally:
        silos[3].popen.send_signal(signal.SIGCONT)
    assert re.search(FINAL, server.output())

"""Shared fixtures: fast, offline, isolated arguments and one default simulation run."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fedml.config import Arguments, load_arguments
from fedml.tracking import RunResult

ROOT = Path(__file__).resolve().parent.parent

PROCESS_TESTS = (
    "tests/cross_silo/",
    "tests/cross_device/",
    "tests/core/comm/test_broker.py",
    "tests/core/comm/test_grpc.py",
    "tests/core/comm/test_grpc_proto.py",
    "tests/core/comm/test_mpi.py",
    "tests/core/comm/test_mqtt.py",
    "tests/core/comm/test_trpc.py",
    "tests/simulation/test_mpi.py",
    "tests/simulation/test_nccl.py",
    "tests/simulation/test_trpc.py",
    "tests/simulation/test_privacy_backends.py",
    "tests/simulation/test_secagg_mpi.py",
    "tests/simulation/test_hierarchical.py",
    "tests/simulation/test_decentralized.py",
)
"""Tests whose processes talk to each other under short timeouts (MPI and torchrun ranks, silos,
devices, a broker): ``make test`` runs the suite on two pytest-xdist workers, and these go to one of
them, one at a time, so two such jobs never share the two cores. The documented commands and the
command line's tests run beside them (their jobs wait the default timeouts)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put the tests of ``PROCESS_TESTS`` in one xdist group (``--dist loadgroup``)."""
    for item in items:
        if item.nodeid.startswith(PROCESS_TESTS):
            item.add_marker(pytest.mark.xdist_group("processes"))


@pytest.fixture
def make_args(tmp_path: Path) -> Callable[..., Arguments]:
    """Build validated arguments that stay offline and write runs under the test's tmp dir."""

    def make(config_file: str | Path | None = None, **overrides: Any) -> Arguments:
        base = {
            "download": False,
            "run_dir": str(tmp_path / "runs"),
            "data_cache_dir": str(tmp_path / "cache"),
        }
        return load_arguments(config_file, {**base, **overrides})

    return make


@pytest.fixture(scope="session")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    """The default simulation (FedAvg, MNIST, 10 clients, 50 rounds), run once per session."""
    import fedml

    runs = tmp_path_factory.mktemp("default-runs")
    return fedml.run_simulation(argv=[], download=False, run_dir=str(runs))


def run_python(*argv: str, cwd: Path = ROOT, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run ``python argv...`` in a fresh interpreter that imports fedml from this checkout."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def broker() -> Iterator[Any]:
    """A real Mosquitto with a password file on a free loopback port, shared by a module's tests."""
    from fedml.core.comm.broker import MosquittoBroker
    from tests.core.comm.conftest import needs_mosquitto

    needs_mosquitto()
    with MosquittoBroker() as running:
        yield running


@pytest.fixture
def job(tmp_path: Path) -> Iterator[Any]:
    """The processes of a networked test (``tests.cross_silo.jobs.Job``); none is left running after it."""
    from tests.cross_silo.jobs import Job

    running = Job(tmp_path)
    yield running
    running.stop_all()

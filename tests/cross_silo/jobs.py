"""Real processes for cross-silo tests: start a server and silos, watch their output, stop them all."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT

SEED_CONFIG = ROOT / "configs" / "cross_silo_fedavg_mnist_lr.yaml"
SEED_SCRIPT = ROOT / "examples" / "cross_silo_fedavg_mnist_lr.py"


class Process:
    """One process of a job; its output (stdout and stderr) goes to a file that tests can watch."""

    def __init__(self, name: str, argv: list[str], folder: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log = folder / f"{name}.log"
        self._file = open(self.log, "w")  # noqa: SIM115
        self.popen = subprocess.Popen(
            [sys.executable, *argv], cwd=folder, env=env, stdout=self._file, stderr=subprocess.STDOUT
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        """Wait until the output matches ``pattern``; fail with the output when it does not in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.output())
            if found:
                return found
            if self.popen.poll() is not None:
                found = re.search(pattern, self.output())
                if found:
                    return found
                raise AssertionError(
                    f"{self.name} exited ({self.popen.returncode}) before {pattern!r}:\n{self.output()}"
                )
            time.sleep(0.05)
        raise AssertionError(f"{self.name}: no {pattern!r} within {timeout} s:\n{self.output()}")

    def wait(self, timeout: float = 120.0) -> int:
        """Wait for the process to exit and return its code (fail with its output after ``timeout``)."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still runs after {timeout} s:\n{self.output()}") from None

    def kill(self) -> None:
        """SIGKILL: the process dies at once, as a crashed machine's would."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(10)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()
        self._file.close()


class Job:
    """The processes of one test; ``stop_all`` (the fixture's teardown) leaves none running."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.processes: list[Process] = []
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "HOME": str(folder / "home"),
            "PYTHONUNBUFFERED": "1",
        }

    def start(self, name: str, *argv: str) -> Process:
        process = Process(name, list(argv), self.folder, self.env)
        self.processes.append(process)
        return process

    def seed(self, name: str, rank: int, *overrides: str, config: Path = SEED_CONFIG) -> Process:
        """Start the seed's script as rank ``rank`` (0: the server) with ``key=value`` overrides."""
        role = "server" if rank == 0 else "client"
        return self.start(
            name, str(SEED_SCRIPT), "--cf", str(config), "--rank", str(rank), "--role", role, *overrides
        )

    def stop_all(self) -> None:
        for process in self.processes:
            process.stop()


def launch(
    folder: Path, *argv: str, timeout: float = 240, config: Path = SEED_CONFIG
) -> subprocess.CompletedProcess[str]:
    """Run ``fedml launch --cf <config>`` offline in ``folder``; a timeout kills its whole group."""
    command = [sys.executable, "-m", "fedml", "launch", "--cf", str(config), *argv]
    command += ["download=false", f"run_dir={folder / 'runs'}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env["HOME"] = str(folder / "home")
    process = subprocess.Popen(
        command,
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, _ = process.communicate()
        raise AssertionError(f"fedml launch still ran after {timeout} s:\n{out[-3000:]}") from None
    return subprocess.CompletedProcess(command, process.returncode, out, "")

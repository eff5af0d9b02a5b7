import os
import subprocess
import sys

import torch

from fedml.device import set_threads

from .conftest import ROOT


def test_num_threads_null_picks_one_cpu_thread_and_an_explicit_count_wins(make_args):
    before = torch.get_num_threads()
    try:
        assert set_threads(make_args(), torch.device("cpu")) == 1
        assert torch.get_num_threads() == 1
        assert set_threads(make_args(num_threads=2), torch.device("cpu")) == 2
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_num_threads_null_keeps_torchs_default_on_a_gpu(make_args):
    before = torch.get_num_threads()
    assert set_threads(make_args(), torch.device("cuda")) == before
    assert torch.get_num_threads() == before


def test_import_fedml_leaves_the_thread_count_alone():
    code = "import torch; n = torch.get_num_threads(); import fedml; print(n == torch.get_num_threads())"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert done.stdout.strip() == "True"


def test_a_run_sets_the_configured_thread_count(make_args):
    import fedml

    before = torch.get_num_threads()
    try:
        args = make_args(num_threads=1, comm_round=1, client_num_per_round=2)
        dataset, output_dim = fedml.data.load(args)
        model = fedml.model.create(args, output_dim)
        torch.set_num_threads(2)
        fedml.FedMLRunner(args, torch.device("cpu"), dataset, model)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)

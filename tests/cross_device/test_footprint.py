"""The edge runtime stays light: what an edge device loads imports neither MPI nor gRPC."""

from __future__ import annotations

import json

from tests.conftest import run_python

EDGE_IMPORTS = """
import json, sys
import torch
import fedml

argv = ["--device_id", "2", "download=false", "client_num_in_total=5", "client_num_per_round=4"]
args = fedml.init_edge(argv)
dataset, output_dim = fedml.data.load(args)
model = fedml.model.create(args, output_dim)
runner = fedml.FedMLRunner(args, torch.device("cpu"), dataset, model)
import fedml.core.comm.mqtt  # what run() opens
print(json.dumps({
    "runner": type(runner.runner).__name__,
    "heavy": sorted(m for m in sys.modules if m.split(".")[0] in ("mpi4py", "grpc")),
}))
"""


def test_an_edge_device_imports_neither_mpi4py_nor_grpc():
    done = run_python("-c", EDGE_IMPORTS, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["runner"] == "CrossSiloClient"
    assert report["heavy"] == []

import pytest
import torch

import fedml
from fedml.errors import NotSupportedError
from fedml.runner import available_runners


def test_unbuilt_combination_names_what_exists(make_args):
    args = make_args(training_type="cross_device", backend="GRPC")
    with pytest.raises(NotSupportedError) as err:
        fedml.FedMLRunner(args, torch.device("cpu"), None, torch.nn.Linear(1, 1))
    assert isinstance(err.value, NotImplementedError)
    assert "'cross_device' with comm_args.backend 'GRPC'" in str(err.value)
    assert "cross_silo/GRPC" in str(err.value)
    assert "simulation/sp" in str(err.value)


def test_simulation_sp_is_registered():
    assert ("simulation", "sp") in available_runners()


def test_get_device_falls_back_to_cpu_without_cuda(make_args, caplog):
    args = make_args(using_gpu=True)
    device = fedml.device.get_device(args)
    if torch.cuda.is_available():
        assert device.type == "cuda"
    else:
        assert device == torch.device("cpu")
        assert "CUDA is not available" in caplog.text

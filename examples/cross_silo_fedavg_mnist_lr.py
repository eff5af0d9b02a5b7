"""Cross-silo FedAvg on MNIST: the seed's five steps, started once per process.

    CF=configs/cross_silo_fedavg_mnist_lr.yaml
    python examples/cross_silo_fedavg_mnist_lr.py --cf $CF --rank 0 --role server
    python examples/cross_silo_fedavg_mnist_lr.py --cf $CF --rank 1 --role client
    python examples/cross_silo_fedavg_mnist_lr.py --cf $CF --rank 2 --role client

or all three at once: fedml launch --cf configs/cross_silo_fedavg_mnist_lr.yaml --clients 2
"""

import fedml
from fedml import FedMLRunner

if __name__ == "__main__":
    args = fedml.init()
    device = fedml.device.get_device(args)
    dataset, output_dim = fedml.data.load(args)
    model = fedml.model.create(args, output_dim)
    FedMLRunner(args, device, dataset, model).run()

"""An edge device of a cross-device run: the seed's two lines.

    python examples/cross_device_edge.py --cf configs/cross_device_fedavg_mnist_lr.yaml --device_id 1

with the server started as ``fedml run --cf configs/cross_device_fedavg_mnist_lr.yaml --role server``
(and the broker's address and credentials as comm_args keys), or everything at once:
``fedml launch --cf configs/cross_device_fedavg_mnist_lr.yaml --clients 5``.
"""

import fedml

if __name__ == "__main__":
    args = fedml.init_edge()
    fedml.edge_runner(args).run()

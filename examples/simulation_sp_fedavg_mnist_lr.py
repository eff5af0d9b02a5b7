"""FedAvg on MNIST with logistic regression in one process.

python examples/simulation_sp_fedavg_mnist_lr.py --cf configs/simulation_sp_fedavg_mnist_lr.yaml
"""

import fedml

if __name__ == "__main__":
    fedml.run_simulation(backend="sp")

r"""FedAvg on MNIST with logistic regression over PyTorch RPC (rank 0 is the server, the others train).

torchrun --nproc-per-node 4 examples/simulation_trpc_fedavg_mnist_lr.py \
    --cf configs/simulation_trpc_fedavg_mnist_lr.yaml
"""

import fedml

if __name__ == "__main__":
    fedml.run_simulation(backend="TRPC")

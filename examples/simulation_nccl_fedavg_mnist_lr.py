r"""FedAvg on MNIST with logistic regression on torch.distributed (NCCL on GPUs, gloo on the CPU).

mpirun -np 4 python examples/simulation_nccl_fedavg_mnist_lr.py \
    --cf configs/simulation_nccl_fedavg_mnist_lr.yaml
torchrun --nproc-per-node 4 examples/simulation_nccl_fedavg_mnist_lr.py \
    --cf configs/simulation_nccl_fedavg_mnist_lr.yaml
"""

import fedml

if __name__ == "__main__":
    fedml.run_simulation(backend="NCCL")

r"""FedAvg on MNIST with logistic regression across MPI ranks (rank 0 is the server, the others train).

mpirun -np 4 python examples/simulation_mpi_fedavg_mnist_lr.py \
    --cf configs/simulation_mpi_fedavg_mnist_lr.yaml
"""

import fedml

if __name__ == "__main__":
    fedml.run_simulation(backend="MPI")

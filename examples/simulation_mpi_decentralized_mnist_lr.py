r"""D-PSGD on MNIST with logistic regression across MPI ranks (rank 0 tracks, the others host nodes).

mpirun -np 3 python examples/simulation_mpi_decentralized_mnist_lr.py \
    --cf configs/simulation_mpi_decentralized_mnist_lr.yaml
"""

import fedml

if __name__ == "__main__":
    fedml.run_simulation(backend="MPI")

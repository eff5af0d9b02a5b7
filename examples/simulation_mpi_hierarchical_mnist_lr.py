r"""Hierarchical FL (HierFAVG) on MNIST with logistic regression across MPI ranks (a rank per group).

Launch ``topology_args.group_num + 1`` processes: rank 0 is the server, rank g + 1 hosts group g.

mpirun -np 3 python examples/simulation_mpi_hierarchical_mnist_lr.py \
    --cf configs/simulation_mpi_hierarchical_mnist_lr.yaml
"""

import fedml

if __name__ == "__main__":
    fedml.run_simulation(backend="MPI")

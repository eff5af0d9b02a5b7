r"""Hierarchical FL (HierFAVG) on MNIST with logistic regression in one process (2 groups of clients).

python examples/simulation_sp_hierarchical_mnist_lr.py \
    --cf configs/simulation_sp_hierarchical_mnist_lr.yaml
"""

import fedml

if __name__ == "__main__":
    fedml.run_simulation(backend="sp")

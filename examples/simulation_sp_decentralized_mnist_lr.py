"""D-PSGD on MNIST with logistic regression in one process: nodes on a ring gossip, no server.

python examples/simulation_sp_decentralized_mnist_lr.py --cf configs/simulation_sp_decentralized_mnist_lr.yaml
"""

import fedml

if __name__ == "__main__":
    fedml.run_simulation(backend="sp")

"""A silo that brings its own data: a dataset of one client, built from tensors only this silo has.

Here the tensors are this silo's half of MNIST's training digits (as a hospital's own records would
be), handed to FedMLRunner in place of the shared dataset.
"""

import fedml
from fedml.data import FederatedDataset

if __name__ == "__main__":
    args = fedml.init()
    shared, output_dim = fedml.data.load(args)
    x, y = shared.train_global.tensors()
    mine = slice(args.rank - 1, None, 2)
    own = FederatedDataset.from_tensors(
        x[mine], y[mine], x[:100], y[:100], [list(range(len(y[mine])))], name=f"silo-{args.rank}-records"
    )
    model = fedml.model.create(args, output_dim)
    fedml.FedMLRunner(args, fedml.device.get_device(args), own, model).run()

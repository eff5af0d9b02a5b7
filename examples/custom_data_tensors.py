"""Your own data as per-client tensors, each client with its own test split and no global test set.

python examples/custom_data_tensors.py [key=value ...]

Each client holds ``(x, y)`` tensors (numpy arrays work too) for training and for testing; without a
global test set the server evaluates on the union of the clients' test sets. This is also what one
cross-silo silo passes: ``from_client_datasets([my_train], test=[my_test])``, its own data only.
"""

import torch

import fedml
from fedml.config import parse_command_line
from fedml.data import from_client_datasets

CLASSES, FEATURES = 4, 10


def client_tensors(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return one client of a linearly separable task, its inputs shifted per client (feature skew)."""
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(FEATURES, CLASSES, generator=torch.Generator().manual_seed(0))
    x = torch.randn(n, FEATURES, generator=generator) + 0.5 * seed
    return x, (x @ weights).argmax(dim=1)


DEFAULTS = {"comm_round": 5, "client_num_in_total": 5, "client_num_per_round": 5, "learning_rate": 0.1}
"""This example's settings; ``key=value`` on the command line (or ``--cf FILE``) changes them."""


def defaults_not_on_the_command_line(defaults: dict) -> dict:
    """Return the defaults the command line does not set (``fedml.init``'s overrides win over it)."""
    _, _, given = parse_command_line(None)
    named = {key.rpartition(".")[2] for key in given}
    return {key: value for key, value in defaults.items() if key not in named}


if __name__ == "__main__":
    args = fedml.init(overrides=defaults_not_on_the_command_line(DEFAULTS))
    train, test = [], []
    for k in range(args.client_num_in_total):
        x, y = client_tensors(80, seed=k)
        train.append((x[:64], y[:64]))
        test.append((x[64:], y[64:]))
    dataset = from_client_datasets(train, test=test, name="shifted", batch_size=args.batch_size)
    model = fedml.model.create(args, dataset.output_dim, input_shape=dataset.input_shape)
    result = fedml.FedMLRunner(args, fedml.device.get_device(args), dataset, model).run()
    print(f"test accuracy after {len(result.history)} rounds: {result.final_metrics['test_accuracy']:.3f}")

"""Your own data as per-client ``torch.utils.data.Dataset``s plus a global test set, trained with FedAvg.

python examples/custom_data_datasets.py [key=value ...]

Each client here is a map-style Dataset whose items are ``(input, label)``; replace ``NoisyBlobs``
with your own (images from a folder, rows of a file, ...). ``from_client_datasets`` turns them into the
dataset object ``FedMLRunner`` trains, one client per entry, and the server evaluates on ``global_test``.
"""

import torch
from torch.utils.data import Dataset

import fedml
from fedml.config import parse_command_line
from fedml.data import from_client_datasets

CLASSES, FEATURES = 3, 8


class NoisyBlobs(Dataset):
    """``n`` points around one centre per class; ``skew`` makes the client favour some classes."""

    def __init__(self, n: int, skew: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        weights = torch.ones(CLASSES)
        weights[skew % CLASSES] = 4.0
        self.labels = torch.multinomial(weights, n, replacement=True, generator=generator)
        centres = torch.eye(CLASSES, FEATURES) * 3.0
        self.inputs = centres[self.labels] + torch.randn(n, FEATURES, generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.inputs[i], int(self.labels[i])


DEFAULTS = {"comm_round": 5, "client_num_in_total": 4, "client_num_per_round": 4, "learning_rate": 0.1}
"""This example's settings; ``key=value`` on the command line (or ``--cf FILE``) changes them."""


def defaults_not_on_the_command_line(defaults: dict) -> dict:
    """Return the defaults the command line does not set (``fedml.init``'s overrides win over it)."""
    _, _, given = parse_command_line(None)
    named = {key.rpartition(".")[2] for key in given}
    return {key: value for key, value in defaults.items() if key not in named}


if __name__ == "__main__":
    args = fedml.init(overrides=defaults_not_on_the_command_line(DEFAULTS))
    clients = [NoisyBlobs(60, skew=k, seed=k) for k in range(args.client_num_in_total)]
    global_test = NoisyBlobs(200, skew=0, seed=99)
    dataset = from_client_datasets(clients, global_test=global_test, name="blobs", batch_size=args.batch_size)
    model = fedml.model.create(args, dataset.output_dim, input_shape=dataset.input_shape)
    result = fedml.FedMLRunner(args, fedml.device.get_device(args), dataset, model).run()
    print(f"test accuracy after {len(result.history)} rounds: {result.final_metrics['test_accuracy']:.3f}")

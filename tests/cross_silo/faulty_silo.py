"""The seed's silo with a poisoned trainer: ``--fault nan`` sends NaN values, ``--fault shape`` a tensor
of the wrong shape. The server must drop the update, naming the client, and train on."""

import argparse

import torch

import fedml
from fedml.ml import ClientTrainer


class PoisonedTrainer(ClientTrainer):
    fault = "nan"

    def get_model_params(self):
        state = super().get_model_params()
        name = next(iter(state))
        if self.fault == "nan":
            state[name] = torch.full_like(state[name], float("nan"))
        else:
            state[name] = torch.zeros(state[name].numel() + 1)
        return state


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--fault", choices=["nan", "shape"], required=True)
    PoisonedTrainer.fault = parser.parse_known_args()[0].fault
    args = fedml.init()
    dataset, output_dim = fedml.data.load(args)
    model = fedml.model.create(args, output_dim)
    trainer = PoisonedTrainer(model, args)
    fedml.FedMLRunner(args, fedml.device.get_device(args), dataset, model, client_trainer=trainer).run()

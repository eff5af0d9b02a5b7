"""The seed's silo that dies (``os._exit``) when asked to unmask in round 1, after its masked input."""

import os

import fedml
from fedml.core.privacy.secagg.messages import UNMASK
from fedml.core.round.secure import SecureParty

respond = SecureParty.respond


def dying(self, message):
    if message.metadata.get("stage") == UNMASK and message.round_idx == 0:
        os._exit(3)
    return respond(self, message)


if __name__ == "__main__":
    SecureParty.respond = dying
    args = fedml.init()
    dataset, output_dim = fedml.data.load(args)
    model = fedml.model.create(args, output_dim)
    fedml.FedMLRunner(args, fedml.device.get_device(args), dataset, model).run()

"""The five-step pattern: every step can be replaced by your own code (data, model, trainer, runner).

python examples/main_fedml_simulation.py --cf configs/fedml_config.yaml
"""

import fedml

if __name__ == "__main__":
    args = fedml.init()
    device = fedml.device.get_device(args)
    dataset, output_dim = fedml.data.load(args)
    model = fedml.model.create(args, output_dim)
    fedml.FedMLRunner(args, device, dataset, model).run()

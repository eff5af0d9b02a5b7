"""``common_args.topology`` and ``topology_args``: what the loader accepts and refuses."""

import pytest

from fedml.config import load_arguments
from fedml.errors import ConfigError


def test_topology_keys_load_with_their_defaults():
    args = load_arguments(None, {"topology": "decentralized", "graph": "torus", "gossip_steps": 3})

    assert (args.topology, args.graph, args.gossip_steps, args.group_num) == ("decentralized", "torus", 3, 2)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"topology": "decentralized", "backend": "NCCL"}, "common_args.topology"),
        ({"topology": "hierarchical", "training_type": "cross_silo"}, "common_args.topology"),
        ({"graph": "adjacency"}, "topology_args.adjacency"),
        ({"adjacency": [[0, 1], [1, 0]]}, "topology_args.adjacency"),
        ({"time_varying": True, "graph": "ring"}, "topology_args.time_varying"),
        ({"topology": "mesh"}, "common_args.topology"),
    ],
)
def test_impossible_topology_settings_fail_at_load_naming_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key):
        load_arguments(None, overrides)

import pytest
import torch

from fedml.core import attacks
from fedml.errors import ConfigError


def test_attackers_are_seeded_distinct_and_bounded():
    chosen = attacks.choose_attackers(seed=0, client_num=20, count=4)
    assert chosen == attacks.choose_attackers(seed=0, client_num=20, count=4)
    assert len(set(chosen)) == 4
    assert all(0 <= c < 20 for c in chosen)
    assert chosen != attacks.choose_attackers(seed=1, client_num=20, count=4)
    with pytest.raises(ConfigError, match="5 attackers requested but there are 4 clients"):
        attacks.choose_attackers(0, 4, 5)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("zero", [0.0, 0.0]), ("flip", [1.0, -2.0]), ("scaled", [1.0, 20.0])],
)
def test_byzantine_modes(mode, expected):
    global_state = {"w": torch.tensor([1.0, 0.0]), "n": torch.tensor(3)}
    honest = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    sent = attacks.byzantine_state(honest, global_state, mode, torch.Generator().manual_seed(0), scale=10.0)
    assert sent["w"].tolist() == expected
    assert sent["n"].item() == 3


def test_random_mode_is_seeded_noise():
    state = {"w": torch.zeros(100)}
    a = attacks.byzantine_state(state, state, "random", torch.Generator().manual_seed(1))
    b = attacks.byzantine_state(state, state, "random", torch.Generator().manual_seed(1))
    assert torch.equal(a["w"], b["w"])
    assert 0.5 < a["w"].std().item() < 1.5


def test_unknown_mode_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="valid: random, zero, flip, scaled"):
        attacks.byzantine_state({}, {}, "chaos", torch.Generator())


def test_model_replacement_makes_the_average_the_attackers_model():
    global_state = {"w": torch.zeros(3)}
    backdoor = {"w": torch.tensor([1.0, 2.0, 3.0])}
    boosted = attacks.model_replacement(backdoor, global_state, boost=4)
    average = (boosted["w"] + 3 * global_state["w"]) / 4
    assert torch.allclose(average, backdoor["w"])


def test_flip_labels_swaps_classes_without_touching_the_input():
    labels = torch.tensor([0, 1, 2, 1, 0])
    flipped = attacks.flip_labels(labels, [0, 1], [1, 0])
    assert flipped.tolist() == [1, 0, 2, 0, 1]
    assert labels.tolist() == [0, 1, 2, 1, 0]
    with pytest.raises(ConfigError, match="original_class_list has 2 classes, target_class_list 1"):
        attacks.flip_labels(labels, [0, 1], [1])

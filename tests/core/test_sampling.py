import numpy as np
import torch

from fedml.core.sampling import client_generator, sample_clients


def test_sampling_is_seeded_sorted_distinct_and_sized():
    first = sample_clients(seed=1, round_idx=3, client_num_in_total=100, client_num_per_round=10)
    assert first == sample_clients(seed=1, round_idx=3, client_num_in_total=100, client_num_per_round=10)
    assert first == sorted(set(first))
    assert len(first) == 10
    assert all(0 <= c < 100 for c in first)


def test_rounds_and_seeds_draw_different_clients():
    draws = {tuple(sample_clients(0, r, 100, 10)) for r in range(20)}
    assert len(draws) == 20
    assert sample_clients(0, 0, 100, 10) != sample_clients(1, 0, 100, 10)


def test_everyone_takes_part_when_asked_for_all():
    assert sample_clients(0, 5, 7, 7) == list(range(7))


def test_global_rngs_are_untouched():
    np_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state().clone()
    sample_clients(0, 0, 100, 10)
    client_generator(0, 0, 0)
    assert np.array_equal(np_state, np.random.get_state()[1])
    assert torch.equal(torch_state, torch.get_rng_state())


def test_client_generators_differ_by_client_and_round_and_repeat_by_seed():
    def draw(seed, r, c):
        return torch.randperm(50, generator=client_generator(seed, r, c)).tolist()

    assert draw(0, 0, 0) == draw(0, 0, 0)
    assert draw(0, 0, 0) != draw(0, 0, 1)
    assert draw(0, 0, 0) != draw(0, 1, 0)
    assert draw(0, 0, 0) != draw(1, 0, 0)

import pytest
import torch

from fedml.core.privacy.secagg import SecAggArgs, Transcript, run_secagg_round, sum_bound
from fedml.core.privacy.secagg.messages import (
    ADVERTISE,
    MASKED,
    SHARE,
    UNMASK,
    AdvertiseRequest,
    MaskedRequest,
    ShareKeys,
    ShareRequest,
    UnmaskRequest,
    UnmaskShares,
)
from fedml.errors import SecAggError

PLUS = SecAggArgs(enable_secure_aggregation=True, sa_method="secagg_plus", sa_neighbours=4)


def inputs(n, length=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = [f"c{i:02d}" for i in range(n)]
    return {c: torch.randn(length, generator=gen) for c in ids}, {c: 1.0 + i % 3 for i, c in enumerate(ids)}


def expected_sum(vectors, weights, clients):
    return sum(weights[c] * vectors[c].double() for c in clients)


def sent(transcript, stage, kind):
    return {r.receiver: kind.from_message(r.message) for r in transcript.to_clients if r.stage == stage}


def graph_of(transcript):
    return {c: set(m.neighbours) for c, m in sent(transcript, ADVERTISE, AdvertiseRequest).items()}


def test_each_client_talks_to_its_k_neighbours_only():
    vectors, weights = inputs(20)
    total, weight, transcript = run_secagg_round(vectors, weights, PLUS, seed=1)
    graph = graph_of(transcript)
    assert all(len(peers) == 4 for peers in graph.values())
    assert all(c in graph[p] for c, peers in graph.items() for p in peers)
    for c, request in sent(transcript, SHARE, ShareRequest).items():
        assert set(request.peers) == graph[c]
    for message in transcript.received(SHARE):
        reply = ShareKeys.from_message(message)
        assert set(reply.receivers) == graph[reply.client_id]
    for c, request in sent(transcript, MASKED, MaskedRequest).items():
        assert set(request.senders) == graph[c]
    for c, request in sent(transcript, UNMASK, UnmaskRequest).items():
        assert set(request.survivors) == graph[c] | {c}
    assert sum(1 for r in transcript.to_server if r.stage == SHARE) == 20
    assert float((total - expected_sum(vectors, weights, vectors)).abs().max()) <= sum_bound(20, 16.0, 24)
    assert weight == sum(weights.values())


def test_dropouts_below_each_neighbourhood_threshold_still_give_the_sum():
    vectors, weights = inputs(20)
    _, _, first = run_secagg_round(vectors, weights, PLUS, seed=2)
    graph = graph_of(first)
    # Two dropouts that are not neighbours: every neighbourhood of 5 holders loses at most 2 (t = 3).
    gone_share = "c00"
    gone_masked = next(c for c in sorted(graph) if c != gone_share and c not in graph[gone_share])
    total, weight, transcript = run_secagg_round(
        vectors, weights, PLUS, seed=2, drop_after_share=[gone_share], drop_after_masked=[gone_masked]
    )
    survivors = [c for c in vectors if c != gone_share]
    assert float((total - expected_sum(vectors, weights, survivors)).abs().max()) <= sum_bound(19, 16.0, 24)
    assert weight == sum(weights[c] for c in survivors)
    key_owners = {o for m in transcript.received(UNMASK) for o in UnmaskShares.from_message(m).key_owners}
    assert key_owners == {gone_share}


def test_a_neighbourhood_losing_too_many_fails_before_shares_are_requested():
    vectors, weights = inputs(20)
    _, _, first = run_secagg_round(vectors, weights, PLUS, seed=3)
    victim = "c05"
    dropped = sorted(graph_of(first)[victim])[:3]
    transcript = Transcript()
    with pytest.raises(SecAggError, match="holders of client"):
        run_secagg_round(vectors, weights, PLUS, seed=3, drop_after_share=dropped, transcript=transcript)
    assert not [r for r in transcript.to_clients if r.stage == UNMASK]


def test_secagg_plus_sends_fewer_bytes_than_secagg():
    vectors, weights = inputs(40, length=4)
    plain = SecAggArgs(enable_secure_aggregation=True)
    plus = SecAggArgs(enable_secure_aggregation=True, sa_method="secagg_plus")
    _, _, full = run_secagg_round(vectors, weights, plain, seed=4, keep_messages=False)
    _, _, sparse = run_secagg_round(vectors, weights, plus, seed=4, keep_messages=False)
    assert plus.degree(40) == 13
    assert sparse.bytes_on_wire < full.bytes_on_wire / 2

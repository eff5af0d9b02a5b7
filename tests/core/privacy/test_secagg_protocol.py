import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedml.core.comm import codec
from fedml.core.privacy.secagg import (
    SecAggArgs,
    SecAggClient,
    SecAggServer,
    Transcript,
    field,
    run_secagg_round,
    sum_bound,
)
from fedml.core.privacy.secagg.messages import (
    MASKED,
    SHARE,
    UNMASK,
    AdvertiseKeys,
    MaskedInput,
    ShareKeys,
    UnmaskShares,
)
from fedml.errors import SecAggError

ARGS = SecAggArgs(enable_secure_aggregation=True)


def inputs(n, length=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = [f"client-{i}" for i in range(n)]
    return {c: torch.randn(length, generator=gen) for c in ids}, {c: float(i + 1) for i, c in enumerate(ids)}


def plain_sum(vectors, weights, clients, clip=ARGS.sa_clip_range):
    return sum(weights[c] * vectors[c].double().clamp(-clip, clip) for c in clients)


def assert_close_to_plain(total, weight, vectors, weights, clients, args=ARGS):
    expected = plain_sum(vectors, weights, clients, args.sa_clip_range)
    bound = sum_bound(len(clients), args.sa_clip_range, args.sa_bit_width) * (1 + 1e-9) + 1e-12
    assert float((total - expected).abs().max()) <= bound + 1e-12 * float(expected.abs().max())
    assert weight == sum(weights[c] for c in clients)


@settings(max_examples=12, deadline=None)
@given(
    st.integers(2, 7),
    st.integers(1, 12),
    st.sampled_from(["secagg", "secagg_plus"]),
    st.integers(4, 30),
    st.floats(0.1, 4.0),
    st.integers(0, 1000),
)
def test_unmasked_sum_equals_the_plain_weighted_sum(n, length, method, bits, clip, seed):
    args = SecAggArgs(sa_method=method, sa_bit_width=bits, sa_clip_range=clip, sa_max_weight=100.0)
    vectors, weights = inputs(n, length, seed)
    total, weight, _ = run_secagg_round(vectors, weights, args, seed=seed)
    assert_close_to_plain(total, weight, vectors, weights, list(vectors), args)


def test_dropouts_after_the_masked_input_still_give_every_masked_input():
    vectors, weights = inputs(7)
    ids = list(vectors)
    assert ARGS.threshold(7) == 4
    total, weight, transcript = run_secagg_round(vectors, weights, ARGS, drop_after_masked=ids[:3], seed=1)
    assert transcript.survivors[3] == frozenset(ids[3:])
    assert_close_to_plain(total, weight, vectors, weights, ids)


def test_dropouts_after_sharing_keys_give_the_survivors_sum():
    vectors, weights = inputs(7)
    ids = list(vectors)
    total, weight, transcript = run_secagg_round(vectors, weights, ARGS, drop_after_share=ids[4:], seed=2)
    assert transcript.survivors[2] == frozenset(ids[:4])
    assert_close_to_plain(total, weight, vectors, weights, ids[:4])
    key_owners = {o for m in transcript.received(UNMASK) for o in UnmaskShares.from_message(m).key_owners}
    assert key_owners == set(ids[4:])


def test_dropouts_at_every_stage_together():
    vectors, weights = inputs(8)
    ids = list(vectors)
    total, weight, transcript = run_secagg_round(
        vectors,
        weights,
        ARGS,
        drop_after_advertise=ids[:1],
        drop_after_share=ids[1:2],
        drop_after_masked=ids[2:3],
        seed=3,
    )
    assert [len(s) for s in transcript.survivors] == [8, 7, 6, 5]
    assert_close_to_plain(total, weight, vectors, weights, ids[2:])


def test_too_many_dropouts_after_sharing_fail_before_any_share_is_requested():
    vectors, weights = inputs(7)
    transcript = Transcript()
    with pytest.raises(SecAggError, match="below the threshold 4"):
        run_secagg_round(
            vectors, weights, ARGS, drop_after_share=list(vectors)[:4], seed=4, transcript=transcript
        )
    assert not [r for r in transcript.to_clients if r.stage == UNMASK]
    assert not transcript.received(UNMASK)


def test_too_many_dropouts_after_masking_reveal_too_few_shares_to_rebuild_anything():
    vectors, weights = inputs(7)
    transcript = Transcript()
    with pytest.raises(SecAggError, match="threshold"):
        run_secagg_round(
            vectors, weights, ARGS, drop_after_masked=list(vectors)[:4], seed=5, transcript=transcript
        )
    replies = [UnmaskShares.from_message(m) for m in transcript.received(UNMASK)]
    assert len(replies) == 3
    assert all(not r.key_owners for r in replies)


def test_the_server_never_receives_an_individual_input_nor_both_shares_of_a_client():
    vectors, weights = inputs(6, length=64)
    ids = list(vectors)
    total, _, transcript = run_secagg_round(
        vectors, weights, ARGS, drop_after_share=ids[:1], drop_after_masked=ids[1:2], seed=6
    )
    quantized = {
        c: field.quantize(vectors[c], weights[c], ARGS.sa_clip_range, ARGS.sa_bit_width, ARGS.sa_max_weight)
        for c in ids
    }
    for message in transcript.received():
        for tensor in message.tensors.values():
            raw = tensor.reshape(-1).numpy().view(np.uint8)
            for vector in quantized.values():
                assert vector.view(np.uint8).tobytes() not in raw.tobytes()
    masked = [MaskedInput.from_message(m).elements() for m in transcript.received(MASKED)]
    for elements in masked:
        assert all(np.mean(elements == q) < 0.05 for q in quantized.values())
    replies = [UnmaskShares.from_message(m) for m in transcript.received(UNMASK)]
    revealed_masks = {o for r in replies for o in r.mask_owners}
    revealed_keys = {o for r in replies for o in r.key_owners}
    assert not revealed_masks & revealed_keys
    assert torch.isfinite(total).all()


def chi_square_p_value(elements, bins=64):
    top = (elements >> np.uint64(64 - int(np.log2(bins)))).astype(np.int64)
    counts = np.bincount(top, minlength=bins)
    expected = len(elements) / bins
    statistic = float(((counts - expected) ** 2 / expected).sum())
    return float(
        torch.special.gammaincc(
            torch.tensor((bins - 1) / 2, dtype=torch.float64),
            torch.tensor(statistic / 2, dtype=torch.float64),
        )
    )


def test_a_masked_vector_is_indistinguishable_from_uniform():
    # The worst case for masking: every input is zero, so any structure would be the masks'.
    vectors = {f"client-{i}": torch.zeros(8192) for i in range(3)}
    weights = dict.fromkeys(vectors, 1.0)
    _, _, transcript = run_secagg_round(vectors, weights, ARGS, seed=7)
    for message in transcript.received(MASKED):
        assert chi_square_p_value(MaskedInput.from_message(message).elements()) > 1e-3
    plain = field.quantize(torch.randn(8192), 1.0, ARGS.sa_clip_range, ARGS.sa_bit_width, 1.0)
    assert chi_square_p_value(plain) < 1e-6


def flip_sealed(sender, row=0):
    def tamper(message):
        if (
            message.metadata.get("stage") == SHARE
            and message.sender == sender
            and "sealed" in message.tensors
        ):
            message.tensors["sealed"][row, 40] ^= 1
        return message

    return tamper


def test_a_tampered_share_fails_the_round():
    vectors, weights = inputs(4)
    with pytest.raises(
        SecAggError, match="share from client client-1 to client client-0 fails authentication"
    ):
        run_secagg_round(vectors, weights, ARGS, seed=8, tamper=flip_sealed("client-1"))


def test_a_share_moved_to_another_client_fails_the_round():
    def swap(message):
        if message.metadata.get("stage") == SHARE and message.sender == "client-0":
            message.tensors["sealed"] = message.tensors["sealed"].flip(0).clone()
        return message

    vectors, weights = inputs(4)
    with pytest.raises(SecAggError, match="fails authentication"):
        run_secagg_round(vectors, weights, ARGS, seed=9, tamper=swap)


def test_a_share_replayed_from_an_earlier_round_fails():
    captured = {}

    def capture(message):
        if message.metadata.get("stage") == SHARE and message.sender == "client-2":
            captured["sealed"] = message.tensors["sealed"].clone()
        return message

    def replay(message):
        if message.metadata.get("stage") == SHARE and message.sender == "client-2":
            message.tensors["sealed"] = captured["sealed"]
        return message

    vectors, weights = inputs(4)
    run_secagg_round(vectors, weights, ARGS, seed=10, round_idx=0, tamper=capture)
    with pytest.raises(SecAggError, match="fails authentication"):
        run_secagg_round(vectors, weights, ARGS, seed=10, round_idx=1, tamper=replay)


def test_a_wrong_key_share_is_caught_when_the_key_is_rebuilt():
    def corrupt(message):
        if message.metadata.get("stage") == UNMASK and "key_shares" in message.tensors:
            shares = message.tensors["key_shares"]
            if len(shares):
                shares[0, 0] = (shares[0, 0] + 1) % ((1 << 31) - 1)
        return message

    vectors, weights = inputs(4)
    with pytest.raises(SecAggError, match="does not match its public key"):
        run_secagg_round(vectors, weights, ARGS, seed=11, drop_after_share=["client-0"], tamper=corrupt)


def start_round(n=4, round_idx=0, seed=0):
    ids = [f"client-{i}" for i in range(n)]
    rng = np.random.default_rng(seed)
    server = SecAggServer(ARGS, round_idx, ids, rng=rng)
    clients = {c: SecAggClient(c, ARGS, round_idx, rng=rng) for c in ids}
    return server, clients


def wire(message):
    return codec.decode(codec.encode(message))


def advertise(server, clients):
    requests = {c: wire(r.to_message("server", c)) for c, r in server.requests().items()}
    return requests, {c: wire(clients[c].respond(m).to_message(c, "server")) for c, m in requests.items()}


def test_a_replayed_reply_fails_at_the_server():
    server, clients = start_round()
    _, replies = advertise(server, clients)
    server.receive(replies["client-0"])
    with pytest.raises(SecAggError, match="client client-0 arrived twice"):
        server.receive(replies["client-0"])


def test_a_replayed_request_fails_at_the_client():
    server, clients = start_round()
    requests, _ = advertise(server, clients)
    with pytest.raises(
        SecAggError, match="client client-0 got a sa_advertise request while expecting sa_share"
    ):
        clients["client-0"].respond(requests["client-0"])


def test_a_reply_from_another_round_fails():
    old_server, old_clients = start_round(round_idx=0, seed=1)
    _, old_replies = advertise(old_server, old_clients)
    server, _ = start_round(round_idx=1, seed=2)
    with pytest.raises(SecAggError, match="another round or session"):
        server.receive(old_replies["client-1"])


def test_an_out_of_stage_reply_fails():
    server, clients = start_round()
    _, replies = advertise(server, clients)
    for message in replies.values():
        server.receive(message)
    server.close_stage()
    with pytest.raises(SecAggError, match="expected a sa_share"):
        server.receive(replies["client-0"])


def test_a_client_not_in_the_round_fails():
    server, _ = start_round()
    intruder = SecAggClient("intruder", ARGS, 0)
    request = server.requests()["client-0"]
    keys = intruder.advertise(
        type(request)(0, request.session, "intruder", request.clients, request.terms, request.neighbours)
    )
    with pytest.raises(SecAggError, match="client intruder: the client is not in round 0"):
        server.receive(wire(keys.to_message("intruder", "server")))


def test_a_client_reveals_shares_once_only():
    vectors, weights = inputs(4)
    server, clients = start_round()
    for _ in range(3):
        requests = server.requests()
        for c, request in requests.items():
            clients[c].set_input(vectors[c], weights[c])
            server.receive(
                wire(clients[c].respond(wire(request.to_message("server", c))).to_message(c, "server"))
            )
        server.close_stage()
    unmask = server.requests()["client-0"]
    clients["client-0"].unmask(unmask)
    with pytest.raises(SecAggError, match="replayed or out of stage"):
        clients["client-0"].unmask(type(unmask)(0, unmask.session, "client-0", ("client-0", "client-1")))


def test_a_malformed_message_is_refused():
    server, clients = start_round()
    _, replies = advertise(server, clients)
    message = replies["client-0"]
    message.tensors["keys"] = message.tensors["keys"][:1]
    with pytest.raises(SecAggError, match="shape"):
        server.receive(message)
    del message.tensors["keys"]
    with pytest.raises(SecAggError, match="lacks"):
        AdvertiseKeys.from_message(message)


def test_every_message_survives_the_codec():
    vectors, weights = inputs(5)
    _, _, transcript = run_secagg_round(vectors, weights, ARGS, seed=12, drop_after_share=["client-4"])
    records = [*transcript.to_server, *transcript.to_clients]
    assert {r.stage for r in records} == {"sa_advertise", "sa_share", "sa_masked", "sa_unmask"}
    for record in records:
        message = record.message
        again = codec.decode(codec.encode(message))
        assert again.metadata == message.metadata
        assert again.kind == message.kind
        assert again.round_idx == message.round_idx
        assert again.tensors.keys() == message.tensors.keys()
        assert all(torch.equal(again.tensors[k], message.tensors[k]) for k in message.tensors)
        assert len(codec.encode(message)) == record.nbytes
    share = next(r.message for r in transcript.to_server if r.stage == SHARE)
    parsed = ShareKeys.from_message(share)
    assert parsed.payload()[0] == share.metadata


def test_a_client_refuses_a_neighbourhood_the_settings_do_not_give():
    server, clients = start_round()
    request = server.requests()["client-0"]
    shrunk = type(request)(
        0, request.session, "client-0", request.clients, request.terms, request.neighbours[:1]
    )
    with pytest.raises(SecAggError, match="client client-0 was given 1 neighbours"):
        clients["client-0"].advertise(shrunk)


def test_a_client_refuses_survivors_below_the_threshold():
    vectors, weights = inputs(4)
    server, clients = start_round()
    for _ in range(3):
        for c, request in server.requests().items():
            clients[c].set_input(vectors[c], weights[c])
            server.receive(
                wire(clients[c].respond(wire(request.to_message("server", c))).to_message(c, "server"))
            )
        server.close_stage()
    unmask = server.requests()["client-0"]
    with pytest.raises(SecAggError, match="below the threshold 3"):
        clients["client-0"].unmask(type(unmask)(0, unmask.session, "client-0", ("client-0", "client-1")))


def test_the_masked_stage_needs_an_input():
    server, clients = start_round(n=2)
    for _ in range(2):
        for c, request in server.requests().items():
            server.receive(
                wire(clients[c].respond(wire(request.to_message("server", c))).to_message(c, "server"))
            )
        server.close_stage()
    request = server.requests()["client-0"]
    with pytest.raises(SecAggError, match="no input to mask"):
        clients["client-0"].respond(wire(request.to_message("server", "client-0")))


def test_a_failed_round_requests_nothing_more():
    server, clients = start_round(n=5)
    _, replies = advertise(server, clients)
    server.receive(replies["client-0"])
    server.receive(replies["client-1"])
    with pytest.raises(SecAggError, match=r"2 of 5 clients left .*below the threshold 3"):
        server.close_stage()
    with pytest.raises(SecAggError, match="has failed"):
        server.requests()


def test_a_client_with_other_settings_refuses_the_round():
    server, _ = start_round()
    other = SecAggClient("client-0", SecAggArgs(sa_bit_width=16), 0)
    with pytest.raises(SecAggError, match="disagree on the round's terms"):
        other.advertise(server.requests()["client-0"])

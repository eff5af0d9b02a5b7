"""Participation policies over the LOCAL transport with injected faults: silent, failing, duplicate,
stale and unknown peers, late joins and rejoins."""

import pytest
import torch

from fedml.core.algorithms import Update
from fedml.core.comm import LocalHub, Message, MessageKind
from fedml.core.round import AllReplies, FirstReplies, Quorum, RemoteBackend, RoundTask
from fedml.core.round.wire import pack_updates
from fedml.errors import RoundIncompleteError, TransportError

PEERS = ["a", "b", "c"]
"""Silos, each hosting one client: peer ``PEERS[i]`` hosts client ``i`` with ``10 * (i + 1)`` samples."""
STATE = {"w": torch.zeros(2)}


class Silos:
    """The server ("0") and one silo per peer, as named endpoints of one LOCAL hub."""

    def __init__(self, peers=PEERS):
        self.hub = LocalHub(len(peers) + 2, names=["0", *peers, "mallory"])
        self.server = self.hub.endpoint(0)

    def say(self, peer, kind, round_idx=-1, metadata=None, tensors=None):
        endpoint = self.hub.endpoint(self.hub.lookup(peer))
        endpoint.send(Message(kind, peer, "0", round_idx, metadata or {}, tensors or {}))

    def join(self, peer):
        client = PEERS.index(peer)
        self.say(peer, MessageKind.INIT, metadata={"clients": [client], "sample_counts": [10 * (client + 1)]})

    def reply(self, peer, round_idx, value=1.0):
        client = PEERS.index(peer)
        update = Update(client, 10.0 * (client + 1), {"w": torch.full((2,), value)}, {"train_loss": 0.5})
        metadata, tensors = pack_updates([update])
        self.say(peer, MessageKind.CLIENT_UPDATE, round_idx, metadata, tensors)

    def requests_to(self, peer):
        endpoint = self.hub.endpoint(self.hub.lookup(peer))
        found = []
        while True:
            try:
                found.append(endpoint.receive(timeout=0))
            except TransportError:
                return found


def backend(silos, policy, min_peers=3):
    remote = RemoteBackend(silos.server, policy, "LOCAL", min_peers=min_peers, join_timeout=2.0)
    remote.open()
    return remote


def task(round_idx, clients, wanted=None):
    return RoundTask(round_idx, STATE, clients, {}, wanted if wanted is not None else len(clients))


def joined(peers=PEERS):
    silos = Silos()
    for peer in peers:
        silos.join(peer)
    return silos


def test_every_peer_receives_its_share_and_sample_counts_come_from_the_peers():
    silos = joined()
    remote = backend(silos, AllReplies(timeout=2.0))
    for peer in PEERS:
        silos.reply(peer, 0)
    updates = remote.train(task(0, [0, 1, 2]))
    assert [(u.client_idx, u.weight) for u in updates] == [(0, 10.0), (1, 20.0), (2, 30.0)]
    for peer in PEERS:
        (request,) = silos.requests_to(peer)
        assert (request.kind, request.metadata["clients"]) == (MessageKind.SYNC_MODEL, [PEERS.index(peer)])


def test_all_replies_fails_naming_the_silent_peer():
    silos = joined()
    remote = backend(silos, AllReplies(timeout=0.2))
    silos.reply("a", 0)
    silos.reply("b", 0)
    with pytest.raises(
        TransportError, match=r"2 of 3 clients replied, 3 needed; no CLIENT_UPDATE from peer\(s\) \['c'\]"
    ):
        remote.train(task(0, [0, 1, 2]))


def test_quorum_goes_on_without_a_silent_peer(caplog):
    caplog.set_level("WARNING", logger="fedml")
    silos = joined()
    remote = backend(silos, Quorum(timeout=0.2, min_replies=2))
    silos.reply("a", 0)
    silos.reply("c", 0)
    updates = remote.train(task(0, [0, 1, 2]))
    assert [u.client_idx for u in updates] == [0, 2]
    assert "train goes on with 2 of 3 clients; no CLIENT_UPDATE from peer(s) ['b']" in caplog.text


def test_quorum_fails_below_its_minimum():
    silos = joined()
    remote = backend(silos, Quorum(timeout=0.2, min_replies=2))
    silos.reply("a", 0)
    with pytest.raises(TransportError, match="round 1: train: 1 of 3 clients replied, 2 needed"):
        remote.train(task(0, [0, 1, 2]))


def test_a_failing_peer_is_dropped_and_the_quorum_decides(caplog):
    caplog.set_level("WARNING", logger="fedml")
    silos = joined()
    remote = backend(silos, Quorum(timeout=2.0, min_replies=2))
    silos.reply("a", 0)
    silos.say("b", MessageKind.ERROR, 0, {"error": "OSError('disk full')"})
    silos.reply("c", 0)
    updates = remote.train(task(0, [0, 1, 2]))
    assert [u.client_idx for u in updates] == [0, 2]
    assert "peer b failed: OSError('disk full')" in caplog.text
    assert remote.clients() == [0, 2]


def test_first_replies_over_selects_and_drops_the_late_report_next_round(caplog):
    caplog.set_level("WARNING", logger="fedml")
    silos = joined()
    policy = FirstReplies(timeout=2.0, over_selection=0.5)
    remote = backend(silos, policy)
    assert remote.selection_size(2) == 3
    for peer in PEERS:
        silos.reply(peer, 0)
    first = remote.train(task(0, [0, 1, 2], wanted=2))
    assert [u.client_idx for u in first] == [0, 1]
    silos.reply("a", 1)
    silos.reply("b", 1)
    second = remote.train(task(1, [0, 1], wanted=2))
    assert [u.client_idx for u in second] == [0, 1]
    assert "Dropped a late or stale message: CLIENT_UPDATE from c to 0 (round 0" in caplog.text


def test_duplicate_stale_and_unknown_replies_are_dropped_with_one_line_each(caplog):
    caplog.set_level("WARNING", logger="fedml")
    silos = joined()
    remote = backend(silos, AllReplies(timeout=2.0))
    silos.reply("a", 4, value=9.0)
    silos.reply("a", 5, value=1.0)
    silos.reply("a", 5, value=7.0)
    silos.say("mallory", MessageKind.CLIENT_UPDATE, 5, *pack_updates([Update(0, 1e6, {"w": torch.ones(2)})]))
    silos.reply("b", 5, value=2.0)
    silos.reply("c", 5, value=3.0)
    updates = remote.train(task(5, [0, 1, 2]))
    assert [float(u.state["w"][0]) for u in updates] == [1.0, 2.0, 3.0]
    messages = [r.getMessage() for r in caplog.records]
    assert sum("late or stale" in m and "(round 4" in m for m in messages) == 1
    assert sum("duplicate reply" in m for m in messages) == 1
    assert sum("peer mallory, which has not joined" in m for m in messages) == 1


def test_a_peer_can_join_late_and_rejoin_after_a_drop(caplog):
    caplog.set_level("INFO", logger="fedml")
    silos = joined(["a"])
    remote = backend(silos, Quorum(timeout=2.0, min_replies=1), min_peers=1)
    assert remote.clients() == [0]
    silos.join("b")
    assert remote.clients() == [0, 1]
    silos.say("b", MessageKind.ERROR, -1, {"error": "restarting"})
    assert remote.clients() == [0]
    silos.join("b")
    assert remote.clients() == [0, 1]
    assert "Peer b rejoined" in caplog.text
    silos.reply("a", 0)
    silos.reply("b", 0)
    assert [u.client_idx for u in remote.train(task(0, [0, 1]))] == [0, 1]


def test_a_peer_that_rejoins_mid_stage_gets_the_request_again_and_its_reply_counts():
    silos = joined()
    remote = backend(silos, Quorum(timeout=0.5, min_replies=3))
    silos.reply("a", 0)
    silos.join("b")
    silos.reply("b", 0)
    silos.reply("c", 0)
    updates = remote.train(task(0, [0, 1, 2]))
    assert [u.client_idx for u in updates] == [0, 1, 2]
    assert [m.kind for m in silos.requests_to("b")] == [MessageKind.SYNC_MODEL, MessageKind.SYNC_MODEL]


def test_a_peer_that_rejoins_and_stays_silent_is_left_out_at_the_deadline():
    silos = joined()
    remote = backend(silos, Quorum(timeout=0.2, min_replies=2))
    silos.reply("a", 0)
    silos.join("b")
    silos.reply("c", 0)
    updates = remote.train(task(0, [0, 1, 2]))
    assert [u.client_idx for u in updates] == [0, 2]
    assert remote.clients() == [0, 1, 2]


def test_too_few_replies_is_a_round_incomplete_error_naming_the_silent_peer():
    silos = joined()
    remote = backend(silos, Quorum(timeout=0.2, min_replies=2))
    silos.reply("a", 0)
    with pytest.raises(RoundIncompleteError, match=r"1 of 3 clients replied, 2 needed"):
        remote.train(task(0, [0, 1, 2]))


def test_with_too_few_peers_online_a_round_waits_for_one_to_join_again():
    silos = joined()
    remote = RemoteBackend(silos.server, Quorum(1.0, 2), "LOCAL", min_peers=3, min_online=2, join_timeout=1.0)
    remote.open()
    silos.say("b", MessageKind.ERROR, -1, {"error": "restarting"})
    silos.say("c", MessageKind.ERROR, -1, {"error": "restarting"})
    silos.join("c")
    assert remote.clients() == [0, 2]
    silos.say("c", MessageKind.ERROR, -1, {"error": "gone"})
    with pytest.raises(TransportError, match=r"1 peer\(s\) online, 2 needed to go on"):
        remote.clients()


def test_open_names_the_peers_that_never_joined():
    silos = joined(["a"])
    remote = RemoteBackend(
        silos.server, AllReplies(1.0), "LOCAL", expected_peers=["a", "b"], join_timeout=0.2
    )
    with pytest.raises(TransportError, match=r"1 peer\(s\) joined within 0.2 s, 2 needed; missing \['b'\]"):
        remote.open()

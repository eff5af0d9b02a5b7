"""FedBuff's server side (``BufferedBackend``) over the in-process hub, with scripted fake devices."""

from __future__ import annotations

import logging
import math
import time

import pytest
import torch

from fedml.core.comm.local import LocalHub
from fedml.core.round import FirstReplies, RoundTask
from fedml.cross_device.buffered import BufferedBackend
from fedml.cross_device.devices import DeviceBackend
from fedml.cross_device.settings import staleness_weight
from fedml.errors import RoundIncompleteError
from tests.cross_device.fakes import FakeDevice, state


def devices(hub, count, options=None):
    options = options or {}
    fakes = [FakeDevice(hub.endpoint(n), n - 1, count, **options.get(n, {})) for n in range(1, count + 1)]
    for fake in fakes:
        fake.start()
    return fakes


def buffered(hub, count, timeout=5.0, **options):
    settings = {"buffer_size": 2, "max_concurrency": count, **options}
    backend = BufferedBackend(
        hub.endpoint(0),
        FirstReplies(timeout, 0.0, settings["buffer_size"]),
        "LOCAL",
        min_peers=count,
        join_timeout=5.0,
        **settings,
    )
    backend.open()
    return backend


def task(round_idx, value, clients=(0, 1, 2)):
    return RoundTask(round_idx, state(value), list(clients), {}, len(clients))


def test_updates_are_rebased_onto_the_current_model_with_their_staleness_weight():
    hub = LocalHub(4)
    fakes = devices(hub, 3, {n: {"gated": True} for n in (1, 2, 3)})
    try:
        backend = buffered(hub, 3)
        for n in (1, 2):
            fakes[n - 1].gate.release()
        first = backend.train(task(0, 0.0))
        # Devices 1 and 2 got version 0 again at once; device 3 still trains version 0.
        for n in (3, 1):
            fakes[n - 1].gate.release()
        second = backend.train(task(1, 10.0))
    finally:
        for fake in fakes:
            fake.stop()

    assert [torch.allclose(u.state["w"], torch.full((2,), 1.0)) for u in first] == [True, True]
    expected = 10.0 + staleness_weight("polynomial", 1) * 1.0
    assert sorted(u.client_idx for u in second) == [0, 2]
    assert all(torch.allclose(u.state["w"], torch.full((2,), expected)) for u in second)
    assert math.isclose(expected, 10.0 + 2**-0.5)
    assert backend.registry.snapshot()["1"]["rounds_served"] == 2


def test_a_duplicated_reply_is_aggregated_once(caplog):
    hub = LocalHub(4)
    fakes = devices(hub, 3, {1: {"duplicate": True}})
    try:
        backend = buffered(hub, 3)
        with caplog.at_level(logging.WARNING, logger="fedml"):
            for round_idx in range(4):
                backend.train(task(round_idx, float(round_idx)))
    finally:
        for fake in fakes:
            fake.stop()

    ids = [d.seq for aggregation in backend.aggregations for d in aggregation]
    assert len(ids) == len(set(ids)) == 8
    assert all(len(aggregation) == 2 for aggregation in backend.aggregations)
    assert "duplicate update" in caplog.text


def test_an_update_older_than_max_staleness_is_dropped_with_a_line(caplog):
    hub = LocalHub(4)
    fakes = devices(hub, 3, {3: {"gated": True}})
    try:
        backend = buffered(hub, 3, max_staleness=1)
        for round_idx in range(3):
            backend.train(task(round_idx, float(round_idx)))
        with caplog.at_level(logging.WARNING, logger="fedml"):
            fakes[2].gate.release()
            for _ in range(50):
                backend.poll(0.1)
                if "of device 3" in caplog.text:
                    break
        backend.train(task(3, 3.0))
    finally:
        for fake in fakes:
            fake.stop()

    assert "Dropped update" in caplog.text
    assert "of device 3: it started 2 aggregations ago, over max_staleness 1" in caplog.text
    assert "3" not in {d.peer for aggregation in backend.aggregations for d in aggregation}


def test_with_a_straggler_async_goes_on_while_sync_waits_for_the_deadline():
    deadline = 1.5
    hub = LocalHub(4)
    fakes = devices(hub, 3, {3: {"silent": True}})
    try:
        sync = DeviceBackend(
            hub.endpoint(0), FirstReplies(deadline, 0.0, 2), "LOCAL", min_peers=3, join_timeout=5.0
        )
        sync.open()
        began = time.monotonic()
        sync.train(task(0, 0.0))
        sync_seconds = time.monotonic() - began
    finally:
        for fake in fakes:
            fake.stop()

    hub = LocalHub(4)
    fakes = devices(hub, 3, {3: {"silent": True}})
    try:
        backend = buffered(hub, 3, timeout=deadline)
        began = time.monotonic()
        for round_idx in range(3):
            backend.train(task(round_idx, float(round_idx)))
        async_seconds = time.monotonic() - began
    finally:
        for fake in fakes:
            fake.stop()

    assert sync_seconds >= deadline
    assert async_seconds < deadline
    assert len(backend.aggregations) == 3
    assert "3" not in {d.peer for aggregation in backend.aggregations for d in aggregation}


def test_too_few_reports_by_the_deadline_fail_the_aggregation():
    hub = LocalHub(3)
    fakes = devices(hub, 2, {1: {"silent": True}, 2: {"silent": True}})
    try:
        backend = buffered(hub, 2, timeout=0.5)
        with pytest.raises(RoundIncompleteError, match=r"0 of 2 reports \(train_args.buffer_size\)"):
            backend.train(task(0, 0.0, clients=(0, 1)))
    finally:
        for fake in fakes:
            fake.stop()

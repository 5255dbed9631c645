"""The blocking wrapper, against the fake agent running on its own thread."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator

import pytest

from dstack_p2p import ConfigMismatch, DStackP2PSync, Leader, RegistrationError
from dstack_p2p.sync import DStackP2P
from fake_agent import CONTRACT, FakeAgent, ThreadedAgent, peer_json


@pytest.fixture
def threaded(sock_dir: str) -> Iterator[ThreadedAgent]:
    t = ThreadedAgent(os.path.join(sock_dir, "api.sock"))
    with t:
        yield t


@pytest.fixture
def agent(threaded: ThreadedAgent) -> FakeAgent:
    return threaded.agent


def test_blocking_calls(agent: FakeAgent) -> None:
    assert DStackP2PSync is DStackP2P
    with DStackP2P(CONTRACT, "wireguard", api=agent.api) as client:
        assert client.register(timeout=5) is True
        assert client.get_peers() == ["10.0.1.2", "10.0.1.3"]
        assert [p.overlay_ip for p in client.peers()] == ["10.0.1.2", "10.0.1.3"]
        assert client.leader().token_id == 2
        assert client.status().version == "0.1.0"
        health = client.set_healthy(False, "redis is down", ttl=3)
        assert not health.healthy and health.app is not None and health.app.reason == "redis is down"
        assert agent.health_posts == [{"healthy": False, "reason": "redis is down", "ttlSecs": 3}]
        assert client.health() == health
        with pytest.raises(ValueError, match="ttl must be"):
            client.set_healthy(True, ttl=0)
    with pytest.raises(RuntimeError, match="closed"):
        client.get_peers()


def test_blocking_errors_are_the_async_ones(agent: FakeAgent) -> None:
    agent.status["node"].update(registered=False, registrationError="no seat: meshctl mint ...")
    with DStackP2P(api=agent.api) as client:
        with pytest.raises(RegistrationError, match="meshctl mint"):
            client.register(timeout=5)
    with DStackP2P("0x" + "00" * 20, api=agent.api) as client:
        with pytest.raises(ConfigMismatch):
            client.get_peers()


def test_blocking_monitor_for_a_duration(threaded: ThreadedAgent) -> None:
    agent = threaded.agent
    calls: list[object] = []

    def on_peers(peers: list[str]) -> None:
        calls.append(peers)
        if len(calls) == 1:
            threaded.call(lambda: agent.set_peers([peer_json(5)]))

    def on_leader(leader: Leader) -> None:
        calls.append(leader.token_id)

    with DStackP2P(api=agent.api) as client:
        start = time.monotonic()
        client.monitor_peers(on_peers, on_leader=on_leader, duration=0.5)
        assert 0.45 < time.monotonic() - start < 3
    assert calls == [["10.0.1.2", "10.0.1.3"], 2, ["10.0.1.5"]]


def test_blocking_monitor_callback_exception_propagates(agent: FakeAgent) -> None:
    def on_peers(peers: list[str]) -> None:
        raise TimeoutError("the app's own")

    with DStackP2P(api=agent.api) as client:
        # A TimeoutError from the callback is not mistaken for the duration ending.
        with pytest.raises(TimeoutError, match="the app's own"):
            client.monitor_peers(on_peers, duration=5)
        with pytest.raises(TimeoutError, match="the app's own"):
            client.monitor_leader(lambda leader: on_peers([]), duration=5)


def test_blocking_client_refuses_to_run_inside_an_event_loop(agent: FakeAgent) -> None:
    client = DStackP2P(api=agent.api)

    async def inside() -> None:
        with pytest.raises(RuntimeError, match="use DStackP2PSDK there"):
            client.get_peers()

    try:
        asyncio.run(inside())
    finally:
        client.close()

"""The async client against a real HTTP server on a unix socket (tests/fake_agent.py)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from dstack_p2p import (
    AgentError,
    AgentUnreachable,
    ConfigMismatch,
    DStackP2PSDK,
    Leader,
    Peer,
    ProtocolError,
    Reconnected,
    RegistrationError,
)
from fake_agent import CONTRACT, FakeAgent, ThreadedAgent, leader_json, peer_json, running, wait_for

NO_SEAT = (
    f"no seat of cluster {CONTRACT} is bound to this instance (ab12cd34). The cluster owner mints one "
    f"bound to it:\n    meshctl mint --contract {CONTRACT} --to 0xHOLDER --instance ab12cd34"
)


async def test_status_peers_leader(agent: FakeAgent) -> None:
    async with DStackP2PSDK(api=agent.api) as sdk:
        status = await sdk.status()
        assert status.node.overlay_ip == "10.0.1.1" and status.chain.lag == 2
        assert await sdk.get_peers() == ["10.0.1.2", "10.0.1.3"]
        peers = await sdk.peers()
        assert [p.token_id for p in peers] == [2, 3] and peers[0].rx_bytes == 123
        leader = await sdk.leader()
        assert leader.token_id == 2 and leader.address == "10.0.1.2" and leader.reachable is True


async def test_get_peers_leaves_out_peers_without_address(agent: FakeAgent) -> None:
    agent.peers = [peer_json(2, address=None), peer_json(3, address="https://gw/3"), peer_json(4)]
    async with DStackP2PSDK(api=agent.api) as sdk:
        assert await sdk.get_peers() == ["https://gw/3", "10.0.1.4"]


async def test_over_loopback_tcp() -> None:
    agent = await FakeAgent().start()
    try:
        async with DStackP2PSDK(CONTRACT, "wireguard", api=agent.api) as sdk:
            assert agent.api.startswith("http://127.0.0.1:")
            assert await sdk.get_peers() == ["10.0.1.2", "10.0.1.3"]
    finally:
        await agent.stop()


# --- register() -------------------------------------------------------------------------------------


async def test_register_true_at_once(agent: FakeAgent) -> None:
    async with DStackP2PSDK(CONTRACT, "wireguard", api=agent.api) as sdk:
        assert await asyncio.wait_for(sdk.register(timeout=5), 5) is True


async def test_register_waits_until_registered(agent: FakeAgent) -> None:
    agent.status["node"]["registered"] = False

    def on_status(n: int) -> None:
        if n >= 3:
            agent.status["node"]["registered"] = True

    agent.on_status = on_status
    async with DStackP2PSDK(CONTRACT, api=agent.api) as sdk:
        assert await asyncio.wait_for(sdk.register(timeout=5, poll=0.05), 5) is True
    assert agent.requests.count("/v1/status") == 3


async def test_register_false_after_timeout(agent: FakeAgent) -> None:
    agent.status["node"]["registered"] = False
    async with DStackP2PSDK(CONTRACT, api=agent.api) as sdk:
        start = time.monotonic()
        assert await asyncio.wait_for(sdk.register(timeout=0.4, poll=0.1), 5) is False
        assert 0.35 < time.monotonic() - start < 2


async def test_register_raises_the_agents_reason_at_once(agent: FakeAgent) -> None:
    agent.status["node"].update(registered=False, tokenId=None, overlayIp=None, registrationError=NO_SEAT)
    async with DStackP2PSDK(CONTRACT, api=agent.api) as sdk:
        start = time.monotonic()
        with pytest.raises(RegistrationError) as info:
            await asyncio.wait_for(sdk.register(timeout=30), 5)
        assert time.monotonic() - start < 2
    assert info.value.reason == NO_SEAT and str(info.value) == NO_SEAT
    assert "meshctl mint" in str(info.value) and info.value.source == "registration"


async def test_register_raises_once_the_error_appears(agent: FakeAgent) -> None:
    agent.status["node"]["registered"] = False

    def on_status(n: int) -> None:
        if n == 2:
            agent.status["node"]["registrationError"] = "no funded sender: fund 0xabc on chain 31337"

    agent.on_status = on_status
    async with DStackP2PSDK(api=agent.api) as sdk:
        with pytest.raises(RegistrationError, match=r"^no funded sender: fund 0xabc"):
            await asyncio.wait_for(sdk.register(timeout=30, poll=0.05), 5)


async def test_register_raises_when_the_rpc_fails(agent: FakeAgent) -> None:
    agent.status["node"]["registered"] = False
    agent.status["chain"]["lastError"] = "error sending request for url (http://rpc/): connection refused"
    async with DStackP2PSDK(api=agent.api) as sdk:
        with pytest.raises(RegistrationError, match=r"cannot read the chain.*connection refused") as info:
            await asyncio.wait_for(sdk.register(timeout=30), 5)
    assert info.value.source == "chain" and info.value.reason.startswith("error sending request")


async def test_register_is_true_even_while_the_rpc_fails(agent: FakeAgent) -> None:
    agent.status["chain"]["lastError"] = "timeout"
    async with DStackP2PSDK(api=agent.api) as sdk:
        assert await asyncio.wait_for(sdk.register(timeout=5), 5) is True


async def test_register_waits_out_an_agent_restart(agent: FakeAgent) -> None:
    agent.status["node"]["registered"] = False

    async def restart_then_register() -> None:
        await wait_for(lambda: agent.requests.count("/v1/status") >= 1)
        await agent.stop()
        await asyncio.sleep(0.3)
        agent.status["node"]["registered"] = True
        await agent.start()

    async with DStackP2PSDK(api=agent.api) as sdk:
        restarting = asyncio.create_task(restart_then_register())
        assert await asyncio.wait_for(sdk.register(timeout=5, poll=0.05), 5) is True
        await restarting


# --- checks and errors ------------------------------------------------------------------------------


async def test_contract_mismatch(agent: FakeAgent) -> None:
    wrong = "0x" + "12" * 20
    async with DStackP2PSDK(wrong, api=agent.api) as sdk:
        for call in (sdk.register, sdk.get_peers, sdk.leader):
            with pytest.raises(ConfigMismatch) as info:
                await asyncio.wait_for(call(), 5)
            message = str(info.value)
            served = agent.status["chain"]["contract"]
            assert served in message and wrong in message
            assert "another cluster" in message and "DSTACK_MESH_CONTRACT" in message
            assert (info.value.field, info.value.expected, info.value.actual) == ("contract", wrong, served)


async def test_contract_compared_case_insensitively_and_checked_once(agent: FakeAgent) -> None:
    # Checksummed, as users give it; the agent serves it in lower case.
    assert agent.status["chain"]["contract"] == CONTRACT.lower() != CONTRACT
    async with DStackP2PSDK(CONTRACT, "wireguard", api=agent.api) as sdk:
        await sdk.get_peers()
        await sdk.leader()
        await sdk.get_peers()
    assert agent.requests == ["/v1/status", "/v1/peers", "/v1/leader", "/v1/peers"]


async def test_no_status_read_without_checks(agent: FakeAgent) -> None:
    async with DStackP2PSDK(api=agent.api) as sdk:
        await sdk.get_peers()
    assert agent.requests == ["/v1/peers"]


async def test_mode_mismatch(agent: FakeAgent) -> None:
    async with DStackP2PSDK(CONTRACT, "tls", api=agent.api) as sdk:
        with pytest.raises(
            ConfigMismatch, match="runs in mode 'wireguard', but this SDK was given mode 'tls'"
        ):
            await sdk.get_peers()


async def test_missing_socket(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "nothing.sock")
    async with DStackP2PSDK(api=path) as sdk:
        for call in (sdk.get_peers, sdk.register, sdk.status):
            with pytest.raises(AgentUnreachable) as info:
                await asyncio.wait_for(call(), 5)
            message = str(info.value)
            assert f"no socket at unix socket {path} (from argument)" in message
            assert "agent running" in message and "mounted" in message and "DSTACK_MESH_API" in message
            assert info.value.address == path


async def test_socket_with_nobody_listening(sock_dir: str) -> None:
    # A bound socket that does not listen: what a crashed agent's leftover file gives.
    path = os.path.join(sock_dir, "stale.sock")
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(path)
        async with DStackP2PSDK(api=path) as sdk:
            with pytest.raises(AgentUnreachable, match="exists but nothing accepts on it"):
                await asyncio.wait_for(sdk.get_peers(), 5)


async def test_refused_tcp(monkeypatch: pytest.MonkeyPatch) -> None:
    # A port just freed: nothing listens there.
    agent = await FakeAgent().start()
    url = agent.api
    await agent.stop()
    monkeypatch.setenv("DSTACK_MESH_API", url)
    async with DStackP2PSDK() as sdk:
        with pytest.raises(AgentUnreachable, match=f"{url} \\(from DSTACK_MESH_API\\): connection refused"):
            await asyncio.wait_for(sdk.get_peers(), 5)


async def test_http_error_carries_the_agents_text(agent: FakeAgent) -> None:
    agent.errors["/v1/leader"] = (404, "no such path /v1/leader: try /v1/status")
    async with DStackP2PSDK(api=agent.api) as sdk:
        with pytest.raises(AgentError) as info:
            await sdk.leader()
    assert info.value.status == 404 and info.value.error == "no such path /v1/leader: try /v1/status"
    assert (
        str(info.value) == "the agent answered 404 to GET /v1/leader: no such path /v1/leader: try /v1/status"
    )


async def test_closed_sdk_refuses(agent: FakeAgent) -> None:
    sdk = DStackP2PSDK(api=agent.api)
    await sdk.get_peers()
    await sdk.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await sdk.get_peers()


# --- monitor_peers ----------------------------------------------------------------------------------


class Recorder:
    """Collects what the callbacks get, with an event to wait on."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.changed = asyncio.Event()

    def peers(self, value: Any) -> None:
        self.calls.append(("peers", value))
        self.changed.set()

    async def leader(self, value: Leader) -> None:
        await asyncio.sleep(0)
        self.calls.append(("leader", value.token_id))
        self.changed.set()

    def reconnect(self, info: Reconnected) -> None:
        self.calls.append(("reconnected", info))
        self.changed.set()

    async def wait(self, count: int) -> None:
        while len(self.calls) < count:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 5)


async def test_monitor_delivers_the_current_list_then_changes(agent: FakeAgent) -> None:
    rec = Recorder()
    async with DStackP2PSDK(CONTRACT, api=agent.api) as sdk:
        async with running(sdk.monitor_peers(rec.peers, on_leader=rec.leader)):
            await rec.wait(2)
            assert rec.calls == [("peers", ["10.0.1.2", "10.0.1.3"]), ("leader", 2)]
            agent.set_peers([peer_json(2), peer_json(3), peer_json(4)])
            await rec.wait(3)
            assert rec.calls[2] == ("peers", ["10.0.1.2", "10.0.1.3", "10.0.1.4"])
            # A change the address list does not show (traffic counters) is not a change of it,
            agent.set_peers([peer_json(2, rxBytes=999), peer_json(3), peer_json(4)])
            # nor is a leader event that only moves the confirmation's age;
            agent.set_leader(leader_json(2, ageMs=1500))
            # whether this node hears the leader is one, and so is another leader.
            agent.set_leader(leader_json(2, reachable=False))
            agent.set_leader(leader_json(4))
            await rec.wait(5)
            assert rec.calls[3:] == [("leader", 2), ("leader", 4)]
            agent.set_peers([peer_json(4)])
            await rec.wait(6)
            assert rec.calls[5:] == [("peers", ["10.0.1.4"])]
    assert agent.requests[0] == "/v1/status"


@pytest.mark.parametrize("detailed", [False, True], ids=["addresses", "detailed"])
async def test_monitor_address_list_is_not_repeated_when_only_health_changes(
    agent: FakeAgent, detailed: bool
) -> None:
    """Issue 41: a peer's health changing leaves the address list as it was, so the address-list callback
    is not called with the same list again; a detailed callback is, as the peer did change."""
    rec = Recorder()
    async with DStackP2PSDK(api=agent.api) as sdk:
        async with running(sdk.monitor_peers(rec.peers, detailed=detailed)):  # type: ignore[call-overload]
            await rec.wait(1)
            # Same addresses, one peer now unhealthy; then an address changes. Events arrive in order, so
            # once the third is delivered the second has been handled.
            agent.set_peers([peer_json(2), peer_json(3, healthy=False)])
            agent.set_peers([peer_json(2, address="https://gw/2"), peer_json(3, healthy=False)])
            if detailed:
                await rec.wait(3)
                assert [[p.healthy for p in value] for _, value in rec.calls] == [
                    [True, True],
                    [True, False],
                    [True, False],
                ]
                assert [p.address for p in rec.calls[2][1]] == ["https://gw/2", "10.0.1.3"]
            else:
                await rec.wait(2)
                assert rec.calls == [
                    ("peers", ["10.0.1.2", "10.0.1.3"]),
                    ("peers", ["https://gw/2", "10.0.1.3"]),
                ]
            await asyncio.sleep(0.1)
            assert len(rec.calls) == (3 if detailed else 2)


@pytest.mark.parametrize("graceful", [True, False], ids=["stream-ended", "connection-cut"])
async def test_monitor_reconnects_after_a_restart_without_a_spurious_call(
    agent: FakeAgent, graceful: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dstack_p2p")
    rec = Recorder()
    async with DStackP2PSDK(api=agent.api) as sdk:
        async with running(sdk.monitor_peers(rec.peers, on_leader=rec.leader, on_reconnect=rec.reconnect)):
            await rec.wait(2)
            await agent.restart(down=0.3, graceful=graceful)
            await rec.wait(3)
            kind, info = rec.calls[2]
            assert kind == "reconnected" and isinstance(info, Reconnected)
            assert info.attempts >= 1 and info.down_secs >= 0.25
            # Same peers and leader after the restart: no call. Then a real change is delivered once.
            await wait_for(lambda: agent.watchers == 1)
            await asyncio.sleep(0.1)
            assert len(rec.calls) == 3
            agent.set_peers([peer_json(3)])
            await rec.wait(4)
            assert rec.calls[3:] == [("peers", ["10.0.1.3"])]
            assert agent.events_connections == 2
    messages = [r.getMessage() for r in caplog.records if r.name == "dstack_p2p"]
    assert any(m.startswith("lost the event stream of the dstack-mesh agent at") for m in messages)
    assert any(m.startswith("reconnected to the dstack-mesh agent") for m in messages)


async def test_monitor_delivers_a_change_made_while_disconnected(agent: FakeAgent) -> None:
    rec = Recorder()
    async with DStackP2PSDK(api=agent.api) as sdk:
        async with running(sdk.monitor_peers(rec.peers, detailed=True)):
            await rec.wait(1)
            first = rec.calls[0][1]
            assert all(isinstance(p, Peer) for p in first) and [p.token_id for p in first] == [2, 3]
            await agent.stop()
            agent.peers = [peer_json(2, address="https://gw/2"), peer_json(3)]
            await asyncio.sleep(0.2)
            await agent.start()
            await rec.wait(2)
            assert [p.address for p in rec.calls[1][1]] == ["https://gw/2", "10.0.1.3"]
            assert rec.calls[1][1][0].connection == "tls-gateway"


async def test_monitor_ignores_unknown_events_and_comments_and_split_chunks(agent: FakeAgent) -> None:
    agent.split_events = True
    rec = Recorder()
    async with DStackP2PSDK(api=agent.api) as sdk:
        async with running(sdk.monitor_peers(rec.peers)):
            await rec.wait(1)
            agent.push(b': keep-alive\n\nevent: metrics\r\ndata: {"x": 1}\r\n\r\n')
            agent.push(b"event: peers\r\ndata: [\r\ndata: ]\r\n\r\n")
            await rec.wait(2)
            assert rec.calls == [("peers", ["10.0.1.2", "10.0.1.3"]), ("peers", [])]


async def test_monitor_async_callback_and_monitor_leader(agent: FakeAgent) -> None:
    got: list[int | None] = []

    async def on_leader(leader: Leader) -> None:
        await asyncio.sleep(0.01)
        got.append(leader.token_id)

    async with DStackP2PSDK(api=agent.api) as sdk:
        async with running(sdk.monitor_leader(on_leader)):
            await asyncio.wait_for(wait_for(lambda: got == [2]), 5)
            # Peer changes do not reach a leader-only monitor.
            agent.set_peers([])
            agent.set_leader(leader_json(None))
            await asyncio.wait_for(wait_for(lambda: len(got) == 2), 5)
            assert got == [2, None]


async def test_callback_exception_propagates_and_closes_the_stream(agent: FakeAgent) -> None:
    class Boom(Exception):
        pass

    calls: list[list[str]] = []

    def callback(peers: list[str]) -> None:
        calls.append(peers)
        if len(calls) == 2:
            raise Boom("a bug in the app")

    async with DStackP2PSDK(api=agent.api) as sdk:
        task = asyncio.create_task(sdk.monitor_peers(callback))
        await asyncio.wait_for(wait_for(lambda: len(calls) == 1), 5)
        agent.set_peers([peer_json(9)])
        with pytest.raises(Boom, match="a bug in the app"):
            await asyncio.wait_for(task, 5)
    await asyncio.wait_for(wait_for(lambda: agent.watchers == 0), 5)


async def test_sdk_error_raised_by_a_callback_is_not_taken_for_a_lost_stream(agent: FakeAgent) -> None:
    async def callback(peers: list[str]) -> None:
        raise AgentUnreachable("from the app's own call", address="elsewhere")

    async with DStackP2PSDK(api=agent.api) as sdk:
        with pytest.raises(AgentUnreachable, match="from the app's own call"):
            await asyncio.wait_for(sdk.monitor_peers(callback), 5)
    assert agent.events_connections == 1


async def test_monitor_fails_at_once_when_the_agent_is_not_there(sock_dir: str) -> None:
    async with DStackP2PSDK(api=os.path.join(sock_dir, "none.sock")) as sdk:
        with pytest.raises(AgentUnreachable, match="no socket at"):
            await asyncio.wait_for(sdk.monitor_peers(print), 5)


async def test_monitor_raises_on_an_agent_without_events(agent: FakeAgent) -> None:
    agent.errors["/v1/events"] = (404, "no such path /v1/events")
    async with DStackP2PSDK(api=agent.api) as sdk:
        with pytest.raises(AgentError, match="404 to GET /v1/events: no such path /v1/events"):
            await asyncio.wait_for(sdk.monitor_peers(print), 5)


async def test_monitor_rechecks_the_contract_after_a_restart(agent: FakeAgent) -> None:
    rec = Recorder()
    async with DStackP2PSDK(CONTRACT, api=agent.api) as sdk:
        task = asyncio.create_task(sdk.monitor_peers(rec.peers))
        await rec.wait(1)
        await agent.stop()
        agent.status["chain"]["contract"] = "0x" + "99" * 20
        await agent.start()
        with pytest.raises(ConfigMismatch, match="another cluster"):
            await asyncio.wait_for(task, 5)


# The first loop's pooled connection is left to the garbage collector, which warns about it.
@pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
def test_one_sdk_across_event_loops(sock_dir: str) -> None:
    with ThreadedAgent(os.path.join(sock_dir, "api.sock")) as agent:
        sdk = DStackP2PSDK(api=agent.api)
        assert asyncio.run(sdk.get_peers()) == ["10.0.1.2", "10.0.1.3"]
        assert asyncio.run(sdk.get_peers()) == ["10.0.1.2", "10.0.1.3"]
        asyncio.run(sdk.aclose())
    gc.collect()


# --- the leader's lease and term ---------------------------------------------------------------------


@contextlib.asynccontextmanager
async def leader_calls(agent: FakeAgent) -> AsyncIterator[list[Leader]]:
    """Watches the leader of a node that leads as seat 1 in term 3: yields what a leader monitor is called
    with (its first call already in), as it goes on being called while the ``async with`` body runs."""
    agent.leader = leader_json(1, is_self=True, term=3)
    got: list[Leader] = []
    async with DStackP2PSDK(api=agent.api) as sdk:
        async with running(sdk.monitor_leader(got.append)):
            await asyncio.wait_for(wait_for(lambda: len(got) == 1), 5)
            yield got


async def test_on_leader_hears_the_lease_end_and_every_new_term_but_not_the_clock(agent: FakeAgent) -> None:
    async with leader_calls(agent) as got:
        assert got[0].is_self and got[0].term == 3 and got[0].lease_ms == 2100

        def then(change: dict[str, Any], count: int) -> Any:
            agent.set_leader({**agent.leader, **change})
            return asyncio.wait_for(wait_for(lambda: len(got) == count), 5)

        # The age and what is left of the lease move all the time: no call.
        agent.set_leader({**agent.leader, "ageMs": 900, "leaseMs": 1600})
        agent.set_leader({**agent.leader, "ageMs": 1300, "leaseMs": 1200})
        # The lease runs out: the same seat, no longer this node's to act on.
        reason = "the chain view is 2.6 s old, older than the 2.5 s lease"
        await then({"isSelf": False, "leaseMs": None, "state": "stale", "reason": reason}, 2)
        assert not got[1].is_self and got[1].state == "stale" and got[1].reason == reason
        assert got[1].token_id == 1 and got[1].term == 3
        # Confirmed again, as a follower would be, but still not leading: the state alone is a change.
        await then({"state": "current", "ageMs": 20}, 3)
        # Leading again under the same term.
        await then({"isSelf": True, "leaseMs": 2400, "reason": None}, 4)
        assert got[3].is_self and got[3].term == 3
        # Unhealthy: it steps down.
        await then({"isSelf": False, "healthy": False, "leaseMs": None, "reason": "unhealthy: redis"}, 5)
        assert not got[4].healthy
        # A new term with the same seat (cleared, then elected again).
        await then({"term": 5, "isSelf": True, "healthy": True, "reason": None, "leaseMs": 2000}, 6)
        assert got[5].term == 5
        await asyncio.sleep(0.1)
        assert len(got) == 6


async def test_on_leader_after_a_reconnection_only_for_what_changed(agent: FakeAgent) -> None:
    async with leader_calls(agent) as got:
        # Back with only the clock moved: nothing to report.
        await agent.stop()
        agent.leader = {**agent.leader, "ageMs": 5, "leaseMs": 2490}
        await agent.start()
        await asyncio.wait_for(wait_for(lambda: agent.events_connections == 2), 5)
        await asyncio.sleep(0.1)
        assert len(got) == 1
        # Back with the lease lost meanwhile: one call.
        await agent.stop()
        agent.leader = {**agent.leader, "isSelf": False, "leaseMs": None, "state": "unknown"}
        await agent.start()
        await asyncio.wait_for(wait_for(lambda: len(got) == 2), 5)
        assert not got[1].is_self and got[1].state == "unknown"


# --- health ------------------------------------------------------------------------------------------


async def test_set_healthy_and_health_round_trip(agent: FakeAgent) -> None:
    async with DStackP2PSDK(CONTRACT, api=agent.api) as sdk:
        before = await sdk.health()
        assert before.healthy and before.reasons == [] and before.app is None and before.check is None

        h = await sdk.set_healthy(False, "postgres is down", ttl=10)
        assert agent.health_posts == [{"healthy": False, "reason": "postgres is down", "ttlSecs": 10}]
        assert not h.healthy and h.reasons == ["the application reports itself unhealthy: postgres is down"]
        assert h.app is not None and h.app.reason == "postgres is down" and h.app.expires_in_ms == 10000
        assert await sdk.health() == h

        # No reason and no ttl: neither is sent (the agent refuses fields it does not know, not absent ones).
        h = await sdk.set_healthy(True)
        assert agent.health_posts[-1] == {"healthy": True}
        assert h.healthy and h.app is not None and h.app.expires_in_ms is None

        agent.check = {"kind": "command", "healthy": False, "reason": "exit status 1"}
        h = await sdk.health()
        assert not h.healthy and h.check is not None and h.check.kind == "command"
        assert h.reasons == ["the agent's check fails: exit status 1"]
    assert agent.requests[0] == "/v1/status"
    assert agent.requests.count("POST /v1/health") == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((None,), "healthy must be True or False, not None"),
        ((1,), "healthy must be True or False, not 1"),
        ((False, "x" * 201), "reason has 201 characters; the agent takes at most 200"),
        ((False, "db down\nTraceback ..."), "contains control characters"),
        ((False, b"db down"), "reason must be a string or None"),
        ((True, None, 0), "ttl must be a number of seconds above 0, not 0"),
        ((True, None, -1.5), "not -1.5"),
        ((True, None, float("nan")), "not nan"),
        ((True, None, float("inf")), "not inf"),
        ((True, None, True), "not True"),
        ((True, None, "10"), "not '10'"),
    ],
)
async def test_set_healthy_refuses_what_the_agent_would_before_sending(
    agent: FakeAgent, args: tuple[Any, ...], message: str
) -> None:
    async with DStackP2PSDK(api=agent.api) as sdk:
        with pytest.raises(ValueError, match=message):
            await sdk.set_healthy(*args)
        assert (await sdk.set_healthy(False, "x" * 200, 0.5)).app is not None
    assert agent.requests == ["POST /v1/health"]


async def test_set_healthy_surfaces_the_agents_refusal(agent: FakeAgent) -> None:
    text = '"ttlSecs" is 100000: give a number of seconds above 0 and at most 86400'
    agent.errors["/v1/health"] = (400, text)
    async with DStackP2PSDK(api=agent.api) as sdk:
        with pytest.raises(AgentError) as info:
            await sdk.set_healthy(True, ttl=100000)
        assert info.value.status == 400 and info.value.error == text
        assert info.value.method == "POST" and info.value.path == "/v1/health"
        assert str(info.value) == f"the agent answered 400 to POST /v1/health: {text}"

        agent.errors["/v1/health"] = (403, "POST /v1/health is taken on the API socket and on loopback only")
        with pytest.raises(AgentError, match="403 to POST /v1/health: POST /v1/health is taken on the API"):
            await sdk.set_healthy(False)
        del agent.errors["/v1/health"]

        # An agent from before health reports.
        agent.read_only = True
        with pytest.raises(AgentError, match="405 to POST /v1/health: the agent API is read-only"):
            await sdk.set_healthy(True)
        with pytest.raises(AgentError, match="404 to GET /v1/health"):
            await sdk.health()


async def test_health_protocol_errors_and_an_absent_agent(agent: FakeAgent, sock_dir: str) -> None:
    async with DStackP2PSDK(api=agent.api) as sdk:
        agent.bodies["/v1/health"] = {"healthy": "yes", "reasons": []}
        for call in (sdk.health, lambda: sdk.set_healthy(True)):
            with pytest.raises(ProtocolError, match="the agent's health has 'healthy' = 'yes'"):
                await call()
    async with DStackP2PSDK(api=os.path.join(sock_dir, "none.sock")) as sdk:
        with pytest.raises(AgentUnreachable, match="no socket at"):
            await sdk.set_healthy(False, "down")

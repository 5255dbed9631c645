"""follow_leader: the decisions (a pure function, case by case and over random histories), then the loop
against the stand-in agent: events, restarts, renewing the lease and standing down when it runs out."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from dstack_p2p import (
    AgentUnreachable,
    Backoff,
    DStackP2PSDK,
    FollowAction,
    FollowState,
    Leader,
    ProtocolError,
    follow_leader,
)
from dstack_p2p.follow import DEMOTE, FOLLOW, LEASE_LAPSED, PROMOTE, decide
from fake_agent import FakeAgent, leader_json

ME = 1


def view(token: int | None, term: int | None = 1, **fields: Any) -> Leader:
    """What node ME's agent says: seat ``token`` leads under ``term``, this node under its lease if it is
    ME; ``fields`` overrides any field."""
    if token is None:
        base = Leader(None, None, None, None, False, None, term=term, state="current")
    else:
        ip = f"10.0.1.{token}"
        base = Leader(
            token,
            f"inst{token}",
            ip,
            ip,
            token == ME,
            None if token == ME else True,
            term=term,
            state="current",
            lease_ms=2000 if token == ME else None,
        )
    return dataclasses.replace(base, **fields)


def run(
    views: list[Leader], state: FollowState | None = None
) -> tuple[FollowState, list[tuple[str, int | None]]]:
    """Decides ``views`` in order: the state after, and every action as (kind, term)."""
    state = state or FollowState()
    made: list[tuple[str, int | None]] = []
    for v in views:
        state, actions = decide(state, v)
        made.extend((a.kind, a.term) for a in actions)
    return state, made


# --- the decisions, case by case ----------------------------------------------------------------------------


def test_the_first_view_always_calls_back() -> None:
    assert run([view(ME, 3)])[1] == [(PROMOTE, 3)]
    # Not leading: demoted, so that a service left leading by an earlier run stands down.
    assert run([view(None, 0)])[1] == [(DEMOTE, 0)]
    assert run([view(2, 4)])[1] == [(DEMOTE, 4), (FOLLOW, 4)]
    assert run([view(2, 4, state="unknown")])[1] == [(DEMOTE, 4)]


def test_repeated_views_call_nothing() -> None:
    for v in (view(ME, 3), view(None, 0), view(2, 4), view(2, 4, state="stale")):
        state, _ = run([v])
        assert decide(state, v) == (state, ())
        # Nor does what moves all the time without anything to act on.
        assert decide(state, dataclasses.replace(v, age_ms=9, lease_ms=v.lease_ms and 10))[1] == ()


def test_a_leader_is_demoted_once_whatever_ends_its_leadership() -> None:
    endings = {
        "another seat leads": view(2, 4),
        "the lease ended": view(ME, 3, is_self=False, lease_ms=None, reason="the lease ran out"),
        "no leader": view(None, 4),
        "the seat elected is refused": view(None, 4, refused_seat=2, reason="signature"),
        "its view went stale": view(ME, 3, is_self=False, state="stale", lease_ms=None, reason="stale"),
        "the helper's lease ran out": view(ME, 3, is_self=False, lease_ms=None, reason=LEASE_LAPSED),
    }
    for what, ending in endings.items():
        state, made = run([view(ME, 3), ending])
        assert made[:2] == [(PROMOTE, 3), (DEMOTE, 3)], what
        assert state.leading is None, what
        # And not again while it does not lead.
        assert run([ending, view(None, 5), view(2, 4, state="stale")], state)[1] == [], what


def test_the_demoted_view_is_what_ended_it() -> None:
    state, _ = run([view(ME, 3)])
    _, actions = decide(state, view(2, 4))
    assert actions == (FollowAction(DEMOTE, view(2, 4), 3), FollowAction(FOLLOW, view(2, 4), 4))


def test_re_elected_under_a_newer_term_is_demoted_then_promoted() -> None:
    assert run([view(ME, 3), view(ME, 5)])[1] == [(PROMOTE, 3), (DEMOTE, 3), (PROMOTE, 5)]


def test_back_under_the_same_term_after_a_lapse_is_promoted_again() -> None:
    lapsed = view(ME, 3, is_self=False, lease_ms=None, reason="the lease ran out")
    assert run([view(ME, 3), lapsed, view(ME, 3)])[1] == [(PROMOTE, 3), (DEMOTE, 3), (PROMOTE, 3)]


def test_no_promotion_under_an_older_term_or_without_one() -> None:
    state, made = run([view(2, 5), view(ME, 4)])
    assert made == [(DEMOTE, 5), (FOLLOW, 5)]
    assert (
        state.refused
        == "the agent says this node leads under term 4, older than term 5 already seen: not promoting"
    )
    # Still following seat 2: nothing to undo.
    assert state.following is not None and state.following[0] == 2
    state, made = run([view(ME, None)], state)
    assert made == [] and state.refused is not None and "gives no term" in state.refused
    state, made = run([view(ME, 6)], state)
    assert made == [(PROMOTE, 6)] and state.refused is None


def test_a_leader_told_it_leads_under_an_older_term_stands_down() -> None:
    state, _ = run([view(ME, 3)])
    state, actions = decide(state, view(ME, 2))
    assert [(a.kind, a.term) for a in actions] == [(DEMOTE, 3)]
    # The view passed on says it does not lead, and why.
    assert not actions[0].leader.is_self and actions[0].leader.reason == state.refused


def test_following_follows_only_a_current_view_of_another_seat_under_no_older_term() -> None:
    state, _ = run([view(2, 4)])
    assert run([view(2, 4, state="stale")], state)[1] == []
    assert run([view(3, 5)], state)[1] == [(FOLLOW, 5)]
    assert run([view(3, 3)], state)[1] == [], "an older term than one seen"
    # The leader moved (its gateway URL while its tunnel is down): followed there.
    assert run([view(2, 4, address="https://gw/2")], state)[1] == [(FOLLOW, 4)]
    # Back to current after a stale spell: the same leader, nothing to do.
    assert run([view(2, 4, state="stale"), view(2, 4)], state)[1] == []


def test_this_nodes_own_seat_is_never_followed() -> None:
    # Named, current, not leading: the agent says why...
    state, made = run([view(ME, 3, is_self=False, lease_ms=None, reason="unhealthy: redis")])
    assert made == [(DEMOTE, 3)] and state.following is None
    # ...and without a reason, the seat tells, once known.
    state, made = run([view(ME, 3, is_self=False, lease_ms=None)], FollowState(seat=ME))
    assert made == [(DEMOTE, 3)] and state.following is None


def test_following_after_leading_follows_again() -> None:
    assert run([view(2, 4), view(ME, 5), view(2, 6)])[1] == [
        (DEMOTE, 4),
        (FOLLOW, 4),
        (PROMOTE, 5),
        (DEMOTE, 5),
        (FOLLOW, 6),
    ]


# --- the decisions over random histories --------------------------------------------------------------------


def random_view(rng: random.Random) -> Leader:
    token = rng.choice([None, ME, 2, 3])
    term = rng.choice([None, 1, 2, 3, 4, 5, 6]) if rng.random() < 0.1 else rng.randint(1, 6)
    fields: dict[str, Any] = {}
    if token == ME and rng.random() < 0.3:
        fields.update(is_self=False, lease_ms=None, reason=rng.choice(["the lease ran out", LEASE_LAPSED]))
    if rng.random() < 0.2:
        fields["state"] = rng.choice(["stale", "unknown"])
    if token is not None and token != ME and rng.random() < 0.2:
        fields["address"] = f"https://gw/{token}"
    if token is None and rng.random() < 0.3:
        fields.update(refused_seat=2, reason="signature")
    return view(token, term, **fields)


def test_the_rules_hold_over_random_histories() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        state = FollowState(seat=rng.choice([None, ME]))
        views = [random_view(rng) for _ in range(rng.randint(1, 12))]
        made: list[FollowAction] = []
        seen: int | None = None
        for i, v in enumerate(views):
            before = state
            state, actions = decide(state, v)
            # Nothing for a view that changes nothing.
            assert decide(state, v) == (state, ()), (views, i)
            if i == 0:
                assert actions and actions[0].kind in (PROMOTE, DEMOTE), actions
            for a in actions:
                if a.kind == PROMOTE:
                    # Only when the agent says so, under its term, no older than any seen before.
                    assert v.is_self and a.term == v.term and a.term is not None
                    assert seen is None or a.term >= seen, (views, i)
                if a.kind == FOLLOW:
                    assert not a.leader.is_self and a.leader.state == "current" and a.leader.token_id != ME
            made.extend(actions)
            if v.term is not None:
                seen = v.term if seen is None else max(seen, v.term)
            assert state.term == seen
            # Leading exactly while the latest view says so, and is taken.
            assert (state.leading is not None) == (v.is_self and state.refused is None)
            if before.leading is not None and state.leading != before.leading:
                assert actions[0] == FollowAction(DEMOTE, actions[0].leader, before.leading)
        terms = [a.term for a in made if a.term is not None]
        assert terms == sorted(terms), f"a callback for an older term than one acted on: {made}"
        # A promotion is followed by exactly one demotion before the next promotion.
        kinds = [a.kind for a in made if a.kind != FOLLOW]
        for j, kind in enumerate(kinds):
            if kind == PROMOTE:
                rest = kinds[j + 1 :]
                upto = rest.index(PROMOTE) if PROMOTE in rest else len(rest)
                demotions = rest[:upto].count(DEMOTE)
                assert demotions == 1 or (demotions == 0 and upto == len(rest)), made


# --- the loop, against the stand-in agent -------------------------------------------------------------------


class Calls:
    """What the callbacks got, as (kind, seat, term, is_self)."""

    def __init__(self) -> None:
        self.got: list[tuple[str, int | None, int | None, bool]] = []
        self.leaders: list[Leader] = []

    def make(self, kind: str) -> Callable[[Leader], object]:
        async def record(leader: Leader) -> None:
            self.got.append((kind, leader.token_id, leader.term, leader.is_self))
            self.leaders.append(leader)

        return record

    async def wait(self, count: int, timeout: float = 5.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.got) < count:
            assert loop.time() < deadline, f"expected {count} calls within {timeout} s, got {self.got}"
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def following(calls: Calls, **kw: Any) -> AsyncIterator[asyncio.Task[Any]]:
    task = asyncio.create_task(
        follow_leader(calls.make(PROMOTE), calls.make(DEMOTE), on_follow=calls.make(FOLLOW), **kw)
    )
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_follows_promotes_and_demotes_with_the_agent(agent: FakeAgent) -> None:
    calls = Calls()
    async with DStackP2PSDK(api=agent.api) as sdk, following(calls, sdk=sdk):
        await calls.wait(2)
        assert calls.got == [(DEMOTE, 2, 2, False), (FOLLOW, 2, 2, False)]
        agent.set_leader(leader_json(1, is_self=True, term=3))
        await calls.wait(3)
        assert calls.got[2] == (PROMOTE, 1, 3, True)
        # Its lease ends while the contract still names it.
        agent.set_leader(leader_json(1, term=3, reason="the lease ran out"))
        await calls.wait(4)
        assert calls.got[3] == (DEMOTE, 1, 3, False)
        agent.set_leader(leader_json(3, term=4))
        await calls.wait(5)
        assert calls.got[4] == (FOLLOW, 3, 4, False)
        await asyncio.sleep(0.2)
        assert len(calls.got) == 5


async def test_an_agent_restart_with_nothing_changed_calls_nothing(agent: FakeAgent) -> None:
    calls = Calls()
    async with following(calls, api=agent.api):
        await calls.wait(2)
        await agent.restart(down=0.3)
        await asyncio.sleep(0.8)
        assert agent.events_connections == 2
        assert len(calls.got) == 2
        agent.set_leader(leader_json(3, term=3))
        await calls.wait(3)
        assert calls.got[2] == (FOLLOW, 3, 3, False)


async def test_a_leader_renews_its_lease_and_stands_down_when_the_agent_is_gone(
    agent: FakeAgent, caplog: pytest.LogCaptureFixture
) -> None:
    agent.leader = leader_json(1, is_self=True, term=2, leaseMs=600)
    calls = Calls()
    async with DStackP2PSDK(api=agent.api) as sdk, following(calls, sdk=sdk):
        await calls.wait(1)
        assert calls.got == [(PROMOTE, 1, 2, True)]
        # Renewed well within each lease, though no event comes.
        await asyncio.sleep(1.5)
        assert agent.requests.count("/v1/leader") >= 4
        assert len(calls.got) == 1
        # The agent stops: no renewal, no event. Standing down as the lease runs out.
        await agent.stop()
        await calls.wait(2, timeout=2.0)
        assert calls.got[1] == (DEMOTE, 1, 2, False)
        assert calls.leaders[1].reason == LEASE_LAPSED
        # Back, leading under the same term: its stream repeats nothing, so the helper asks.
        await agent.start()
        await calls.wait(3, timeout=5.0)
        assert calls.got[2] == (PROMOTE, 1, 2, True)
    messages = [r.getMessage() for r in caplog.records if r.name == "dstack_p2p"]
    assert any("lease ran out with no renewal" in m for m in messages), messages


async def test_a_renewal_answered_after_an_event_is_not_taken() -> None:
    class Agent:
        """The event says the lease ended; the renewal asked before it answers after it that it holds."""

        def __init__(self) -> None:
            self.hear: Callable[[Leader], object] | None = None
            self.asked = asyncio.Event()
            self.answer = asyncio.Event()

        async def monitor_leader(self, callback: Callable[[Leader], object]) -> None:
            self.hear = callback
            callback(view(ME, 2, lease_ms=300))
            await asyncio.Event().wait()

        async def leader(self) -> Leader:
            self.asked.set()
            await self.answer.wait()
            return view(ME, 2, lease_ms=5000)

        async def status(self) -> Any:
            raise ConnectionRefusedError("not asked here")

    fake = Agent()
    calls = Calls()
    async with following(calls, sdk=fake):
        await asyncio.wait_for(fake.asked.wait(), 2)
        assert fake.hear is not None
        fake.hear(view(ME, 2, is_self=False, lease_ms=None, reason="unhealthy: x"))
        fake.answer.set()
        await calls.wait(2)
        await asyncio.sleep(0.3)
    assert calls.got == [(PROMOTE, 1, 2, True), (DEMOTE, 1, 2, False)]


async def test_an_agent_not_up_yet_is_waited_for(sock_dir: str, caplog: pytest.LogCaptureFixture) -> None:
    agent = FakeAgent(f"{sock_dir}/api.sock")
    calls = Calls()
    async with following(calls, api=agent.api):
        await asyncio.sleep(0.3)
        assert calls.got == []
        await agent.start()
        try:
            await calls.wait(2, timeout=5.0)
        finally:
            await agent.stop()
    assert calls.got == [(DEMOTE, 2, 2, False), (FOLLOW, 2, 2, False)]
    assert any(m.startswith("following the leader at") and "retrying" in m for m in caplog.messages)


class RecordingBackoff(Backoff):
    """A Backoff without jitter that keeps every delay it gave and when it was reset."""

    def __init__(self, start: float, cap: float) -> None:
        super().__init__(start, cap, rand=lambda: 1.0)
        self.given: list[float | str] = []

    def next(self) -> float:
        delay = super().next()
        self.given.append(delay)
        return delay

    def reset(self) -> None:
        super().reset()
        self.given.append("reset")


async def test_retries_back_off_and_start_again_once_the_agent_was_followed() -> None:
    class Agent:
        """Cannot be followed twice; then followed (one view) until the stream fails; then never again."""

        def __init__(self) -> None:
            self.attempts: list[float] = []

        async def monitor_leader(self, callback: Callable[[Leader], object]) -> None:
            self.attempts.append(asyncio.get_running_loop().time())
            if len(self.attempts) == 3:
                callback(view(2, 2))
                raise ProtocolError("the agent's 'leader' event is not JSON")
            raise AgentUnreachable("connection refused")

        async def leader(self) -> Leader:
            raise AgentUnreachable("connection refused")

        async def status(self) -> Any:
            raise AgentUnreachable("connection refused")

    fake = Agent()
    backoff = RecordingBackoff(0.02, 0.08)
    calls = Calls()
    async with following(calls, sdk=fake, backoff=backoff):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while len(fake.attempts) < 7:
            assert loop.time() < deadline, fake.attempts
            await asyncio.sleep(0.01)
    # Doubling while the agent cannot be followed, from the start again after it was: 2 failures, then the
    # stream that carried a view, then 4 failures up to the cap.
    assert backoff.given[:7] == [0.02, 0.04, "reset", 0.02, 0.04, 0.08, 0.08]
    gaps = [b - a for a, b in zip(fake.attempts, fake.attempts[1:])]
    # The loop waited those delays (a timer fires no earlier than asked, give or take the clock's grain).
    for gap, delay in zip(gaps, [0.02, 0.04, 0.02, 0.04, 0.08, 0.08]):
        assert gap >= delay - 0.005, (gaps, backoff.given)
    assert calls.got == [(DEMOTE, 2, 2, False), (FOLLOW, 2, 2, False)]


async def test_what_a_callback_raises_comes_out(agent: FakeAgent) -> None:
    def broken(leader: Leader) -> None:
        raise RuntimeError("the service's own bug")

    with pytest.raises(RuntimeError, match="the service's own bug"):
        await asyncio.wait_for(follow_leader(lambda leader: None, broken, api=agent.api), 5)


async def test_sdk_and_api_are_not_both_given(agent: FakeAgent) -> None:
    async with DStackP2PSDK(api=agent.api) as sdk:
        with pytest.raises(ValueError, match="not both"):
            await follow_leader(print, print, sdk=sdk, api=agent.api)


async def test_a_refused_promotion_is_said_once(agent: FakeAgent, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="dstack_p2p")
    agent.leader = leader_json(2, term=5)
    calls = Calls()
    async with following(calls, api=agent.api):
        await calls.wait(2)
        agent.set_leader(leader_json(1, is_self=True, term=4))
        await agent.restart(down=0.2)
        await asyncio.sleep(0.8)
        assert len(calls.got) == 2
    said = [m for m in caplog.messages if "older than term 5 already seen: not promoting" in m]
    assert len(said) == 1, caplog.messages

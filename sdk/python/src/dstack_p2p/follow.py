"""Following the leader as a role: promote this node when it leads a term, demote it when it stops, follow
another node while that one leads; fenced by the term.

:func:`decide` is the whole decision, a pure function of what was decided before and one view of the leader.
:func:`follow_leader` is the I/O around it: the agent's events, renewing the lease while this node leads
(events come only on changes), and standing down when the lease runs out unrenewed (the agent gone, or its
stream lost), since nothing else would say so.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

from .backoff import Backoff
from .client import DStackP2PSDK
from .models import LEADER_CURRENT, Leader
from .monitor import call

log = logging.getLogger("dstack_p2p")

#: :class:`FollowAction` kinds.
PROMOTE = "promote"
DEMOTE = "demote"
FOLLOW = "follow"

#: Seconds between two reads of the leader after a lease ran out unrenewed: the agent's event stream repeats
#: nothing it said before, so a lease that holds again is only heard of by asking.
POLL = 1.0
#: Seconds before following the agent again when it cannot be followed at all, doubling up to RETRY_MAX (the
#: default :class:`Backoff` of :func:`follow_leader`).
RETRY_START = 1.0
RETRY_MAX = 10.0
#: The longest one request to the agent (a renewal, this node's seat) is waited for.
ASK_TIMEOUT = 5.0

#: The ``reason`` of the view ``on_demote`` gets when this node's lease ran out with no renewal.
LEASE_LAPSED = "no word from the agent renewed this node's lease before it ran out"


@dataclass(frozen=True)
class FollowState:
    """What :func:`decide` has decided so far; start from ``FollowState()``."""

    #: Whether a view was decided yet: the first one always calls back, so that a service left leading by
    #: an earlier run stands down.
    started: bool = False
    #: The term this node was promoted under and not demoted since; ``None`` while it does not lead.
    leading: int | None = None
    #: The leader last followed (:func:`follow_key`); kept while no leader can be acted on.
    following: tuple[object, ...] | None = None
    #: The newest term any view carried: nothing is done under an older one.
    term: int | None = None
    #: This node's seat, when known: that seat named leader without ``is_self`` is never followed.
    seat: int | None = None
    #: Why the latest view's ``is_self`` was not taken as leading (no term, or an older term than seen).
    refused: str | None = None


@dataclass(frozen=True)
class FollowAction:
    """One callback to make: ``kind`` (:data:`PROMOTE`, :data:`DEMOTE` or :data:`FOLLOW`) with ``leader``.

    ``term`` is the term it acts for: promoted under, of the leadership a demotion ends (the newest known
    for the first demotion, when this node was not leading), of the leader followed. It never goes back.
    """

    kind: str
    leader: Leader
    term: int | None


def follow_key(leader: Leader) -> tuple[object, ...]:
    """What makes following another leader a change: the seat, its term and where it is reached."""
    return (leader.token_id, leader.term, leader.overlay_ip, leader.address)


def decide(state: FollowState, leader: Leader) -> tuple[FollowState, tuple[FollowAction, ...]]:
    """The callbacks one view of the leader calls for, in order, and the state after them.

    * This node leads (``is_self``) under a term no older than any seen: PROMOTE, once per term; a
      promotion under a newer term while leading is DEMOTE then PROMOTE.
    * Another seat leads, confirmed (``state`` current), under a term no older than any seen: DEMOTE if
      this node was leading, then FOLLOW unless it is the leader already followed.
    * Anything else (no leader, a refused seat, this node's seat named but not leading, a view that is not
      current, an older term): DEMOTE if this node was leading; otherwise nothing, and the leader followed
      stays followed.

    The first view always makes a DEMOTE unless it promotes. ``is_self`` without a term, or under a term
    older than one seen, is not leading: the view passed on has ``is_self`` false and ``reason`` saying
    why, which ``refused`` of the new state holds too.
    """
    seen = state.term
    term = leader.term
    newest = term if seen is None or (term is not None and term > seen) else seen
    older = term is not None and seen is not None and term < seen
    refused: str | None = None
    if leader.is_self:
        if term is None:
            refused = (
                "the agent says this node leads but gives no term (an agent older than this SDK?): a "
                "promotion without a term cannot be fenced"
            )
        elif older:
            refused = (
                f"the agent says this node leads under term {term}, older than term {seen} already seen: "
                f"not promoting"
            )
        if refused is not None:
            leader = dataclasses.replace(leader, is_self=False, lease_ms=None, reason=refused)
    new = dataclasses.replace(state, started=True, term=newest, refused=refused)
    actions: list[FollowAction] = []

    if leader.is_self:
        assert term is not None
        if state.leading == term:
            return new, ()
        if state.leading is not None:
            actions.append(FollowAction(DEMOTE, leader, state.leading))
        actions.append(FollowAction(PROMOTE, leader, term))
        return dataclasses.replace(new, leading=term, following=None), tuple(actions)

    if state.leading is not None or not state.started:
        actions.append(FollowAction(DEMOTE, leader, state.leading if state.leading is not None else newest))
    following = state.following
    if (
        leader.token_id is not None
        and leader.token_id != state.seat
        # The agent gives a reason exactly when this node is the seat named but does not lead.
        and leader.reason is None
        and leader.state == LEADER_CURRENT
        and not older
    ):
        key = follow_key(leader)
        if key != state.following:
            actions.append(FollowAction(FOLLOW, leader, term))
        following = key
    return dataclasses.replace(new, leading=None, following=following), tuple(actions)


def why_not_leading(leader: Leader) -> str:
    """Why this node does not lead, in one sentence for a log, from the view ``on_demote`` got."""
    if leader.token_id is None:
        if leader.refused_seat is not None:
            return (
                f"this node refuses seat {leader.refused_seat}, elected leader "
                f"({leader.reason or 'no reason given'})"
            )
        return "the cluster has no leader"
    if leader.reason is not None:
        # The agent's reason, or this module's: a term not to promote under, a lease not renewed.
        return f"this node is the seat named leader but does not lead ({leader.reason})"
    if leader.state != LEADER_CURRENT:
        return f"node {leader.token_id} leads, but this node's view of it is {leader.state}"
    return f"node {leader.token_id} leads under term {leader.term}"


class LeaderSource(Protocol):
    """What :func:`follow_leader` uses of the SDK (a :class:`DStackP2PSDK` is one)."""

    def monitor_leader(self, callback: Callable[[Leader], object]) -> Awaitable[Any]: ...
    def leader(self) -> Awaitable[Leader]: ...
    def status(self) -> Awaitable[Any]: ...


async def follow_leader(
    on_promote: Callable[[Leader], object],
    on_demote: Callable[[Leader], object],
    *,
    on_follow: Callable[[Leader], object] | None = None,
    sdk: LeaderSource | None = None,
    api: str | os.PathLike[str] | None = None,
    backoff: Backoff | None = None,
) -> NoReturn:
    """Follows the leader as a role until cancelled: ``on_promote(leader)`` when this node becomes the leader
    of a term (``leader.term`` is the term to fence its writes with), ``on_demote(leader)`` when it stops
    (another node leads, its lease ended, no leader, its seat refused), ``on_follow(leader)`` when another
    node leads, confirmed, and is to be followed at ``leader.address`` (again when it moves).

    Fenced by the term: nothing is done under a term older than one seen; a promotion in term T is followed
    by exactly one demotion before any promotion in a later term; a view that changes nothing calls
    nothing. The first view always calls back (``on_demote`` unless it promotes), so that a service left
    leading by an earlier run stands down. :func:`decide` has the rules.

    While this node leads it renews the lease by reading the leader again at a third of what is left, and
    demotes it when the lease runs out with no renewal (the agent stopped, or cannot answer); ``on_demote``
    then gets the last view with ``is_self`` false and ``reason`` :data:`LEASE_LAPSED`. An agent that
    restarts is followed again without a call if nothing changed. A planned change (the leader's agent
    stopped with SIGTERM, or asked to hand off) comes as one change of term: ``on_demote`` on the old leader
    with ``leader.handing_off_to`` naming the successor (a clean switchover: stop taking writes and let the
    replicas catch up), then ``on_promote`` on the successor once the hand-off's block is in, with
    ``leader.term_reason`` ``"handoff"``. Callbacks may be plain or coroutine
    functions and are awaited one at a time, in order: keep them short (hand long work to a task). What
    they raise propagates out of this function.

    ``sdk`` is the SDK to use (its ``monitor_leader``, ``leader`` and ``status``); without it one is made
    for ``api`` (as :class:`DStackP2PSDK` finds it) and closed on the way out. ``backoff`` spaces the attempts
    to follow the agent while it cannot be followed at all (not up yet, a reply it could not read);
    ``Backoff(RETRY_START, RETRY_MAX)`` unless given. Once following, the SDK reconnects by itself.
    """
    if sdk is not None and api is not None:
        raise ValueError("give sdk or api, not both: api is where a new SDK would look for the agent")
    own = DStackP2PSDK(api=api) if sdk is None else None
    source = own if own is not None else sdk
    assert source is not None
    try:
        retry = backoff if backoff is not None else Backoff(RETRY_START, RETRY_MAX)
        await _Following(source, on_promote, on_demote, on_follow, retry).run()
    finally:
        if own is not None:
            await own.aclose()


class _Following:
    """The loop around :func:`decide`: one task takes the views in order and makes the calls; another
    follows the agent's events into it."""

    def __init__(
        self,
        sdk: LeaderSource,
        on_promote: Callable[[Leader], object],
        on_demote: Callable[[Leader], object],
        on_follow: Callable[[Leader], object] | None,
        backoff: Backoff,
    ) -> None:
        self.sdk = sdk
        self.backoff = backoff
        self.callbacks = {PROMOTE: on_promote, DEMOTE: on_demote, FOLLOW: on_follow}
        self.state = FollowState()
        #: The agent's latest word, as it said it.
        self.view: Leader | None = None
        #: Until when (loop time) this node's lease holds, by the last view that renewed it.
        self.lease_until: float | None = None
        # A lease ran out unrenewed, and no word from the agent came since: ask it until one does.
        self._lapsed = False
        # Renewals fail since the last warning about it: said once, not at every retry.
        self._failing = False
        # Every view, in order: skipping one could skip a newer term, and promote under an older one.
        self._inputs: deque[tuple[Leader, float]] = deque()
        self._wake = asyncio.Event()
        self._heard = 0
        endpoint = getattr(sdk, "endpoint", None)
        self._where = endpoint.describe() if endpoint is not None else repr(sdk)

    def _hear(self, leader: Leader) -> None:
        self._heard += 1
        self._inputs.append((leader, asyncio.get_running_loop().time()))
        self._wake.set()

    async def run(self) -> NoReturn:
        loop = asyncio.get_running_loop()
        watch = asyncio.create_task(self._watch())
        try:
            while True:
                self._wake.clear()
                while self._inputs:
                    await self._take(*self._inputs.popleft())
                wait = self._wait(loop.time())
                waiter = asyncio.ensure_future(self._wake.wait())
                try:
                    # asyncio.wait, not wait_for: before Python 3.12 wait_for can swallow a cancellation that
                    # comes as the wait ends.
                    done, _ = await asyncio.wait({waiter}, timeout=wait)
                finally:
                    waiter.cancel()
                if not done:
                    await self._due()
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)

    async def _watch(self) -> NoReturn:
        """The agent's events into the queue. The SDK reconnects by itself once connected; this retries
        what it does not (the agent not up yet, a reply it could not read)."""
        while True:
            heard = self._heard
            failure: Exception | None = None
            try:
                await self.sdk.monitor_leader(self._hear)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                failure = e
            if self._heard != heard:
                # It was followed for a while: a new failure, not the same one still going on.
                self.backoff.reset()
            delay = self.backoff.next()
            if failure is not None:
                log.warning(
                    "following the leader at %s failed (%s); retrying in %.1f s", self._where, failure, delay
                )
            await asyncio.sleep(delay)

    def _wait(self, now: float) -> float | None:
        if self.state.leading is not None and self.lease_until is not None:
            left = self.lease_until - now
            # A third of what is left, so that two answers can be lost before it ends.
            return 0.0 if left <= 0 else max(left / 3, min(left, 0.05))
        return POLL if self._lapsed else None

    async def _due(self) -> None:
        loop = asyncio.get_running_loop()
        if not self._lease_over(loop.time()):
            await self._renew()
        if self._lease_over(loop.time()):
            await self._lapse()

    def _lease_over(self, now: float) -> bool:
        return self.state.leading is not None and self.lease_until is not None and now >= self.lease_until

    async def _take(self, leader: Leader, heard_at: float) -> None:
        self.view = leader
        self._lapsed = False
        if (
            self.state.seat is None
            and leader.token_id is not None
            and not leader.is_self
            and leader.reason is None
        ):
            await self._learn_seat()
        await self._decide(leader)
        lease_ms = leader.lease_ms
        holds = self.state.leading is not None and leader.is_self and lease_ms is not None
        self.lease_until = heard_at + lease_ms / 1000 if holds and lease_ms is not None else None

    async def _lapse(self) -> None:
        assert self.view is not None
        log.warning(
            "this node's lease ran out with no renewal from the agent at %s: standing down as leader",
            self._where,
        )
        self.lease_until = None
        self._lapsed = True
        await self._decide(dataclasses.replace(self.view, is_self=False, lease_ms=None, reason=LEASE_LAPSED))

    async def _decide(self, leader: Leader) -> None:
        refused = self.state.refused
        self.state, actions = decide(self.state, leader)
        if self.state.refused is not None and self.state.refused != refused:
            log.warning("%s", self.state.refused)
        for action in actions:
            callback = self.callbacks[action.kind]
            log.debug("%s (term %s): %s", action.kind, action.term, action.leader)
            if callback is not None:
                await call(callback, action.leader)

    async def _renew(self) -> None:
        """Reads the leader again; an event heard meanwhile wins, and cuts the wait short."""
        loop = asyncio.get_running_loop()
        # The lease counts from before the question: the answer is at least that old.
        asked_at, heard = loop.time(), self._heard
        leading = self.state.leading is not None and self.lease_until is not None
        left = self.lease_until - asked_at if leading and self.lease_until is not None else ASK_TIMEOUT
        answer = asyncio.ensure_future(self.sdk.leader())
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            done, _ = await asyncio.wait(
                {answer, woken},
                timeout=min(max(left, 0.05), ASK_TIMEOUT),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            answer.cancel()
            woken.cancel()
        if answer in done and not answer.cancelled():
            error = answer.exception()
            if error is None:
                self._failing = False
                if self._heard == heard:
                    await self._take(answer.result(), asked_at)
                return
            why = str(error) or type(error).__name__
        elif done:
            return
        else:
            why = "no answer in time"
        if leading and not self._failing:
            self._failing = True
            log.warning(
                "could not renew this node's lease with the agent at %s (%s); it holds for what is left of "
                "it, %.1f s",
                self._where,
                why,
                max(left, 0.0),
            )
        else:
            log.debug("could not read the leader from the agent at %s: %s", self._where, why)

    async def _learn_seat(self) -> None:
        try:
            status = await _within(ASK_TIMEOUT, self.sdk.status())
            seat = status.node.token_id
        except Exception as e:
            log.debug("could not read this node's seat from the agent at %s: %s", self._where, e)
            return
        if isinstance(seat, int):
            self.state = dataclasses.replace(self.state, seat=seat)


async def _within(seconds: float, aw: Awaitable[Any]) -> Any:
    """`aw`, or TimeoutError after `seconds`. Not asyncio.wait_for: before Python 3.12 it can swallow a
    cancellation that comes as `aw` completes, and a follower that is cancelled must stop."""
    task = asyncio.ensure_future(aw)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    finally:
        task.cancel()
    if not done:
        raise TimeoutError(f"no answer within {seconds:g} s")
    return task.result()

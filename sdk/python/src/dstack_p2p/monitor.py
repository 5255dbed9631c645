"""Following the agent's event stream: deliver the current peers and leader, then their changes, and come
back after the agent restarts without telling the caller about changes that did not happen."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from typing import Any, NoReturn

from .backoff import Backoff
from .errors import AgentError, AgentUnreachable, ProtocolError
from .events import ServerSentEvent
from .models import Leader, Peer, Reconnected, addresses, peers_from_json

#: The SDK's logger: a WARNING when the event stream is lost, an INFO when it is back.
log = logging.getLogger("dstack_p2p")

Callback = Callable[[Any], object]
EventStream = Callable[[], AbstractAsyncContextManager[AsyncIterator[ServerSentEvent]]]

_NOTHING: Any = object()


async def call(callback: Callback, value: object) -> None:
    """Calls a sync or async callback; what it raises is the caller's to see."""
    result = callback(value)
    if inspect.isawaitable(result):
        await result


def leader_key(leader: Leader) -> tuple[object, ...]:
    """What makes a leader event a change for ``on_leader``: everything an application acts on.

    ``is_self``, ``state``, ``healthy`` and ``reason`` are in it so that a leader hears at once that its
    lease ended, even though the seat named leader is the same; ``age_ms`` and ``lease_ms`` are not, since
    they move all the time without anything to act on.
    """
    return (
        leader.token_id,
        leader.refused_seat,
        leader.address,
        leader.reachable,
        leader.is_self,
        leader.term,
        leader.state,
        leader.healthy,
        leader.reason,
    )


def _data(event: ServerSentEvent) -> object:
    try:
        return json.loads(event.data)
    except ValueError:
        raise ProtocolError(f"the agent's {event.event!r} event is not JSON: {event.data[:80]!r}") from None


async def follow(
    open_stream: EventStream,
    *,
    address: str,
    on_peers: Callback | None,
    on_leader: Callback | None,
    detailed: bool,
    on_reconnect: Callback | None,
    recheck: Callable[[], Awaitable[None]] | None = None,
    backoff: Backoff | None = None,
) -> NoReturn:
    """Follows ``GET /v1/events`` until cancelled; see :meth:`DStackP2PSDK.monitor_peers`.

    The first connection failing raises (a wrong address should not look like a quiet cluster); once
    connected, a lost stream is retried for ever. Only the SDK's own I/O is caught: whatever a callback
    raises propagates, even an SDK error from a call the callback made.
    """
    backoff = backoff or Backoff()
    loop = asyncio.get_running_loop()
    last_peers: Any = _NOTHING
    last_leader: Any = _NOTHING
    connected_once = False
    lost_at: float | None = None
    reason = ""
    lost_reason = ""
    attempts = 0

    while True:
        attempts += 1
        async with AsyncExitStack() as stack:
            try:
                events = await stack.enter_async_context(open_stream())
                if lost_at is not None and recheck is not None:
                    # The agent may have come back with other settings.
                    await recheck()
            except (AgentUnreachable, AgentError) as e:
                if not connected_once or (isinstance(e, AgentError) and e.status < 500):
                    raise
                reason = str(e)
            else:
                if lost_at is not None:
                    reconnected = Reconnected(
                        attempts=attempts, down_secs=loop.time() - lost_at, reason=lost_reason
                    )
                    log.info(
                        "reconnected to the dstack-mesh agent at %s after %d attempt(s), %.1f s down",
                        address,
                        reconnected.attempts,
                        reconnected.down_secs,
                    )
                    lost_at = None
                    if on_reconnect is not None:
                        await call(on_reconnect, reconnected)
                connected_once = True
                attempts = 0
                backoff.reset()
                while True:
                    try:
                        event = await anext(events)
                    except StopAsyncIteration:
                        reason = "the agent ended the event stream (it stopped or restarted)"
                        break
                    except AgentUnreachable as e:
                        reason = str(e)
                        break
                    # Outside the try: a callback's exception is not a lost stream.
                    if event.event == "peers" and on_peers is not None:
                        peers = peers_from_json(_data(event))
                        value: list[Peer] | list[str] = peers if detailed else addresses(peers)
                        # Detailed: any change of a peer (Peer.change_key). Address list: only a change
                        # of the list itself, so a health or path change never repeats the same list.
                        key: Any = (
                            tuple(p.change_key() for p in peers) if detailed else tuple(addresses(peers))
                        )
                        if last_peers is _NOTHING or key != last_peers:
                            last_peers = key
                            await call(on_peers, value)
                    elif event.event == "leader" and on_leader is not None:
                        leader = Leader.from_json(_data(event))
                        key = leader_key(leader)
                        if last_leader is _NOTHING or key != last_leader:
                            last_leader = key
                            await call(on_leader, leader)
        if lost_at is None:
            lost_at = loop.time()
            lost_reason = reason
            log.warning(
                "lost the event stream of the dstack-mesh agent at %s: %s; reconnecting", address, reason
            )
        delay = backoff.next()
        log.debug("reconnecting to %s in %.2f s (attempt %d failed: %s)", address, delay, attempts, reason)
        await asyncio.sleep(delay)

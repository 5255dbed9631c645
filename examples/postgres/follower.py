"""The PostgreSQL recipe's worker: what `dstack_p2p.follow_leader` says (promoted, demoted, follow a seat)
turned into one step at a time on this node's server, as `decisions.decide` chooses it."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from dstack_p2p import Backoff, why_not_leading

from decisions import (BASEBACKUP, DESTRUCTIVE, INITDB, NOTHING, PRIMARY, PROMOTE, REPLICA, REPOINT, START_PRIMARY,
                       START_REPLICA, STOP, STOP_FOR_REWIND, WAIT, Action, Addr, Follow, Idle, Intent, Lead, Local,
                       PeerState, Position, decide, needs_peers)
from server import NotYet, PgError, Refused, within

log = logging.getLogger("follow-leader")

# What the helper said last.
LEAD, FOLLOW, IDLE = "lead", "follow", "idle"


class PostgresFollower:
    """Applies what `dstack_p2p.follow_leader` says to PostgreSQL: `on_promote`, `on_demote` and `on_follow` are
    its callbacks (they only note the intent), `run` the worker that takes one step after another towards it.

    The helper decides who leads: it promotes under a term no older than any seen, demotes when the lease
    ends (renewing it while this node leads, and standing down when the agent stops answering), and names
    the seat to follow once this node's view of it is current. `members` lists the members as (token,
    address of their PostgreSQL); `whoami` reads this node's seat, which names its replication connection and
    leaves it out of the members it asks.
    """

    def __init__(self, pg: Any, leader_addr: Callable[[Any], Addr], password: str, *,
                 members: Callable[[], Awaitable[list[tuple[int, Addr] | tuple[int, Addr, bool]]]] | None = None,
                 whoami: Callable[[], Awaitable[int | None]] | None = None,
                 check_interval: float = 2.0, rejoin_timeout: float = 30.0, sync_standbys: int = 1,
                 bootstrap_term: int = 1, backoff_max: float = 10.0, first_word: float = 2.0) -> None:
        self.pg = pg
        self.leader_addr = leader_addr
        self.password = password
        self.members = members
        self.whoami = whoami
        self.check_interval = check_interval
        self.rejoin_timeout = rejoin_timeout
        self.sync_standbys = sync_standbys
        self.bootstrap_term = bootstrap_term
        self.backoff_max = backoff_max
        self.first_word = first_word
        self.node_token: int | None = None
        #: The last action taken (not WAIT or NOTHING), and the last decision.
        self.last_action: Action | None = None
        self.last_decision: Action | None = None
        self.serving = False  # the primary, as far as the worker knows
        self._roles_ok = False  # the replication role was ensured since this node last became the primary
        # What the helper said last (LEAD, FOLLOW or IDLE), the view it said it with, and why this node does not
        # lead: before it says anything, a primary left running from before is stopped all the same.
        self._told = IDLE
        self._leader: Any = None
        self._why = "the agent has not said who leads yet"
        self._wake = asyncio.Event()
        self._said: str | None = None
        self._needs_rewind = False
        # Since when the replica points where it does without streaming or getting further.
        self._tracked: tuple[Addr | None, Position | None] = (None, None)
        self._since = 0.0

    # -- what the helper says --

    def on_promote(self, leader: Any) -> None:
        self._tell(LEAD, leader, "")

    def on_demote(self, leader: Any) -> None:
        self._tell(IDLE, leader, why_not_leading(leader))

    def on_follow(self, leader: Any) -> None:
        self._tell(FOLLOW, leader, "")

    def _tell(self, told: str, leader: Any, why: str) -> None:
        self._told, self._leader, self._why = told, leader, why
        self._wake.set()

    def intent(self) -> Intent:
        """What to do as of the helper's last word. Raises NotYet for a leader the agent names no address
        for (the worker retries)."""
        if self._told == LEAD:
            return Lead(self._leader.term)
        if self._told == FOLLOW:
            return Follow(self._leader.token_id, self.leader_addr(self._leader), self._leader.term)
        return Idle(self._why)

    # -- one step --

    def _track(self, local: Local, now: float) -> Local:
        """Marks a replica stuck when it has pointed at the same server for --rejoin-timeout without
        streaming from it or getting further."""
        upstream, best = self._tracked
        if (not local.running or local.data != REPLICA or local.upstream != upstream or local.streaming
                or (local.position is not None and (best is None or local.position > best))):
            self._tracked = (local.upstream, local.position)
            self._since = now
        stuck = (local.running and local.data == REPLICA and local.upstream is not None
                 and now - self._since > self.rejoin_timeout)
        return replace(local, stuck=stuck, needs_rewind=self._needs_rewind)

    async def _gather(self) -> tuple[list[PeerState] | None, int]:
        if self.members is None:
            return [], 1
        try:
            members = await self.members()
        except Exception as e:
            log.warning("cannot list the cluster's members from the agent: %s", e)
            return None, 1
        others = [m for m in members if m[0] != self.node_token]
        # A member being drained (its agent stopping: a hand-off) is not asked: its server stops, and once its
        # agent is gone what is sent to it is dropped, so asking waits out the connect timeout. It still
        # counts: the answers needed are as many as before, so the writes only it might hold are not passed
        # over.
        asked = [(m[0], m[1]) for m in others if not (len(m) > 2 and m[2])]
        peers = await asyncio.gather(*(self.pg.peer(a, t) for t, a in asked))
        return list(peers), len(others) + 1

    async def step(self) -> Action:
        loop = asyncio.get_running_loop()
        intent = self.intent()
        if not isinstance(intent, Idle):
            await self._learn_seat()
        local = self._track(await self.pg.observe(), loop.time())
        self.serving = local.running and local.data == PRIMARY
        kw: dict[str, Any] = {"sync_standbys": self.sync_standbys, "bootstrap_term": self.bootstrap_term}
        if isinstance(intent, Follow) and not self.serving:
            kw["leader"] = await self.pg.peer(intent.addr, intent.token)
        elif needs_peers(intent, local):
            kw["peers"], kw["members"] = await self._gather()
        action = decide(intent, local, **kw)
        self.last_decision = action
        await self._execute(action, intent, local)
        return action

    async def _execute(self, action: Action, intent: Intent, local: Local) -> None:
        kind, addr, pg = action.kind, action.addr, self.pg
        if kind in (NOTHING, WAIT):
            if kind == NOTHING and self.serving and not self._roles_ok:
                await pg.ensure_roles(self.password)
                self._roles_ok = True
            if action.why != self._said:
                (log.info if kind == WAIT else log.debug)("PostgreSQL at %s: %s", pg.where, action.why)
                self._said = action.why
            return
        self._said = None
        self.last_action = action
        term = intent.term if isinstance(intent, Lead) else None
        where = f"{addr[0]}:{addr[1]}" if addr else "nowhere"
        if kind in (STOP, STOP_FOR_REWIND):
            await pg.stop()
            self.serving = False
            self._needs_rewind = kind == STOP_FOR_REWIND
            log.warning("%s: stopped PostgreSQL at %s", action.why, pg.where)
        elif kind == START_PRIMARY or kind == INITDB:
            if not await self._still_leads(term):
                return
            if kind == INITDB:
                await pg.initdb()
            pg.install(PRIMARY, None, term)
            await pg.start()
            self.serving, self._roles_ok = True, False
            await pg.ensure_roles(self.password)
            self._roles_ok = True
            log.info("node %s (this node) leads under term %s (%s): PostgreSQL at %s is the primary%s",
                     self.node_token, term, action.why, pg.where, ", a new database" if kind == INITDB else "")
        elif kind == START_REPLICA:
            pg.install(REPLICA, addr, None)
            await pg.start()
            log.info("%s: started PostgreSQL at %s as a replica streaming from %s", action.why, pg.where, where)
        elif kind == REPOINT:
            pg.install(REPLICA, addr, None)
            await pg.reload()
            log.info("%s: PostgreSQL at %s now streams from %s", action.why, pg.where, where)
        elif kind == PROMOTE:
            if not await self._still_leads(term):
                return
            await pg.promote(term, local.upstream)
            self.serving, self._roles_ok = True, False
            await pg.ensure_roles(self.password)
            self._roles_ok = True
            log.info("node %s (this node) leads under term %s: promoted PostgreSQL at %s (%s)",
                     self.node_token, term, pg.where, action.why)
        elif kind in DESTRUCTIVE:
            assert addr is not None
            copied = kind == BASEBACKUP
            if not copied:
                try:
                    await pg.rewind(addr)
                except (Refused, NotYet):
                    raise
                except PgError as e:
                    log.warning("%s, but %s: copying it afresh with pg_basebackup instead", action.why, e)
                    copied = True
            if copied:
                await pg.basebackup(addr)
            self._needs_rewind = False
            pg.install(REPLICA, addr, None)
            await pg.start()
            log.info("%s: %s PostgreSQL at %s from %s; it streams from there", action.why,
                     "copied" if copied else "rewound", pg.where, where)

    async def _still_leads(self, term: int | None) -> bool:
        """Checked right before the server turns writable: the helper may have demoted this node meanwhile (an
        event, or a lease that ran out while the other nodes were asked how far they got)."""
        if term is not None and self.intent() == Lead(term):
            return True
        log.warning("not making PostgreSQL at %s writable: this node no longer leads under term %s",
                    self.pg.where, term)
        return False

    async def _learn_seat(self) -> None:
        if self.node_token is not None or self.whoami is None:
            return
        try:
            self.node_token = await self.whoami()
        except Exception as e:
            log.debug("could not read this node's seat from the agent: %s", e)

    async def _sleep(self, seconds: float) -> None:
        # A new word from the helper cuts any wait short, a retry's backoff included.
        try:
            await within(max(seconds, 0.0), self._wake.wait())
        except TimeoutError:
            pass
        self._wake.clear()

    async def run(self) -> None:
        if self._leader is None:
            # A moment for the helper's first word, so that a primary left running from before (this sidecar
            # restarted) is not stopped needlessly.
            await self._sleep(self.first_word)
        backoff = Backoff(0.5, self.backoff_max)
        while True:
            try:
                action = await self.step()
            except Refused as e:
                log.error("%s", e)
                await self._sleep(self.backoff_max)
                continue
            except (PgError, OSError) as e:
                delay = backoff.next()
                log.warning("PostgreSQL at %s: %s; retrying in %.1f s", self.pg.where, e, delay)
                await self._sleep(delay)
                continue
            backoff.reset()
            if action.kind == NOTHING:
                wait = self.check_interval
            elif action.kind == WAIT:
                wait = 0.5
            else:
                wait = 0.05
            await self._sleep(wait)

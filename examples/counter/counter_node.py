"""The counter's node: its state and HTTP handlers, following the SDK's view of the peers and the leader,
leading (syncing from a majority, then replicating each increment) and following (promising ballots and
taking replicates)."""
from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector, web
from dstack_p2p import Backoff

from ballots import Ballot, ballot_of, majority, mesh_term
from http_json import int_field, json_response, peer_json, read_json, unavailable

log = logging.getLogger("counter")

# (token id, overlay IP or None) -> base URL of that node's counter, e.g. "http://10.0.1.2:8080".
PeerUrl = Callable[[int, "str | None"], str]

# Health reports: one every HEALTH_INTERVAL seconds, each holding for HEALTH_TTL, so that a counter that
# crashed or hangs turns its node unhealthy within HEALTH_TTL, and one late report does not.
HEALTH_INTERVAL = 2.0
HEALTH_TTL = 3 * HEALTH_INTERVAL

# Set on an increment a follower forwards, so that two nodes that disagree about who leads do not
# bounce the request between them.
FORWARDED_HEADER = "X-Counter-Forwarded-By"


class CounterNode:
    """The counter's state and HTTP handlers, independent of where the SDK and the peers live.

    `sdk` needs status(), peers(), leader(), monitor_peers(cb, on_leader=..., detailed=True) and, with
    `report_health`, set_healthy() as in dstack_p2p; `peer_url` maps a node to the base URL of its
    counter, so tests can put the peers on loopback ports.
    """

    def __init__(self, sdk: Any, peer_url: PeerUrl, *, peer_timeout: float = 2.0,
                 report_health: bool = False, health_interval: float = HEALTH_INTERVAL) -> None:
        self.sdk = sdk
        self.peer_url = peer_url
        self.peer_timeout = peer_timeout
        # A follower's forward covers the leader's own worst case: waiting for its sync, for the
        # lock, and for one round of replicates, each bounded by the peer timeout.
        self.forward_timeout = 3 * peer_timeout + 1.0

        self.token: int | None = None
        self.overlay_ip: str | None = None
        self.count = 0
        self.promised: Ballot = (0, 0, 0)
        self.peers: list[Any] | None = None  # None until the SDK's first answer
        self.leader: Any | None = None
        self.report_health = report_health
        self.health_interval = health_interval

        # The newest fencing term this node's own agent has reported: writes of an older one are refused.
        self.mesh_term = 0
        self._ballot: Ballot | None = None  # the ballot this node leads under, once synced
        self._lead_term: int | None = None  # the mesh term the lead task runs under
        self._serving = False
        self._ready = asyncio.Event()
        self._deposed = asyncio.Event()
        self._seen: Ballot = (0, 0, 0)  # the highest ballot a peer's refusal named
        self._health_task: asyncio.Task[None] | None = None
        self._health_refused = False  # the agent answered that it takes no reports
        self._lock = asyncio.Lock()
        # Peers whose last call failed: once a majority has acked, an increment does not wait for
        # them, so a dead follower costs one timeout rather than one per increment.
        self._suspects: set[int] = set()
        # Calls under way per peer: a suspect with one still pending is skipped, so a black-holed
        # peer ties up one connection slot, not one per increment.
        self._inflight: dict[int, int] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self._lead_task: asyncio.Task[None] | None = None
        self._monitor_task: asyncio.Task[None] | None = None
        self._session: ClientSession | None = None
        self._forward_session: ClientSession | None = None

    # ---- lifecycle

    async def start(self) -> None:
        self._session = ClientSession(timeout=ClientTimeout(total=self.peer_timeout))
        # Forwards get a fresh connection each: a leader that went dark then fails at connect, within
        # the peer timeout, instead of a pooled connection waiting out the whole forward timeout.
        self._forward_session = ClientSession(
            connector=TCPConnector(force_close=True),
            timeout=ClientTimeout(total=self.forward_timeout, sock_connect=self.peer_timeout))
        try:
            status = await self.sdk.status()
            self.token = status.node.token_id
            ip = status.node.overlay_ip
            self.overlay_ip = str(ip) if ip is not None else None
        except Exception as e:  # the monitor below still tells us whether we lead
            log.warning("could not read this node's status from the mesh agent: %s", e)
        log.info("node token %s, overlay ip %s", self.token, self.overlay_ip)
        self._monitor_task = asyncio.create_task(self._monitor())
        if self.report_health:
            self._health_task = asyncio.create_task(self._report_health())

    async def close(self) -> None:
        tasks = [t for t in (self._monitor_task, self._lead_task, self._health_task) if t]
        tasks += list(self._background)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._health_task is not None and not self._health_refused:
            # At once rather than when the last report's ttl runs out: if this node leads, it steps down
            # now, and the others need not wait out a lease of a counter that no longer serves.
            try:
                await asyncio.wait_for(self.sdk.set_healthy(False, "the counter is stopped"), timeout=2.0)
            except Exception as e:
                log.info("could not tell the mesh agent that the counter stops (%s); its report lapses "
                         "in %.0f s", e, HEALTH_TTL)
        for session in (self._session, self._forward_session):
            if session:
                await session.close()

    async def _report_health(self) -> None:
        """A heartbeat to the agent: healthy, for HEALTH_TTL at a time.

        What it reports is that this process runs and its loop turns; whether the cluster has a majority
        is not the node's health (moving the lead would not bring one back), so it never reports False
        while running.
        """
        failing = False
        while True:
            try:
                await asyncio.wait_for(self.sdk.set_healthy(True, ttl=self.health_interval * 3),
                                       timeout=self.health_interval * 2)
                if failing:
                    log.info("reporting this counter's health to the mesh agent again")
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as e:
                status = getattr(e, "status", None)
                if isinstance(status, int) and 400 <= status < 500:
                    # 405 from an agent older than health reports, 403 over a non-loopback listener:
                    # retrying would not change the answer.
                    log.warning("the mesh agent refuses health reports (%s); not reporting this counter's "
                                "health, so a crashed counter will not make its node step down", e)
                    self._health_refused = True
                    return
                if not failing:
                    log.warning("could not report this counter's health to the mesh agent (%s); retrying "
                                "every %g s (the last report lapses in %g s)", e, self.health_interval,
                                self.health_interval * 3)
                failing = True
            await asyncio.sleep(self.health_interval)

    def make_app(self) -> web.Application:
        app = web.Application()
        app.add_routes([
            web.get("/status", self.handle_status),
            web.get("/counter", self.handle_counter),
            web.post("/increment", self.handle_increment),
            web.get("/members", self.handle_members),
            web.get("/health", self.handle_health),
            web.get("/replica", self.handle_replica),
            web.post("/prepare", self.handle_prepare),
            web.post("/replicate", self.handle_replicate),
        ])
        return app

    # ---- following the SDK

    async def _monitor(self) -> None:
        backoff = Backoff(1.0, 10.0)
        while True:
            try:
                await self.sdk.monitor_peers(self._on_peers, on_leader=self._on_leader, detailed=True)
                why = "the SDK's peer monitor stopped"
            except asyncio.CancelledError:
                raise
            except Exception as e:
                why = f"peer monitor failed ({e})"
            delay = backoff.next()
            log.warning("%s; restarting it in %.1f s", why, delay)
            await asyncio.sleep(delay)

    def _on_peers(self, peers: list[Any]) -> None:
        before = None if self.peers is None else sorted(p.token_id for p in self.peers)
        # The agent lists the others only; filtered anyway, as our own ack must count once.
        self.peers = [p for p in peers if self.token is None or p.token_id != self.token]
        after = sorted(p.token_id for p in self.peers)
        if before != after:
            log.info("members: this node %s and peers %s (cluster of %d, majority %d)",
                     self.token, after, len(after) + 1, majority(len(after) + 1))
        self._suspects &= set(after)

    def _on_leader(self, leader: Any) -> None:
        previous, self.leader = self.leader, leader
        token: int | None = getattr(leader, "token_id", None)
        is_self = token is not None and bool(getattr(leader, "is_self", False))
        term = mesh_term(leader)
        # Terms never go back; an agent restarted from its state file may briefly report an older one.
        self.mesh_term = max(self.mesh_term, term)
        if (previous is None or previous.token_id != token or bool(previous.is_self) != is_self
                or mesh_term(previous) != term):
            if token is None:
                log.warning("the cluster has no leader (mesh term %d)", term)
            elif is_self:
                log.info("leader is node %s (this node), mesh term %d", token, term)
            elif token == self.token:
                log.warning("this node is the seat named leader but does not lead now (mesh term %d): %s",
                            term, getattr(leader, "reason", None) or "its agent gives no reason")
            else:
                log.info("leader is node %s, mesh term %d", token, term)
        if is_self:
            if self.token is None:
                self.token = token
            if self._lead_task is not None and not self._lead_task.done() and self._lead_term == term:
                return
            if self._lead_task is not None:
                # Led again under a newer term: the old ballot is the old term's, sync under the new one.
                log.info("leading again under mesh term %d (was %s): syncing anew", term, self._lead_term)
                self._lead_task.cancel()
                self._stop_serving()
            self._lead_term = term
            assert token is not None
            self._lead_task = asyncio.create_task(self._lead(token, term))
        elif self._lead_task is not None:
            # The lease ended, the view went stale, this node is unhealthy, or another seat leads: whatever
            # the reason, acting as leader now could make a second one.
            if token == self.token:
                log.warning("stepping down: this node's agent no longer says it leads (%s)",
                            getattr(leader, "reason", None) or "no reason given")
            else:
                log.info("stepping down: node %s leads now", token)
            self._lead_task.cancel()
            self._lead_task = None
            self._lead_term = None
            self._stop_serving()

    def _stop_serving(self) -> None:
        self._serving = False
        self._ready.clear()
        self._ballot = None

    # ---- leading

    async def _lead(self, me: int, term: int) -> None:
        # Jittered: two nodes that both believe they lead (an agent without terms) must not keep
        # out-bidding each other's round in lockstep.
        backoff = Backoff(0.4, 2.0)
        try:
            while True:
                self._deposed.clear()
                if not await self._sync(me, term):
                    await asyncio.sleep(backoff.next())
                    continue
                backoff.reset()
                self._serving = True
                self._ready.set()
                await self._deposed.wait()
                self._stop_serving()
                log.warning("a newer ballot than ours is out there; waiting for the agent to confirm "
                            "this node still leads under mesh term %d before syncing again", term)
                # A pause first: the usual cause is our own agent's view lagging behind a failover, and
                # out-bidding the real leader's round right away would only depose it in turn. A newer
                # mesh term from the agent replaces this task (see _on_leader).
                await asyncio.sleep(1.0)
                while not await self._agent_says_self(term):
                    await asyncio.sleep(1.0)
        finally:
            # A successor task may already be leading again; only the current one may stop it.
            if self._lead_task in (None, asyncio.current_task()):
                self._stop_serving()

    async def _agent_says_self(self, term: int) -> bool:
        try:
            leader = await asyncio.wait_for(self.sdk.leader(), timeout=5.0)
        except Exception as e:
            log.warning("could not ask the agent who leads (%s); going by its last event", e)
            leader = self.leader
        return bool(getattr(leader, "is_self", False)) and mesh_term(leader) == term

    async def _sync(self, me: int, term: int) -> bool:
        """Become leader under a new ballot of mesh term `term`: a majority promises it, and we take the
        highest count."""
        peers = self.peers
        if peers is None:
            log.info("sync: waiting for the member list")
            return False
        if max(self.promised[0], self._seen[0], self.mesh_term) > term:
            # A newer leadership exists: no ballot of ours can win, and the agent will say so shortly.
            log.warning("sync: mesh term %d is not the newest (promised %s, refused by %s, agent at %d); "
                        "waiting for the agent", term, self.promised, self._seen, self.mesh_term)
            return False
        rounds = [b[1] for b in (self.promised, self._seen) if b[0] == term]
        ballot = (term, max(rounds, default=0) + 1, me)
        self.promised = ballot
        body = {"term": ballot[0], "round": ballot[1], "leader": me}
        results = await asyncio.gather(*(self._call(p, "/prepare", body) for p in peers))
        promises, counts, missing = 1, [self.count], []
        for peer, (status, reply, error) in zip(peers, results, strict=True):
            if reply is not None and isinstance(reply.get("count"), int):
                counts.append(reply["count"])
            if status == 200:
                promises += 1
                self._suspects.discard(peer.token_id)
            else:
                missing.append(f"{peer.token_id}: {error or status}")
                if status == 409:
                    self._seen = max(self._seen, ballot_of(reply))
        if self.promised != ballot:
            log.warning("sync for ballot %s overtaken by %s during the sync", ballot, self.promised)
            return False
        size = len(peers) + 1
        if promises < majority(size):
            log.warning("sync for ballot %s: %d of %d nodes promised, %d needed (%s); retrying",
                        ballot, promises, size, majority(size), "; ".join(missing))
            return False
        before, self.count = self.count, max(counts)
        self._ballot = ballot
        log.info("leading mesh term %d round %d: synced from %d of %d nodes, count %d (had %d)",
                 term, ballot[1], promises, size, self.count, before)
        return True

    async def _lead_increment(self) -> web.Response:
        if not self._serving:
            try:
                await asyncio.wait_for(self._ready.wait(), timeout=self.peer_timeout)
            except TimeoutError:
                return unavailable("this node is the leader but is still syncing the count from a "
                                   "majority of the cluster; retry shortly", leader=self.token)
        try:
            async with asyncio.timeout(self.peer_timeout):
                await self._lock.acquire()
        except TimeoutError:
            return unavailable("the leader is busy with earlier increments; retry", leader=self.token)
        try:
            ballot = self._ballot
            if not self._serving or ballot is None or self.promised != ballot:
                return unavailable("this node no longer leads under its term; retry",
                                   leader=getattr(self.leader, "token_id", None))
            self.count += 1
            n = self.count
            acks, size, stale = await self._replicate(n, ballot)
            needed = majority(size)
            if self._ballot != ballot:
                # The agent took the lead away while the count was out (its lease ended, or a newer term):
                # a new leader may already be syncing, so this answer must not claim the count.
                return unavailable(f"this node stopped leading while count {n} was being replicated; "
                                   "not acknowledged, retry", count=n,
                                   leader=getattr(self.leader, "token_id", None))
            if stale:
                # Not acknowledged even with enough acks: a newer leader may build on a lower count.
                self._deposed.set()
                return unavailable(f"a newer leader took over while count {n} was being replicated; "
                                   "not acknowledged, retry", count=n)
            if acks < needed:
                log.warning("count %d reached %d of %d nodes, %d needed: not acknowledged",
                            n, acks, size, needed)
                return unavailable(f"only {acks} of {size} nodes stored count {n}; a majority "
                                   f"({needed}) must hold it before it is acknowledged",
                                   count=n, acks=acks, cluster_size=size)
            log.info("count %d acknowledged by %d of %d nodes", n, acks, size)
            return json_response({"count": n, "leader": ballot[2]})
        finally:
            self._lock.release()

    async def _replicate(self, count: int, ballot: Ballot) -> tuple[int, int, bool]:
        """Send `count` to every peer; returns (acks including ours, cluster size, seen a newer term)."""
        peers = list(self.peers or [])
        size, needed = len(peers) + 1, majority(len(peers) + 1)
        acks, stale = 1, False
        body = {"count": count, "term": ballot[0], "round": ballot[1], "leader": ballot[2]}
        targets = [p for p in peers if not (p.token_id in self._suspects and self._inflight.get(p.token_id))]
        tasks = {asyncio.create_task(self._call(p, "/replicate", body)): p for p in targets}
        pending: set[asyncio.Task[Any]] = set(tasks)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.peer_timeout + 0.5
        while pending and not stale:
            # Healthy followers are waited for, so that every live node holds the count when the
            # client hears back; known-bad ones only while we still lack a majority.
            if acks >= needed and all(tasks[t].token_id in self._suspects for t in pending):
                break
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            done, pending = await asyncio.wait(pending, timeout=remaining,
                                               return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                status, reply, error = t.result()
                peer = tasks[t]
                if status == 200:
                    acks += 1
                    # A follower above us holds an unacknowledged count of an older leader; moving
                    # past it keeps every node's count monotonic and the cluster converging.
                    theirs = reply.get("count") if reply else None
                    if isinstance(theirs, int) and theirs > self.count:
                        self.count = theirs
                elif status == 409:
                    stale = True
                    self._seen = max(self._seen, ballot_of(reply))
                    log.warning("node %s refused count %d of ballot %s: %s (it holds ballot %s)",
                                peer.token_id, count, ballot, (reply or {}).get("error"), ballot_of(reply))
                else:
                    log.debug("replicate to node %s failed: %s", peer.token_id, error or status)
        for t in pending:
            # Each is bounded by the peer timeout; kept referenced so it is not collected mid-flight.
            self._background.add(t)
            t.add_done_callback(self._background.discard)
        return acks, size, stale

    async def _call(self, peer: Any, path: str, body: dict[str, Any]) -> tuple[int | None, dict | None, str | None]:
        """POST to a peer's counter; (status, JSON body, error). Never raises but for cancellation."""
        token = peer.token_id
        url = self.peer_url(token, str(peer.overlay_ip) if peer.overlay_ip else None) + path
        assert self._session is not None
        self._inflight[token] = self._inflight.get(token, 0) + 1
        try:
            async with self._session.post(url, json=body) as r:
                reply = await r.json(content_type=None)
                status = r.status
        except asyncio.CancelledError:
            raise
        except (TimeoutError, ClientError, ValueError, OSError) as e:
            self._suspects.add(token)
            return None, None, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        finally:
            self._inflight[token] -= 1
        if status == 200:
            self._suspects.discard(token)
        return status, reply if isinstance(reply, dict) else None, None

    # ---- following

    def _observe_ballot(self, ballot: Ballot) -> None:
        if ballot > self.promised:
            if self._ballot is not None:
                log.warning("node %d leads under ballot %s now; this node stops serving increments",
                            ballot[2], ballot)
                self._deposed.set()
            self.promised = ballot

    def _refusal(self, ballot: Ballot) -> web.Response | None:
        """409 for a ballot older than this node's promise, or of a mesh term older than its agent's."""
        if ballot[0] < self.mesh_term:
            why = (f"mesh term {ballot[0]} is older than term {self.mesh_term}, which this node's agent "
                   "reports: the chain has replaced that leadership")
        elif ballot < self.promised:
            why = f"ballot {list(ballot)} is older than ballot {list(self.promised)}, which this node promised"
        else:
            return None
        held = max(self.promised, (self.mesh_term, 0, 0))
        return json_response({"error": why, "term": held[0], "round": held[1], "leader": held[2],
                              "count": self.count}, status=409)

    @staticmethod
    def _ballot_in(body: dict[str, Any]) -> Ballot:
        return int_field(body, "term"), int_field(body, "round"), int_field(body, "leader")

    async def handle_prepare(self, request: web.Request) -> web.Response:
        ballot = self._ballot_in(await read_json(request))
        if (refused := self._refusal(ballot)) is not None:
            return refused
        self._observe_ballot(ballot)
        log.info("promised ballot %s to node %d (count %d)", ballot, ballot[2], self.count)
        return json_response({"count": self.count, "term": ballot[0], "round": ballot[1], "leader": ballot[2]})

    async def handle_replicate(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        count = int_field(body, "count")
        ballot = self._ballot_in(body)
        if (refused := self._refusal(ballot)) is not None:
            return refused
        self._observe_ballot(ballot)
        # max, not assignment: replicates of one leader may arrive out of order, and a lower count
        # from a leader that synced past ours must not undo what a majority acknowledged.
        applied = count > self.count
        self.count = max(self.count, count)
        return json_response({"count": self.count, "applied": applied})

    async def handle_replica(self, request: web.Request) -> web.Response:
        return json_response({"token": self.token, "count": self.count, "term": self.promised[0],
                              "round": self.promised[1], "leader": self.promised[2],
                              "mesh_term": self.mesh_term})

    # ---- the public API

    def role(self) -> str:
        if self._serving:
            return "leader"
        if self._lead_task is not None:
            return "syncing"
        return "follower"

    async def handle_increment(self, request: web.Request) -> web.Response:
        leader = self.leader
        token = getattr(leader, "token_id", None)
        if token is None:
            return unavailable("no leader: the cluster has none yet, or this node has not heard of it; retry later")
        if self._lead_task is not None:
            return await self._lead_increment()
        if token == self.token:
            # Named by the contract but not leading (its lease ended, its view is stale, it is unhealthy):
            # nobody serves increments until the agents settle it.
            reason = getattr(leader, "reason", None) or "its agent gives no reason"
            return unavailable(f"this node is the seat named leader but does not lead now: {reason}; retry",
                               leader=token)
        if FORWARDED_HEADER in request.headers:
            return unavailable(f"node {request.headers[FORWARDED_HEADER]} forwarded this increment "
                               f"here, but this node follows node {token}; retry", leader=token)
        overlay_ip = getattr(leader, "overlay_ip", None)
        url = self.peer_url(token, str(overlay_ip) if overlay_ip else None) + "/increment"
        assert self._forward_session is not None
        try:
            async with self._forward_session.post(url, headers={FORWARDED_HEADER: str(self.token)}) as r:
                text = await r.text()
                status = r.status
        except (TimeoutError, ClientError, OSError) as e:
            log.warning("forwarding an increment to leader %s at %s failed: %s: %s", token, url, type(e).__name__, e)
            return unavailable(f"the leader (node {token}) at {url} cannot be reached: "
                               f"{type(e).__name__}{': ' + str(e) if str(e) else ''}", leader=token)
        try:
            return json_response(json.loads(text), status=status)
        except ValueError:
            return json_response({"error": f"the leader (node {token}) answered {status} without JSON: "
                                           f"{text[:200]!r}", "leader": token}, status=502)

    async def handle_counter(self, request: web.Request) -> web.Response:
        return json_response({"count": self.count})

    async def handle_status(self, request: web.Request) -> web.Response:
        peers = self.peers or []
        size = len(peers) + 1
        members = sorted([p.token_id for p in peers] + ([self.token] if self.token is not None else []))
        return json_response({
            "token": self.token,
            "overlay_ip": self.overlay_ip,
            "role": self.role(),
            "leader": getattr(self.leader, "token_id", None),
            "count": self.count,
            "term": self.promised[0],
            "round": self.promised[1],
            "mesh_term": self.mesh_term,
            "members": members,
            "cluster_size": size,
            "majority": majority(size),
        })

    async def handle_members(self, request: web.Request) -> web.Response:
        try:
            peers = await asyncio.wait_for(self.sdk.peers(), timeout=self.peer_timeout)
        except Exception as e:  # the monitor's last list is still a fair answer
            log.warning("sdk.peers() failed (%s); answering with the last known list", e)
            peers = self.peers or []
        return json_response([peer_json(p) for p in peers])

    async def handle_health(self, request: web.Request) -> web.Response:
        return json_response({"ok": True, "token": self.token, "role": self.role(), "count": self.count})


"""What the PostgreSQL recipe's sidecar knows of this node's server and the others', and what it decides:
pure functions, checked exhaustively by examples/tests/test_postgres_decisions.py.

An intent (lead under a term, follow a seat, or stand by) comes from the leader helper of the SDK
(`dstack_p2p.follow_leader`); `decide` turns it and what was observed into the one next step.
"""
from __future__ import annotations

from dataclasses import dataclass

Addr = tuple[str, int]

# The data directory's kind, or the running server's role.
NONE, PRIMARY, REPLICA = "none", "primary", "replica"


# --- positions ----------------------------------------------------------------------------------------------


def parse_lsn(text: str) -> int:
    """'0/4024AA0' -> the 64-bit WAL location."""
    hi, sep, lo = text.strip().partition("/")
    if not sep:
        raise ValueError(f"not a WAL location: {text!r}")
    return (int(hi, 16) << 32) | int(lo, 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


@dataclass(frozen=True, order=True)
class Position:
    """How far a server's WAL goes: the newest timeline it knows of, then the location on it. A newer
    timeline wins whatever its location: it holds the history of a later primary, whose acknowledged writes
    an older timeline lacks however long it is."""

    timeline: int
    lsn: int

    def __str__(self) -> str:
        return f"{format_lsn(self.lsn)} on timeline {self.timeline}"


# --- what the sidecar knows, and what it decides (pure) -------------------------------------------------------


@dataclass(frozen=True)
class Local:
    """This node's PostgreSQL, as observed."""

    #: NONE (no database), PRIMARY or REPLICA: the running server's role, or a stopped data directory's
    #: kind (a standby.signal file makes it a replica).
    data: str
    running: bool = False
    #: The term it runs (or last ran) as primary under: dstack_mesh.term.
    term: int | None = None
    #: Where the sidecar pointed it (primary_conninfo); None: nowhere.
    upstream: Addr | None = None
    #: Its WAL receiver streams from `upstream`.
    streaming: bool = False
    #: How far its WAL goes; None while a starting server does not answer.
    position: Position | None = None
    #: Pointed at `upstream` for longer than --rejoin-timeout without streaming or getting further.
    stuck: bool = False
    #: A replica that failed to stream from the leader: rewound before it starts again.
    needs_rewind: bool = False


@dataclass(frozen=True)
class PeerState:
    """Another node's PostgreSQL, as it answered (or did not) over the mesh."""

    token: int | None
    addr: Addr
    answered: bool
    primary: bool = False
    term: int | None = None
    position: Position | None = None
    error: str | None = None

    def name(self) -> str:
        return f"node {self.token} ({self.addr[0]}:{self.addr[1]})"


@dataclass(frozen=True)
class Lead:
    """This node leads under `term` (its lease holds, the term is no older than any seen)."""

    term: int


@dataclass(frozen=True)
class Follow:
    """Seat `token` leads, confirmed within a lease; its PostgreSQL is at `addr`."""

    token: int
    addr: Addr
    term: int | None


@dataclass(frozen=True)
class Idle:
    """No leader this node may act on; `reason` says why."""

    reason: str


Intent = Lead | Follow | Idle

NOTHING = "nothing"
WAIT = "wait"
STOP = "stop"
STOP_FOR_REWIND = "stop-for-rewind"
START_PRIMARY = "start-primary"
START_REPLICA = "start-replica"
REPOINT = "repoint"
PROMOTE = "promote"
REWIND = "rewind"
BASEBACKUP = "basebackup"
INITDB = "initdb"

#: The actions after which the server takes writes.
WRITABLE = frozenset({START_PRIMARY, PROMOTE, INITDB})
#: The actions that replace what the data directory holds with another server's.
DESTRUCTIVE = frozenset({REWIND, BASEBACKUP})


@dataclass(frozen=True)
class Action:
    kind: str
    #: The server to stream from, rewind against or copy (None for START_REPLICA: from nowhere).
    addr: Addr | None = None
    why: str = ""


def quorum(members: int, sync_standbys: int) -> int:
    """How many nodes' WAL a new leader must know (its own included) before it may promote.

    Every acknowledged write is on the old primary and on at least `sync_standbys` of the others; at most
    members - 1 - sync_standbys of the others lack it, so any members - sync_standbys of them include one
    that holds it. Without synchronous replication nothing is assured: one answer (its own) does.
    """
    if sync_standbys <= 0:
        return 1
    return max(1, members - sync_standbys)


def leader_not_ready(intent: Follow, leader: PeerState | None) -> str | None:
    """Why the leader's server may not be followed yet (None: it may). Only a primary under the leader's
    term may be: before that it may still be catching up, and rewinding to it would drop writes."""
    who = f"node {intent.token}'s PostgreSQL at {intent.addr[0]}:{intent.addr[1]}"
    if leader is None or not leader.answered:
        return f"{who} does not answer ({leader.error if leader else 'not asked'})"
    if not leader.primary:
        return f"{who} is not a primary yet (it catches up before it promotes under term {intent.term})"
    if intent.term is not None and (leader.term is None or leader.term < intent.term):
        return f"{who} is a primary under term {leader.term}, not yet under term {intent.term}"
    return None


def needs_peers(intent: Intent, local: Local) -> bool:
    """Whether deciding needs the other nodes' positions: leading, and not already the primary of the term."""
    if not isinstance(intent, Lead):
        return False
    if local.data == PRIMARY and local.term == intent.term:
        return False
    return not (local.running and local.data == PRIMARY)


def plan_catch_up(local: Local, peers: list[PeerState] | None, *, members: int, sync_standbys: int,
                  term: int, bootstrap_term: int) -> tuple[str, PeerState | None, str]:
    """Where a new leader gets every acknowledged write from: ("self", None, why), ("peer", the furthest
    peer, why), ("initdb", None, why), or ("wait", None, why)."""
    if peers is None:
        return "wait", None, "the other members of the cluster are not known yet"
    writable = [p for p in peers if p.answered and p.primary]
    if writable:
        p = writable[0]
        return "wait", None, (f"{p.name()} is still a primary (under term {p.term}): not promoting while it "
                              f"takes writes; its sidecar stops it when its lease ends (stop it by hand if "
                              f"that sidecar is gone)")
    with_data = [p for p in peers if p.answered and p.position is not None]
    if local.data == NONE and not with_data:
        if term <= bootstrap_term:
            return "initdb", None, f"no node has a database yet under term {term}, the cluster's first"
        return "wait", None, (f"this node has no database and no other node's PostgreSQL answered with one; "
                              f"under term {term} (after --bootstrap-term {bootstrap_term}) a database may "
                              f"exist on a node that is down, so no empty one is made")
    if local.data != NONE and local.position is None:
        return "wait", None, "this node's PostgreSQL is starting: how far its WAL goes is not known yet"
    # This node knows its own WAL (an empty one included: it then holds none of the writes in question).
    heard = len(with_data) + 1
    need = quorum(members, sync_standbys)
    if heard < need:
        silent = ", ".join(f"{p.name()}: {p.error}" for p in peers if not p.answered) or "none"
        return "wait", None, (f"heard how far {heard} of the {need} nodes needed got (ANY {sync_standbys} "
                              f"replica acknowledges each write, {members} members): one of those not heard "
                              f"may hold acknowledged writes this node lacks; no answer from {silent}")
    best = max(with_data, key=lambda p: p.position, default=None)  # type: ignore[arg-type,return-value]
    if local.position is not None and (best is None or local.position >= best.position):  # type: ignore[operator]
        return "self", None, f"this node's WAL ({local.position}) goes furthest of the {heard} heard"
    assert best is not None
    return "peer", best, f"{best.name()} got further ({best.position}) than this node ({local.position})"


def decide(intent: Intent, local: Local, *, leader: PeerState | None = None, peers: list[PeerState] | None = None,
           members: int = 1, sync_standbys: int = 1, bootstrap_term: int = 1) -> Action:
    """The one next step for this node's PostgreSQL. `leader` is the leader's server (for Follow), `peers`
    the other nodes' servers (for Lead, when `needs_peers`)."""
    primary_up = local.running and local.data == PRIMARY
    if isinstance(intent, Idle):
        if primary_up:
            return Action(STOP, why=f"{intent.reason}: stopping the primary so that it takes no writes")
        if not local.running and local.data == REPLICA and not local.needs_rewind:
            # A replica that stands by with its own data, read-only, from nowhere: it answers reads, and a
            # new leader asking how far it got.
            return Action(START_REPLICA, None, f"{intent.reason}: starting the replica, streaming from nowhere")
        return Action(NOTHING, why=intent.reason)

    if isinstance(intent, Follow):
        if primary_up:
            return Action(STOP, why=f"node {intent.token} leads under term {intent.term}: stopping this node's "
                                    f"primary so that it takes no writes")
        not_ready = leader_not_ready(intent, leader)
        if not_ready is not None:
            if not local.running and local.data == REPLICA and not local.needs_rewind:
                return Action(START_REPLICA, None, f"{not_ready}: starting the replica, streaming from nowhere")
            return Action(WAIT, why=not_ready)
        a = intent.addr
        if local.data == NONE:
            return Action(BASEBACKUP, a, f"no database here: copying node {intent.token}'s")
        if not local.running:
            if local.data == PRIMARY:
                return Action(REWIND, a, f"this node's former primary rejoins node {intent.token}'s")
            if local.needs_rewind:
                return Action(REWIND, a, f"the replica could not stream from node {intent.token}")
            return Action(START_REPLICA, a, f"node {intent.token} leads under term {intent.term}")
        if local.upstream != a:
            return Action(REPOINT, a, f"node {intent.token} leads under term {intent.term}")
        if local.streaming:
            return Action(NOTHING, why=f"streaming from node {intent.token}")
        if local.stuck:
            return Action(STOP_FOR_REWIND, a, f"not streaming from node {intent.token} for --rejoin-timeout "
                                              f"(its history forked before this replica's end?)")
        return Action(WAIT, why=f"connecting to node {intent.token}")

    term = intent.term
    if primary_up:
        if local.term == term:
            return Action(NOTHING, why=f"the primary, under term {term}")
        return Action(STOP, why=f"this node leads under term {term} but its primary runs under term "
                                f"{local.term}: stopping it to check first that it holds every acknowledged write")
    if local.data == PRIMARY and local.term == term:
        return Action(START_PRIMARY, why=f"the primary of term {term} was stopped: starting it again")
    kind, best, why = plan_catch_up(local, peers, members=members, sync_standbys=sync_standbys, term=term,
                                    bootstrap_term=bootstrap_term)
    if kind == "wait":
        return Action(WAIT, why=why)
    if kind == "initdb":
        return Action(INITDB, why=why)
    if kind == "self":
        if local.running:
            return Action(PROMOTE, why=why)
        if local.data == REPLICA:
            return Action(START_REPLICA, None, f"{why}: starting it, then promoting it")
        return Action(START_PRIMARY, why=why)
    assert best is not None
    if local.data == NONE:
        return Action(BASEBACKUP, best.addr, f"{why}: copying it")
    if not local.running:
        return Action(START_REPLICA, best.addr, f"{why}: catching up from it")
    if local.upstream != best.addr:
        return Action(REPOINT, best.addr, f"{why}: catching up from it")
    if local.stuck:
        return Action(BASEBACKUP, best.addr, f"{why}, and streaming from it got nowhere: copying it")
    return Action(WAIT, why=f"{why}: catching up from it")

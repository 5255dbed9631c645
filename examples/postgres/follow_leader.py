#!/usr/bin/env python3
"""Run this node's PostgreSQL as the mesh's leader says: the primary on the leader's node, replicas elsewhere.

The cluster contract elects the leader and the mesh agents fail it over; this sidecar owns the server
(it runs initdb, pg_ctl, pg_basebackup and pg_rewind) and turns what this node's agent says into:

* this node leads under term T  -> promote, under T, once this node holds every acknowledged write: it asks
                                   the other nodes' PostgreSQL how far each got and first catches up from
                                   the furthest (synchronous replication puts every acknowledged write on
                                   ANY --sync-standbys replicas, so enough answers always include one)
* node N leads, view current    -> once N's server is a primary under N's term: stream from it over the mesh
                                   (a primary from before is stopped, rewound with pg_rewind, or copied
                                   afresh with pg_basebackup when rewinding fails)
* anything else, a primary here -> stop it at once (pg_ctl stop -m fast): a stopped server takes no writes,
                                   whereas default_transaction_read_only is a default any session may change

`is_self` holds only under the agent's lease, so "anything else" covers a lease that ran out, a stale or
unknown view, an unhealthy node and another seat leading. While PostgreSQL is the primary the sidecar also
renews the lease from the agent (GET /v1/leader) and stops the server when the last lease it heard of runs
out without renewal. The term a primary runs under is the server setting dstack_mesh.term, set before it
becomes writable; applications fence their writes with it (see the README).

    python follow_leader.py --data-dir /var/lib/postgresql/15/mesh [--port 5432] [--api SOCKET_OR_URL]
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import base64
import hashlib
import hmac
import json
import logging
import os
import re
import shutil
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

log = logging.getLogger("follow-leader")

HERE = Path(__file__).resolve().parent
#: The file this sidecar writes in the data directory, included last by postgresql.conf.
GENERATED = "dstack_mesh.conf"
BEGIN = "# --- dstack-mesh: follow_leader.py's settings, rewritten before every start ---"
END = "# --- end of dstack-mesh settings ---"
PASSWORD_ENV = "PG_REPLICATION_PASSWORD"
# Stands for the cluster's overlay in pg_hba.conf: a cluster may be deployed with any prefix (10.1.0.0/16 for
# more than 254 seats), and only the agent knows which.
PREFIX_MARK = "@MESH_PREFIX@"

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


async def within(seconds: float, aw: Awaitable[Any]) -> Any:
    """`aw`, or TimeoutError after `seconds`. Not asyncio.wait_for: before Python 3.12 (Debian's is 3.11) it can
    swallow a cancellation that comes just as `aw` completes, and a follower that is cancelled must stop."""
    async with asyncio.timeout(seconds):
        return await aw


def kill(proc: asyncio.subprocess.Process) -> None:
    """Kills `proc` unless it has ended. asyncio's kill() raises ProcessLookupError once the process has exited
    and its pipes have closed, which can come while its output is still being read: raised in an
    `except CancelledError`, it replaced the cancellation, and a follower cancelled as `pg_ctl start` returned
    went on running."""
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


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


# --- small helpers ---------------------------------------------------------------------------------------------


def conf_quote(value: str) -> str:
    """A postgresql.conf string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def conninfo_quote(value: str) -> str:
    """A libpq connection-string value."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def scram_verifier(password: str, salt: bytes | None = None, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802/7677): the role is created with
    it, so the password itself never reaches the server (nor its log, should the statement fail)."""
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def check_password(password: str | None) -> str:
    if not password:
        raise ValueError(f"{PASSWORD_ENV} is not set: the replicas log in to the primary as the replication "
                         f"role with it (scram-sha-256 in pg_hba.conf); set the same secret on every node")
    if not all(" " <= c <= "~" for c in password):
        raise ValueError(f"{PASSWORD_ENV} must be printable ASCII (it is stored as SCRAM without SASLprep and "
                         f"written to a .pgpass file)")
    return password


def pgpass_line(user: str, password: str) -> str:
    esc = lambda s: s.replace("\\", "\\\\").replace(":", "\\:")  # noqa: E731
    return f"*:*:*:{esc(user)}:{esc(password)}\n"


def parse_controldata(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def find_bindir() -> Path:
    """PostgreSQL's programs: beside a pg_ctl on PATH, else Debian's newest /usr/lib/postgresql/N/bin."""
    on_path = shutil.which("pg_ctl")
    if on_path:
        d = Path(os.path.realpath(on_path)).parent
        if (d / "pg_rewind").exists():
            return d
    versions = sorted((p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "pg_ctl").exists()),
                      key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    if versions:
        return versions[-1]
    raise ValueError("PostgreSQL's programs (pg_ctl, initdb, pg_rewind, ...) are not installed: apt-get install "
                     "postgresql (Debian puts them in /usr/lib/postgresql/15/bin), or give --bindir")


def _one_line(text: str, limit: int = 300) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # psql and pg_ctl put what went wrong last (after "connection to server ... failed:").
    msg = " / ".join(lines[-3:]) if lines else ""
    return msg[:limit]


# --- PostgreSQL through its command-line programs ---------------------------------------------------------------


class PgError(Exception):
    """A program failed or took too long; worth retrying."""


class Refused(PgError):
    """Going on would destroy data the sidecar cannot vouch for; an operator must look."""


class NotYet(PgError):
    """The other server is not ready for what this one needs of it; asking again later will do."""


@dataclass
class Ran:
    rc: int
    out: str
    err: str


class Postgres:
    """One node's PostgreSQL: its data directory, run through pg_ctl & co. as `run_as` (PostgreSQL refuses
    root), each program bounded by a timeout."""

    def __init__(self, data_dir: Path, *, bindir: Path, port: int, socket_dir: Path, password: str,
                 listen_addresses: str = "*", conf: Path = HERE / "postgresql.conf", hba: Path = HERE / "pg_hba.conf",
                 run_as: str | None = None, replication_user: str = "replicator", sync_standbys: int = 1,
                 log_file: Path | None = None, app_name: str = "dstack_mesh", timeout: float = 60.0,
                 copy_timeout: float = 3600.0) -> None:
        self.data = data_dir
        self.bindir = bindir
        self.port = port
        self.socket_dir = socket_dir
        self.listen = listen_addresses
        self.conf = conf.resolve()
        self.hba = hba
        self.user = replication_user
        self.sync_standbys = sync_standbys
        self.log_file = log_file or data_dir.with_name(data_dir.name + ".log")
        self.pgpass = data_dir.with_name(data_dir.name + ".pgpass")
        self.previous = data_dir.with_name(data_dir.name + ".previous")
        self.app_name = app_name
        self.timeout = timeout
        self.copy_timeout = copy_timeout
        #: The cluster's mesh prefix, put in for PREFIX_MARK in pg_hba.conf; None until the agent reports it.
        self.mesh_prefix: str | None = None
        self.where = f"{data_dir} (port {port})"
        self._ids: tuple[int, int] | None = None
        self._run_kw: dict[str, Any] = {}
        if run_as is not None:
            import pwd

            try:
                pw = pwd.getpwnam(run_as)
            except KeyError:
                raise ValueError(f"--run-as {run_as}: no such user (Debian's postgresql package makes "
                                 f"'postgres')") from None
            if os.geteuid() != pw.pw_uid:
                if os.geteuid() != 0:
                    raise ValueError(f"--run-as {run_as} needs this sidecar to run as root (it runs as uid "
                                     f"{os.geteuid()}); or run it as {run_as} without --run-as")
                self._run_kw = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
                self._ids = (pw.pw_uid, pw.pw_gid)
        elif os.geteuid() == 0:
            raise ValueError("PostgreSQL refuses to run as root: give --run-as postgres (or run this sidecar as "
                             "the user that owns the data directory)")
        self._env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C",
                     "PGPASSFILE": str(self.pgpass), "PGCONNECT_TIMEOUT": "3",
                     "PGAPPNAME": "dstack-mesh-follow-leader"}
        self.write_pgpass(password)

    # -- files --

    def _own(self, path: Path, mode: int = 0o600) -> None:
        os.chmod(path, mode)
        if self._ids:
            os.chown(path, *self._ids)

    def _write(self, path: Path, text: str, mode: int = 0o600) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        self._own(tmp, mode)
        os.replace(tmp, path)

    def hba_text(self) -> str:
        """The --hba file with the cluster's prefix put in, or NotYet while it is unknown: a server started
        with no overlay in pg_hba.conf would refuse every replica, and one started with a guessed prefix could
        admit addresses outside the mesh."""
        text = self.hba.read_text()
        if PREFIX_MARK not in text:
            return text
        if self.mesh_prefix is None:
            raise NotYet(f"{self.hba} admits the cluster's overlay ({PREFIX_MARK}), and the agent has not reported "
                         f"the cluster's mesh prefix yet (its status gives chain.prefix once it has read the "
                         f"chain or its state file)")
        return text.replace(PREFIX_MARK, self.mesh_prefix)

    def write_pgpass(self, password: str) -> None:
        self._write(self.pgpass, pgpass_line(self.user, password))

    def has_data(self) -> bool:
        return (self.data / "PG_VERSION").exists()

    def saved_state(self) -> dict[str, Any]:
        """What the sidecar last wrote into dstack_mesh.conf: role, upstream, term."""
        try:
            for line in (self.data / GENERATED).read_text().splitlines():
                if line.startswith("# state: "):
                    state = json.loads(line[len("# state: "):])
                    if isinstance(state, dict):
                        return state
        except (OSError, ValueError):
            pass
        return {}

    def conninfo(self, addr: Addr, dbname: str | None = None) -> str:
        parts = [f"host={conninfo_quote(addr[0])}", f"port={addr[1]}", f"user={conninfo_quote(self.user)}",
                 f"passfile={conninfo_quote(str(self.pgpass))}", "connect_timeout=3"]
        if dbname:
            parts.append(f"dbname={conninfo_quote(dbname)}")
        return " ".join(parts)

    def install(self, role: str, upstream: Addr | None, term: int | None) -> None:
        """Writes this node's settings into the data directory: dstack_mesh.conf, the include lines at the
        end of postgresql.conf, pg_hba.conf, and standby.signal for a replica. pg_basebackup and pg_rewind
        copy the source's files, so this runs after them and before every start and re-point."""
        hba = self.hba_text()
        state = {"role": role, "upstream": list(upstream) if upstream else None, "term": term}
        k = self.sync_standbys
        lines = [
            "# Written by examples/postgres/follow_leader.py before every start and re-point: edits are lost.",
            f"# state: {json.dumps(state)}",
            f"port = {self.port}",
            f"listen_addresses = {conf_quote(self.listen)}",
            f"unix_socket_directories = {conf_quote(str(self.socket_dir))}",
            f"synchronous_standby_names = {conf_quote(f'ANY {k} (*)' if k > 0 else '')}",
        ]
        if role == REPLICA and upstream is not None:
            info = f"{self.conninfo(upstream)} application_name={conninfo_quote(self.app_name)}"
            lines.append(f"primary_conninfo = {conf_quote(info)}")
        if term is not None:
            # Read by applications to fence their writes, and by the other nodes' sidecars to know that
            # this primary is the leader's of that term. Set before the server takes writes.
            lines.append(f"dstack_mesh.term = {conf_quote(str(term))}")
        self._write(self.data / GENERATED, "\n".join(lines) + "\n")
        main = self.data / "postgresql.conf"
        text = main.read_text() if main.exists() else ""
        if BEGIN in text:
            text = text[:text.index(BEGIN)].rstrip("\n") + "\n"
        text += f"{BEGIN}\ninclude {conf_quote(str(self.conf))}\ninclude {conf_quote(GENERATED)}\n{END}\n"
        self._write(main, text)
        self._write(self.data / "pg_hba.conf", hba)
        if role == REPLICA and not (self.data / "standby.signal").exists():
            self._write(self.data / "standby.signal", "")

    # -- programs --

    async def run(self, program: str, *args: str, timeout: float | None = None) -> Ran:
        cmd = [str(self.bindir / program), *args]
        try:
            proc = await asyncio.create_subprocess_exec(
                *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=self._env, cwd="/", **self._run_kw)
        except OSError as e:
            raise PgError(f"cannot run {cmd[0]}: {e}") from e
        limit = timeout or self.timeout
        try:
            out, err = await within(limit, proc.communicate())
        except TimeoutError:
            kill(proc)
            await proc.wait()
            raise PgError(f"{program} {args[0] if args else ''} took over {limit:g} s") from None
        except asyncio.CancelledError:
            kill(proc)
            raise
        return Ran(proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace"))

    async def sql(self, query: str, *, addr: Addr | None = None, timeout: float = 10.0) -> list[str]:
        """One row of `query`: locally over the unix socket as the server's superuser, or on `addr` as the
        replication role. Raises PgError with psql's own words."""
        target = (["-h", str(self.socket_dir), "-p", str(self.port), "-d", "postgres"] if addr is None
                  else [self.conninfo(addr, "postgres")])
        r = await self.run("psql", "-X", "-A", "-t", "-q", "-F", "|", "-v", "ON_ERROR_STOP=1", *target,
                           "-c", query, timeout=timeout)
        if r.rc != 0:
            raise PgError(_one_line(r.err) or f"psql exited {r.rc}")
        rows = r.out.strip().splitlines()
        return rows[-1].split("|") if rows else []

    POSITION_SQL = (
        "SELECT pg_is_in_recovery(), coalesce(current_setting('dstack_mesh.term', true), ''), "
        "CASE WHEN pg_is_in_recovery() THEN greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) "
        "ELSE pg_current_wal_lsn() END, "
        "greatest((SELECT max(('x' || substr(name, 1, 8))::bit(32)::int) FROM pg_ls_waldir() "
        "WHERE name ~ '^[0-9A-F]{8}\\.history$'), (SELECT timeline_id FROM pg_control_checkpoint()))"
    )
    RECEIVER_SQL = ", (SELECT status FROM pg_stat_wal_receiver), (SELECT sender_host FROM pg_stat_wal_receiver), " \
                   "(SELECT sender_port FROM pg_stat_wal_receiver)"

    @staticmethod
    def _parse_position(row: list[str]) -> tuple[bool, int | None, Position | None]:
        in_recovery = row[0] == "t"
        term = int(row[1]) if row[1].strip().isdigit() else None
        position = Position(int(row[3] or 1), parse_lsn(row[2])) if row[2] else None
        return in_recovery, term, position

    async def is_running(self) -> bool:
        r = await self.run("pg_ctl", "status", "-D", str(self.data), timeout=10)
        return r.rc == 0

    async def observe(self) -> Local:
        if not self.has_data():
            return Local(NONE)
        state = self.saved_state()
        upstream = tuple(state["upstream"]) if isinstance(state.get("upstream"), list) else None
        saved_term = state.get("term") if isinstance(state.get("term"), int) else None
        kind = REPLICA if (self.data / "standby.signal").exists() else PRIMARY
        if not await self.is_running():
            return Local(kind, False, saved_term, upstream, position=await self.stopped_position())  # type: ignore[arg-type]
        try:
            row = await self.sql(self.POSITION_SQL + self.RECEIVER_SQL)
            in_recovery, term, position = self._parse_position(row)
        except (PgError, ValueError, IndexError) as e:
            # Starting up, or recovering: it answers nothing yet.
            log.debug("PostgreSQL at %s runs but does not answer yet: %s", self.where, e)
            return Local(kind, True, saved_term, upstream)  # type: ignore[arg-type]
        streaming = (in_recovery and upstream is not None and row[4] == "streaming"
                     and row[5] == upstream[0] and row[6] == str(upstream[1]))
        return Local(REPLICA if in_recovery else PRIMARY, True, term, upstream, streaming, position)  # type: ignore[arg-type]

    async def controldata(self) -> dict[str, str]:
        r = await self.run("pg_controldata", str(self.data), timeout=10)
        if r.rc != 0:
            raise PgError(f"pg_controldata {self.data}: {_one_line(r.err)}")
        return parse_controldata(r.out)

    async def stopped_position(self) -> Position | None:
        """How far a stopped server's WAL goes, from its control file: the last checkpoint (a clean
        shutdown writes one at the very end), or the replayed location a standby must reach; and the newest
        timeline it has a history file of."""
        try:
            c = await self.controldata()
            lsn = max(parse_lsn(c.get("Latest checkpoint location", "0/0")),
                      parse_lsn(c.get("Minimum recovery ending location", "0/0")))
            tli = int(c.get("Latest checkpoint's TimeLineID", "1"))
        except (PgError, ValueError) as e:
            log.warning("cannot read how far the stopped server at %s got: %s", self.where, e)
            return None
        try:
            for p in (self.data / "pg_wal").glob("*.history"):
                if re.fullmatch(r"[0-9A-F]{8}\.history", p.name):
                    tli = max(tli, int(p.name[:8], 16))
        except OSError:
            pass
        return Position(tli, lsn)

    async def peer(self, addr: Addr, token: int | None = None) -> PeerState:
        try:
            row = await self.sql(self.POSITION_SQL, addr=addr, timeout=6)
            in_recovery, term, position = self._parse_position(row)
        except (PgError, ValueError, IndexError) as e:
            return PeerState(token, addr, False, error=str(e) or type(e).__name__)
        return PeerState(token, addr, True, not in_recovery, term, position)

    async def system_id(self, addr: Addr) -> str:
        """The database system identifier of the server at `addr` (IDENTIFY_SYSTEM on a replication
        connection)."""
        r = await self.run("psql", "-X", "-A", "-t", "-F", "|",
                           f"{self.conninfo(addr)} dbname=replication replication=true", "-c", "IDENTIFY_SYSTEM",
                           timeout=10)
        if r.rc != 0 or not r.out.strip():
            raise PgError(f"IDENTIFY_SYSTEM on {addr[0]}:{addr[1]}: {_one_line(r.err) or 'no answer'}")
        return r.out.strip().split("|")[0]

    async def start(self) -> None:
        self.log_file.touch(exist_ok=True)
        self._own(self.log_file, 0o640)
        r = await self.run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.log_file), "-w", "-t", "60",
                           "-s", timeout=75)
        if r.rc != 0 and not await self.is_running():
            raise PgError(f"PostgreSQL at {self.where} did not start: {_one_line(r.err)}; its log "
                          f"({self.log_file}) ends: {self.log_tail()}")

    def log_tail(self) -> str:
        try:
            return _one_line(self.log_file.read_text(errors="replace")[-2000:], 400)
        except OSError:
            return "(no log)"

    async def stop(self) -> None:
        """Fast shutdown: new connections are refused and sessions ended at once (a COMMIT waiting for a
        replica's acknowledgement gets none), then a checkpoint. Immediate if that does not end in 15 s."""
        r = await self.run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", "15", "-s", timeout=25)
        if r.rc == 0 or not await self.is_running():
            return
        log.warning("PostgreSQL at %s did not stop within 15 s (%s): stopping it immediately",
                    self.where, _one_line(r.err))
        await self.run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w", "-t", "10", "-s", timeout=20)
        if await self.is_running():
            raise PgError(f"PostgreSQL at {self.where} does not stop")

    async def reload(self) -> None:
        r = await self.run("pg_ctl", "reload", "-D", str(self.data), "-s", timeout=10)
        if r.rc != 0:
            raise PgError(f"pg_ctl reload: {_one_line(r.err)}")

    async def promote(self, term: int, upstream: Addr | None) -> None:
        # The term first, then writable: a session that sees the server writable sees its term too.
        self.install(REPLICA, upstream, term)
        await self.reload()
        for _ in range(50):
            row = await self.sql("SELECT current_setting('dstack_mesh.term', true)")
            if row and row[0] == str(term):
                break
            await asyncio.sleep(0.1)
        else:
            raise PgError(f"PostgreSQL at {self.where} did not take dstack_mesh.term = {term} within 5 s")
        row = await self.sql("SELECT pg_promote(true, 60)", timeout=70)
        if row != ["t"]:
            raise PgError(f"pg_promote did not finish within 60 s (PostgreSQL at {self.where}: {self.log_tail()})")
        self.install(PRIMARY, None, term)
        # pg_rewind learns a source's timeline from its control file, which a promotion updates only at its
        # first checkpoint, requested but not waited for. Until then an old primary rewound against this
        # server finds "no rewind required", starts on the old timeline past the fork, and can never stream
        # (Patroni checkpoints after promoting for the same reason).
        await self.sql("CHECKPOINT", timeout=120)

    async def ensure_roles(self, password: str) -> None:
        """The replication role (created with its SCRAM verifier, never the password) and what pg_rewind and
        the other sidecars read with it. Local commits only: no replica may be connected yet."""
        user = self.user
        grants = "; ".join(f"GRANT EXECUTE ON FUNCTION pg_catalog.{f} TO {user}" for f in (
            "pg_ls_dir(text, boolean, boolean)", "pg_stat_file(text, boolean)", "pg_read_binary_file(text)",
            "pg_read_binary_file(text, bigint, bigint, boolean)"))
        await self.sql(
            "SET synchronous_commit = local; "
            f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{user}') THEN "
            f"CREATE ROLE {user} WITH REPLICATION LOGIN PASSWORD '{scram_verifier(password)}'; END IF; END $$; "
            f"GRANT pg_monitor TO {user}; {grants}")

    async def initdb(self) -> None:
        r = await self.run("initdb", "-D", str(self.data), "--auth-local=peer", "--auth-host=scram-sha-256",
                           "--encoding=UTF8", "--locale=C.UTF-8", timeout=120)
        if r.rc != 0:
            raise PgError(f"initdb {self.data}: {_one_line(r.err)}")

    #: The timeline of the server's last checkpoint, and the newest it has a history file of.
    CHECKPOINT_TIMELINE_SQL = (
        "SELECT (SELECT timeline_id FROM pg_control_checkpoint()), "
        "coalesce((SELECT max(('x' || substr(name, 1, 8))::bit(32)::int) FROM pg_ls_waldir() "
        "WHERE name ~ '^[0-9A-F]{8}\\.history$'), 1)"
    )

    async def rewind(self, addr: Addr) -> None:
        # A source promoted but not yet checkpointed would look to pg_rewind as if it were on the old timeline
        # (see promote): such a rewind does nothing and the server could then never stream. A source that
        # promoted with an older sidecar, or whose checkpoint failed, is waited for.
        checkpointed, newest = (int(v) for v in await self.sql(self.CHECKPOINT_TIMELINE_SQL, addr=addr, timeout=6))
        if checkpointed < newest:
            raise NotYet(f"the server at {addr[0]}:{addr[1]} is on timeline {newest} but its last checkpoint is on "
                         f"timeline {checkpointed}: pg_rewind would find nothing to rewind; waiting for its "
                         f"checkpoint")
        r = await self.run("pg_rewind", f"--target-pgdata={self.data}",
                           f"--source-server={self.conninfo(addr, 'postgres')}", timeout=self.copy_timeout)
        if r.rc != 0:
            raise PgError(f"pg_rewind against {addr[0]}:{addr[1]}: {_one_line(r.err)}")

    async def basebackup(self, addr: Addr) -> None:
        """A fresh copy of the server at `addr`. The data directory it replaces is moved to <data>.previous
        (one kept), and put back if the copy fails; it must be the same database system (a rewind that
        failed), never another one's."""
        set_aside = False
        if self.has_data():
            c = await self.controldata()
            mine, theirs = c.get("Database system identifier"), await self.system_id(addr)
            if mine != theirs:
                raise Refused(f"the server at {addr[0]}:{addr[1]} is another database system ({theirs}) than "
                              f"this node's ({mine}): not replacing {self.data}. Move it away by hand if it "
                              f"is to go")
        if self.data.exists() and any(self.data.iterdir()):
            if self.previous.exists():
                shutil.rmtree(self.previous)
            os.rename(self.data, self.previous)
            set_aside = True
        r = await self.run("pg_basebackup", "-d", self.conninfo(addr), "-D", str(self.data), "-X", "stream",
                           "-c", "fast", "-w", timeout=self.copy_timeout)
        if r.rc != 0:
            shutil.rmtree(self.data, ignore_errors=True)
            if set_aside:
                os.rename(self.previous, self.data)
            raise PgError(f"pg_basebackup from {addr[0]}:{addr[1]}: {_one_line(r.err)}")


# --- the worker -------------------------------------------------------------------------------------------------


class _NoLeaderYet:
    """What the worker goes by before the agent has said anything."""

    token_id = None
    is_self = False
    term = None
    state = "unknown"
    reason = None
    overlay_ip = None


class PostgresFollower:
    """Applies the latest leader to PostgreSQL: `on_leader` is the SDK callback, `run` the worker.

    `members` lists the other members as (token, address of their PostgreSQL); `renew` reads the leader
    again (the SDK's `leader`), within each lease while this node is the primary; `whoami` reads this
    node's seat.
    """

    def __init__(self, pg: Any, leader_addr: Callable[[Any], Addr], password: str, *,
                 members: Callable[[], Awaitable[list[tuple[int, Addr]]]] | None = None,
                 renew: Callable[[], Awaitable[Any]] | None = None,
                 whoami: Callable[[], Awaitable[int | None]] | None = None,
                 check_interval: float = 2.0, rejoin_timeout: float = 30.0, sync_standbys: int = 1,
                 bootstrap_term: int = 1, backoff_max: float = 10.0) -> None:
        self.pg = pg
        self.leader_addr = leader_addr
        self.password = password
        self.members = members
        self.renew = renew
        self.whoami = whoami
        self.check_interval = check_interval
        self.rejoin_timeout = rejoin_timeout
        self.sync_standbys = sync_standbys
        self.bootstrap_term = bootstrap_term
        self.backoff_max = backoff_max
        #: The highest term any leader event carried: this node is promoted under no older one.
        self.highest_term: int | None = None
        self.node_token: int | None = None
        #: The last action taken (not WAIT or NOTHING), and the last decision.
        self.last_action: Action | None = None
        self.last_decision: Action | None = None
        self.serving = False  # the primary, as far as the worker knows
        self._roles_ok = False  # the replication role was ensured since this node last became the primary
        self._leader: Any = None
        self._lease_until: float | None = None
        self._wake = asyncio.Event()
        self._events = 0
        self._said: str | None = None
        self._warned: set[str] = set()
        self._needs_rewind = False
        # Since when the replica points where it does without streaming or getting further.
        self._tracked: tuple[Addr | None, Position | None] = (None, None)
        self._since = 0.0

    # -- what the agent says --

    def on_leader(self, leader: Any) -> None:
        self._events += 1
        self._take(leader, asyncio.get_running_loop().time())
        self._wake.set()

    def _take(self, leader: Any, heard_at: float) -> None:
        self._leader = leader
        term = getattr(leader, "term", None)
        if isinstance(term, int) and (self.highest_term is None or term > self.highest_term):
            self.highest_term = term
        lease_ms = getattr(leader, "lease_ms", None)
        self._lease_until = heard_at + lease_ms / 1000 if leader.is_self and isinstance(lease_ms, int) else None

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("%s", message)

    def _is_this_node(self, leader: Any) -> bool:
        # The agent gives a reason exactly when this node is the seat named leader but does not lead.
        if leader.token_id is not None and leader.token_id == self.node_token:
            return True
        return getattr(leader, "reason", None) is not None

    def intent(self, leader: Any, now: float) -> Intent:
        if isinstance(leader, _NoLeaderYet):
            return Idle("the agent has not said who leads yet")
        if leader.token_id is None:
            return Idle("the cluster has no leader")
        term = getattr(leader, "term", None)
        if leader.is_self:
            if self._lease_until is not None and now >= self._lease_until:
                return Idle("the agent's last word that this node leads is older than its lease, and no "
                            "renewal came")
            if term is None:
                why = ("the agent says this node leads but gives no term (an agent older than this sidecar?): "
                       "a promotion without a term cannot be fenced")
                self._warn_once("no-term", f"{why}; PostgreSQL is not promoted")
                return Idle(why)
            if self.highest_term is not None and term < self.highest_term:
                why = f"the agent says this node leads under term {term}, older than term {self.highest_term}"
                self._warn_once(f"old-term-{term}", f"{why} already seen: not promoting")
                return Idle(why)
            return Lead(term)
        if self._is_this_node(leader):
            return Idle(f"this node is the seat named leader but does not lead ({leader.reason or 'no reason'})")
        if getattr(leader, "state", "current") != "current":
            return Idle(f"node {leader.token_id} leads, but this node's view of it is {leader.state}")
        return Follow(leader.token_id, self.leader_addr(leader), term)

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
        others = [(t, a) for t, a in members if t != self.node_token]
        peers = await asyncio.gather(*(self.pg.peer(a, t) for t, a in others))
        return list(peers), len(others) + 1

    async def step(self) -> Action:
        loop = asyncio.get_running_loop()
        if self._leader is None or self.serving or (self._leader and self._leader.is_self):
            await self._renew()
        leader = self._leader or _NoLeaderYet()
        if leader.token_id is not None and not leader.is_self:
            await self._learn_seat()
        intent = self.intent(leader, loop.time())
        local = self._track(await self.pg.observe(), loop.time())
        self.serving = local.running and local.data == PRIMARY
        kw: dict[str, Any] = {"sync_standbys": self.sync_standbys, "bootstrap_term": self.bootstrap_term}
        if isinstance(intent, Follow) and not self.serving:
            kw["leader"] = await self.pg.peer(intent.addr, intent.token)
        elif needs_peers(intent, local):
            await self._learn_seat()
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
        """Checked right before the server turns writable: an event may have come meanwhile, and asking the
        other nodes how far they got may have outlasted the lease (one that does not answer takes the
        connect timeout, 3 s, longer than a lease): the lease is renewed first."""
        await self._renew()
        now = asyncio.get_running_loop().time()
        if term is not None and self.intent(self._leader or _NoLeaderYet(), now) == Lead(term):
            return True
        log.warning("not making PostgreSQL at %s writable: this node no longer leads under term %s",
                    self.pg.where, term)
        return False

    async def _renew(self) -> None:
        """Reads the leader again, so that a primary's lease is known to hold (and, before any event, so
        that a primary left running from before is not stopped needlessly)."""
        if self.renew is None:
            return
        loop = asyncio.get_running_loop()
        asked_at, events = loop.time(), self._events
        left = float("inf") if self._lease_until is None else self._lease_until - asked_at
        try:
            leader = await within(min(max(left, 0.5), 5.0), self.renew())
        except Exception as e:
            if self.serving:
                log.warning("could not renew this node's lease with the agent (%s); PostgreSQL stays the "
                            "primary for what is left of the lease, %.1f s", e, max(left, 0.0))
            return
        if self._events == events:
            # Not after an event that came meanwhile: the answer may predate it (a lease that just ended).
            self._take(leader, asked_at)

    async def _learn_seat(self) -> None:
        if self.node_token is not None or self.whoami is None:
            return
        try:
            self.node_token = await self.whoami()
        except Exception as e:
            log.debug("could not read this node's seat from the agent: %s", e)

    async def _sleep(self, seconds: float) -> None:
        # A leader change cuts any wait short, a retry's backoff included.
        try:
            await within(max(seconds, 0.0), self._wake.wait())
        except TimeoutError:
            pass
        self._wake.clear()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        delay = 0.5
        while True:
            try:
                action = await self.step()
            except Refused as e:
                log.error("%s", e)
                await self._sleep(self.backoff_max)
                continue
            except (PgError, OSError) as e:
                log.warning("PostgreSQL at %s: %s; retrying in %.1f s", self.pg.where, e, delay)
                await self._sleep(delay)
                delay = min(delay * 2, self.backoff_max)
                continue
            delay = 0.5
            if action.kind == NOTHING:
                wait = self.check_interval
                if self.serving and self._lease_until is not None:
                    # Renew at a third of what is left, so that two answers can be lost before it ends.
                    wait = min(wait, max((self._lease_until - loop.time()) / 3, 0.05))
                elif self._leader is not None and self._leader.is_self:
                    wait = min(wait, 1.0)
            elif action.kind == WAIT:
                wait = 0.5
            else:
                wait = 0.05
            await self._sleep(wait)


# --- the command line -------------------------------------------------------------------------------------------


async def monitor(sdk: Any, callback: Callable[[Any], None]) -> None:
    delay = 1.0
    while True:
        try:
            await sdk.monitor_leader(callback)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the agent not up yet, or restarting: keep trying; a primary is stopped meanwhile
            log.warning("following the mesh leader failed (%s); retrying in %.0f s", e, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 10.0)


def overlay_addr(leader: Any, port: int) -> Addr:
    """Where the leader's PostgreSQL listens: its overlay address as the agent gives it. Not one made up from
    the seat number: that holds only for the default prefix, and with no record of the leader's node that the
    agent believes there is no tunnel to it anyway."""
    if leader.overlay_ip is None:
        raise NotYet(f"node {leader.token_id} leads, but the agent names no overlay address for it (it holds no "
                     f"record of that seat it believes: see `meshctl status`)")
    return leader.overlay_ip, port


def build(args: argparse.Namespace, password: str) -> Postgres:
    """The Postgres control from the options, or ValueError naming what is wrong."""
    data = Path(args.data_dir).absolute()
    if not data.parent.is_dir():
        raise ValueError(f"--data-dir {data}: its parent {data.parent} does not exist; create it, owned by the "
                         f"user PostgreSQL runs as (the sidecar writes {data.name}.log, .pgpass and .previous "
                         f"beside the data directory)")
    for opt, path in (("--conf", args.conf), ("--hba", args.hba)):
        if not Path(path).is_file():
            raise ValueError(f"{opt} {path}: no such file")
    socket_dir = Path(args.socket_dir)
    if not socket_dir.is_dir():
        raise ValueError(f"--socket-dir {socket_dir}: no such directory; create it, writable by the user "
                         f"PostgreSQL runs as")
    bindir = Path(args.bindir) if args.bindir else find_bindir()
    for program in ("pg_ctl", "initdb", "psql", "pg_rewind", "pg_basebackup", "pg_controldata"):
        if not (bindir / program).exists():
            raise ValueError(f"--bindir {bindir}: no {program} there (Debian: /usr/lib/postgresql/15/bin)")
    run_as = args.run_as if args.run_as is not None else ("postgres" if os.geteuid() == 0 else None)
    return Postgres(data, bindir=bindir, port=args.port, socket_dir=socket_dir, password=password,
                    listen_addresses=args.listen_addresses, conf=Path(args.conf), hba=Path(args.hba),
                    run_as=run_as or None, replication_user=args.replication_user,
                    sync_standbys=args.sync_standbys, log_file=Path(args.log_file) if args.log_file else None)


async def amain(args: argparse.Namespace) -> int:
    from dstack_p2p import DStackP2PSDK  # here, so tests need not install it

    try:
        password = check_password(os.environ.get(PASSWORD_ENV))
        pg = build(args, password)
        sdk = DStackP2PSDK(api=args.api)
    except ValueError as e:
        log.error("%s", e)
        return 2
    leader_port = args.leader_port or args.port

    def leader_addr(leader: Any) -> Addr:
        return overlay_addr(leader, leader_port)

    async def members() -> list[tuple[int, Addr]]:
        return [(p.token_id, (p.overlay_ip, leader_port)) for p in await sdk.peers()]

    async def whoami() -> int | None:
        token = (await sdk.status()).node.token_id
        if token is not None:
            pg.app_name = f"node{token}"
        return token

    async def learn_prefix() -> None:
        # The follower runs meanwhile, so that a primary left from before is still stopped without a lease.
        delay = 0.5
        while pg.mesh_prefix is None:
            try:
                pg.mesh_prefix = (await sdk.status()).chain.prefix
            except Exception as e:  # the agent not up yet
                log.debug("could not read the cluster's mesh prefix from the agent: %s", e)
            if pg.mesh_prefix is None:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        log.info("the cluster's mesh prefix is %s: pg_hba.conf admits it", pg.mesh_prefix)

    follower = PostgresFollower(pg, leader_addr, password, members=members, renew=sdk.leader, whoami=whoami,
                                check_interval=args.check_interval, rejoin_timeout=args.rejoin_timeout,
                                sync_standbys=args.sync_standbys, bootstrap_term=args.bootstrap_term)
    log.info("following the mesh leader for PostgreSQL at %s (%s, ANY %d synchronous standby)", pg.where,
             pg.bindir, args.sync_standbys)
    tasks = [asyncio.create_task(follower.run()), asyncio.create_task(monitor(sdk, follower.on_leader))]
    prefix_task = asyncio.create_task(learn_prefix())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        done, _ = await asyncio.wait([*tasks, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if t in tasks and t.exception():
                raise t.exception()  # type: ignore[misc]
        return 0
    finally:
        for t in (*tasks, prefix_task):
            t.cancel()
        await asyncio.gather(*tasks, prefix_task, return_exceptions=True)
        # Nothing fences a server whose sidecar is gone: stop it with the sidecar.
        if pg.has_data():
            try:
                if await pg.is_running():
                    await pg.stop()
                    log.info("shutting down: stopped PostgreSQL at %s", pg.where)
            except PgError as e:
                log.error("shutting down: could not stop PostgreSQL at %s: %s", pg.where, e)
        await sdk.aclose()


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (1-65535)")
    return port


def _nonneg(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"{text} is negative")
        return value
    return parse


def _positive(text: str) -> float:
    value = _nonneg(float)(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be above 0")
    return value


def _identifier(text: str) -> str:
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a plain PostgreSQL role name (lower case letters, "
                                         f"digits and _, not starting with a digit)")
    return text


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Run this node's PostgreSQL as the primary when it leads the mesh "
                                            "(promoted under the leader's term), else a replica of the leader's.")
    p.add_argument("--data-dir", required=True, help="the data directory (made by initdb or pg_basebackup "
                   "when missing; its parent must exist, writable by the user PostgreSQL runs as)")
    p.add_argument("--port", type=_port, default=5432, help="this node's PostgreSQL port (default 5432)")
    p.add_argument("--leader-port", type=_port, default=None,
                   help="the port of the other nodes' PostgreSQL, if not --port")
    p.add_argument("--listen-addresses", default="*",
                   help="listen_addresses (default '*': loopback and the overlay, whenever it appears)")
    p.add_argument("--socket-dir", default="/var/run/postgresql",
                   help="unix_socket_directories, where the sidecar connects (default /var/run/postgresql)")
    p.add_argument("--api", default=None, metavar="SOCKET_OR_URL",
                   help="the mesh agent's API: a unix socket path or http://127.0.0.1:PORT "
                        "(default: $DSTACK_MESH_API)")
    p.add_argument("--bindir", default=None, help="where pg_ctl, initdb, pg_rewind ... are (default: beside "
                   "pg_ctl on PATH, else the newest /usr/lib/postgresql/N/bin)")
    p.add_argument("--run-as", default=None, metavar="USER",
                   help="run PostgreSQL's programs as USER (default: postgres when this sidecar runs as root, "
                        "else the sidecar's own user)")
    p.add_argument("--conf", default=str(HERE / "postgresql.conf"),
                   help="the settings every node includes (default: postgresql.conf beside this script)")
    p.add_argument("--hba", default=str(HERE / "pg_hba.conf"),
                   help=f"the pg_hba.conf copied into the data directory, {PREFIX_MARK} in it replaced with the "
                        f"cluster's mesh prefix as the agent reports it (default: the one beside this script)")
    p.add_argument("--replication-user", type=_identifier, default="replicator",
                   help="the role replicas log in as (default replicator; pg_hba.conf names it too)")
    p.add_argument("--sync-standbys", type=_nonneg(int), default=1,
                   help="synchronous_standby_names = 'ANY N (*)': replicas that must hold a write before its "
                        "COMMIT returns (default 1; 0: asynchronous, and a failover may lose acknowledged writes)")
    p.add_argument("--bootstrap-term", type=_nonneg(int), default=1,
                   help="create a new database (initdb) only when this node leads under this term or an "
                        "earlier one and no node has one (default 1, the cluster's first leader; 0: never)")
    p.add_argument("--rejoin-timeout", type=_positive, default=30.0,
                   help="seconds a replica may fail to stream from where it points before it is rewound (or "
                        "copied afresh) (default 30)")
    p.add_argument("--check-interval", type=_positive, default=2.0,
                   help="seconds between checks that PostgreSQL still has the role it was given (default 2)")
    p.add_argument("--log-file", default=None, help="PostgreSQL's log (default: <data-dir>.log)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return asyncio.run(amain(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

"""This node's PostgreSQL, run through its command-line programs (initdb, pg_ctl, psql, pg_rewind,
pg_basebackup, pg_controldata) as the user it runs as, each bounded by a timeout; and the files the sidecar
writes into its data directory."""
from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import shutil
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from decisions import NONE, PRIMARY, REPLICA, Addr, Local, PeerState, Position, parse_lsn

log = logging.getLogger("follow-leader")

HERE = Path(__file__).resolve().parent
#: The file this sidecar writes in the data directory, included last by postgresql.conf.
GENERATED = "dstack_mesh.conf"
BEGIN = "# --- dstack-mesh: follow_leader.py's settings, rewritten before every start ---"
END = "# --- end of dstack-mesh settings ---"
# Stands for the cluster's overlay in pg_hba.conf: a cluster may be deployed with any prefix (10.1.0.0/16 for
# more than 254 seats), and only the agent knows which.
PREFIX_MARK = "@MESH_PREFIX@"


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


#: Seconds to connect to another node's server to ask how far it got (libpq takes 2 at least).
PEER_CONNECT_TIMEOUT = 2


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

    def conninfo(self, addr: Addr, dbname: str | None = None, connect_timeout: int = 3) -> str:
        parts = [f"host={conninfo_quote(addr[0])}", f"port={addr[1]}", f"user={conninfo_quote(self.user)}",
                 f"passfile={conninfo_quote(str(self.pgpass))}", f"connect_timeout={connect_timeout}"]
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

    async def sql(self, query: str, *, addr: Addr | None = None, timeout: float = 10.0,
                  connect_timeout: int = 3) -> list[str]:
        """One row of `query`: locally over the unix socket as the server's superuser, or on `addr` as the
        replication role. Raises PgError with psql's own words."""
        target = (["-h", str(self.socket_dir), "-p", str(self.port), "-d", "postgres"] if addr is None
                  else [self.conninfo(addr, "postgres", connect_timeout)])
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
            # libpq's shortest connect timeout: a node whose agent stopped (a hand-off) drops what is sent to
            # its overlay address, and a new leader asks every node how far it got before it promotes.
            row = await self.sql(self.POSITION_SQL, addr=addr, timeout=6, connect_timeout=PEER_CONNECT_TIMEOUT)
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

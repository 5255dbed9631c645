#!/usr/bin/env python3
"""Run this node's PostgreSQL as the mesh's leader says: the primary on the leader's node, replicas elsewhere.

The cluster contract elects the leader and the mesh agents fail it over; this sidecar owns the server
(it runs initdb, pg_ctl, pg_basebackup and pg_rewind) and turns what the SDK's `dstack_p2p.follow_leader`
makes of this node's agent into:

* promoted under term T         -> promote, under T, once this node holds every acknowledged write: it asks
                                   the other nodes' PostgreSQL how far each got and first catches up from
                                   the furthest (synchronous replication puts every acknowledged write on
                                   ANY --sync-standbys replicas, so enough answers always include one)
* follow node N (view current)  -> once N's server is a primary under N's term: stream from it over the mesh
                                   (a primary from before is stopped, rewound with pg_rewind, or copied
                                   afresh with pg_basebackup when rewinding fails)
* demoted, a primary here       -> stop it at once (pg_ctl stop -m fast): a stopped server takes no writes,
                                   whereas default_transaction_read_only is a default any session may change

`is_self` holds only under the agent's lease, so a demotion comes with a lease that ran out, a stale or
unknown view, an unhealthy node and another seat leading. While this node leads the SDK also renews the
lease from the agent (GET /v1/leader) and demotes it when the last lease it heard of runs out without
renewal. The term a primary runs under is the server setting dstack_mesh.term, set before it becomes
writable; applications fence their writes with it (see README.md beside this file).

The sidecar is this file and the modules beside it: decisions.py (what to do, pure), server.py (PostgreSQL
through its programs) and follower.py (the worker).

    python follow_leader.py --data-dir /var/lib/postgresql/15/mesh [--port 5432] [--api SOCKET_OR_URL]
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dstack_p2p import Backoff, DStackP2PSDK, follow_leader

from decisions import Addr
from follower import PostgresFollower
from server import HERE, PREFIX_MARK, NotYet, PgError, Postgres, find_bindir

log = logging.getLogger("follow-leader")

PASSWORD_ENV = "PG_REPLICATION_PASSWORD"


def check_password(password: str | None) -> str:
    if not password:
        raise ValueError(f"{PASSWORD_ENV} is not set: the replicas log in to the primary as the replication "
                         f"role with it (scram-sha-256 in pg_hba.conf); set the same secret on every node")
    if not all(" " <= c <= "~" for c in password):
        raise ValueError(f"{PASSWORD_ENV} must be printable ASCII (it is stored as SCRAM without SASLprep and "
                         f"written to a .pgpass file)")
    return password


# --- the command line -------------------------------------------------------------------------------------------


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

    async def members() -> list[tuple[int, Addr, bool]]:
        return [(p.token_id, (p.overlay_ip, leader_port), p.draining) for p in await sdk.peers()]

    async def whoami() -> int | None:
        token = (await sdk.status()).node.token_id
        if token is not None:
            pg.app_name = f"node{token}"
        return token

    async def learn_prefix() -> None:
        # The follower runs meanwhile, so that a primary left from before is still stopped without a lease.
        backoff = Backoff(0.5, 10.0)
        while pg.mesh_prefix is None:
            try:
                pg.mesh_prefix = (await sdk.status()).chain.prefix
            except Exception as e:  # the agent not up yet
                log.debug("could not read the cluster's mesh prefix from the agent: %s", e)
            if pg.mesh_prefix is None:
                await asyncio.sleep(backoff.next())
        log.info("the cluster's mesh prefix is %s: pg_hba.conf admits it", pg.mesh_prefix)

    follower = PostgresFollower(pg, leader_addr, password, members=members, whoami=whoami,
                                check_interval=args.check_interval, rejoin_timeout=args.rejoin_timeout,
                                sync_standbys=args.sync_standbys, bootstrap_term=args.bootstrap_term)
    log.info("following the mesh leader for PostgreSQL at %s (%s, ANY %d synchronous standby)", pg.where,
             pg.bindir, args.sync_standbys)
    tasks = [asyncio.create_task(follower.run()),
             asyncio.create_task(follow_leader(follower.on_promote, follower.on_demote,
                                               on_follow=follower.on_follow, sdk=sdk))]
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

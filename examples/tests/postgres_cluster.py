"""What the PostgreSQL recipe's tests share: the sidecar's command line loaded as it runs, the agent's word
as a FakeLeader, and real PostgreSQL servers (Debian's, as the user postgres when the tests run as root) on
loopback standing in for a cluster's nodes.

Each node listens on its own 127.0.1.N, standing in for its overlay address 10.0.1.N, so that the recipe's
pg_hba.conf is used as it is, 127.0.0.0/8 standing in for the cluster's prefix. The tests that run servers
fail, saying what to install, when PostgreSQL is missing (the fixtures are in conftest.py).
"""
from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import server
from fakes import FakeLeader
from procs import EXAMPLES

# Loaded under a name of its own: the Redis recipe's sidecar is also follow_leader.py.
_spec = importlib.util.spec_from_file_location("pg_follow_leader", EXAMPLES / "postgres" / "follow_leader.py")
assert _spec and _spec.loader
fl = importlib.util.module_from_spec(_spec)
sys.modules["pg_follow_leader"] = fl
_spec.loader.exec_module(fl)


PASSWORD = "correct horse battery staple"
# Loopback stands in for the cluster's overlay: the nodes listen on 127.0.1.N.
LOOPBACK_PREFIX = "127.0.0.0/8"
A1, A2, A3 = ("10.0.1.1", 5432), ("10.0.1.2", 5432), ("10.0.1.3", 5432)
RUN_AS = "postgres" if os.geteuid() == 0 else None


def leader(token: int | None, me: int, term: int | None = 1, **view: Any) -> FakeLeader:
    """What node `me`'s agent says: seat `token` leads under `term`; `view` overrides any field."""
    if token is None:
        return FakeLeader(None, None, None, None, False, None, term=term, **view)
    fields: dict[str, Any] = {"is_self": token == me, "term": term, **view}
    return FakeLeader(token, f"instance-{token}", f"10.0.1.{token}", f"10.0.1.{token}", **fields)


class Node:
    """Node `token`'s PostgreSQL under `root`, on 127.0.1.<token>:<port>."""

    def __init__(self, root: Path, token: int, port: int, bindir: Path, hba: Path) -> None:
        self.token = token
        self.host = f"127.0.1.{token}"
        self.addr = (self.host, port)
        home = root / f"n{token}"
        self.run_dir = home / "run"
        for d in (home, self.run_dir):
            d.mkdir()
            if RUN_AS:
                shutil.chown(d, RUN_AS, RUN_AS)
        self.data = home / "data"
        self.port = port
        self.pg = server.Postgres(self.data, bindir=bindir, port=port, socket_dir=self.run_dir, password=PASSWORD,
                                  listen_addresses=self.host, hba=hba, run_as=RUN_AS, app_name=f"node{token}",
                                  copy_timeout=120)
        self.pg.mesh_prefix = LOOPBACK_PREFIX

    async def sql(self, query: str) -> list[str]:
        return await self.pg.sql(query)

    async def role(self) -> tuple[bool, str] | None:
        """(writable, term), None when it does not answer."""
        try:
            row = await self.sql("SELECT NOT pg_is_in_recovery(), "
                                 "coalesce(current_setting('dstack_mesh.term', true), '')")
        except server.PgError:
            return None
        return row[0] == "t", row[1]

    async def streams_from(self, other: Node) -> bool:
        try:
            row = await self.sql("SELECT status, sender_host FROM pg_stat_wal_receiver")
        except server.PgError:
            return False
        return row == ["streaming", other.host]

    async def stop(self) -> None:
        if self.pg.has_data() and await self.pg.is_running():
            await self.pg.run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-s", timeout=20)


async def eventually(check: Callable[[], Any], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            if await check():
                return
        except Exception as e:
            last = e
        await asyncio.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what} (last error: {last!r})")


async def rows(node: Node) -> list[int]:
    row = await node.pg.run("psql", "-X", "-A", "-t", "-h", str(node.run_dir), "-p", str(node.port), "-d",
                            "postgres", "-c", "SELECT id FROM t ORDER BY id")
    assert row.rc == 0, row.err
    return [int(x) for x in row.out.split()]


async def all_have(a: Node, b: Node, expected: list[int]) -> bool:
    return await rows(a) == expected and await rows(b) == expected


async def stopped(node: Node) -> bool:
    return not await node.pg.is_running()


async def holds(value: bool) -> bool:
    """`value`, to be awaited: `eventually` of a condition that asks no server."""
    return value

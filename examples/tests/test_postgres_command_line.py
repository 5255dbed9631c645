"""The PostgreSQL recipe's command line (examples/postgres/follow_leader.py): its options, and the sidecars
failing real PostgreSQL servers over as the real SDK hears a stand-in agent per node."""
from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest
import server
from agent_stub import FakeAgent
from fakes import FakeLeader
from postgres_cluster import PASSWORD, Node, all_have, eventually, fl, rows, stopped
from procs import spawn


def test_bad_options_are_refused_with_what_to_do(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    for argv, words in (
        ([], "--data-dir"),
        (["--data-dir", "d", "--port", "70000"], "70000 is not a port"),
        (["--data-dir", "d", "--port", "x"], "'x' is not a port number"),
        (["--data-dir", "d", "--sync-standbys", "-1"], "-1 is negative"),
        (["--data-dir", "d", "--rejoin-timeout", "0"], "must be above 0"),
        (["--data-dir", "d", "--replication-user", "Robert'); DROP"], "not a plain PostgreSQL role name"),
    ):
        with pytest.raises(SystemExit) as e:
            fl.parser().parse_args(argv)
        assert e.value.code == 2
        assert words in capsys.readouterr().err
    good = ["--data-dir", str(tmp_path / "data"), "--socket-dir", str(tmp_path)]
    for argv, words in (
        (["--data-dir", str(tmp_path / "no" / "data")], "its parent"),
        ([*good, "--conf", str(tmp_path / "nope.conf")], "--conf"),
        (["--data-dir", str(tmp_path / "data"), "--socket-dir", str(tmp_path / "nope")], "--socket-dir"),
        ([*good, "--bindir", str(tmp_path)], "no pg_ctl there"),
        ([*good, "--run-as", "no-such-user-here"], "no such user"),
    ):
        with pytest.raises(ValueError, match=words):
            fl.build(fl.parser().parse_args(argv), PASSWORD)


def test_a_leader_is_followed_at_the_overlay_address_the_agent_gives() -> None:
    assert fl.overlay_addr(FakeLeader(300, "i300", "10.1.1.44", "10.1.1.44", False), 5432) == ("10.1.1.44", 5432)
    with pytest.raises(server.NotYet, match="no overlay address"):
        fl.overlay_addr(FakeLeader(300, "i300", None, None, False), 5432)


@pytest.mark.asyncio
async def test_the_command_line_fails_over_with_the_agents(cluster: dict[int, Node], hba: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    agents = {t: await FakeAgent(t, [1, 2, 3], 1).start() for t in cluster}
    procs: dict[int, Any] = {}
    try:
        monkeypatch.setenv(fl.PASSWORD_ENV, PASSWORD)
        for t, n in cluster.items():
            procs[t] = await spawn(f"follow_leader {t}", "postgres/follow_leader.py", "--data-dir", str(n.data),
                                   "--port", str(n.port), "--listen-addresses", n.host, "--socket-dir",
                                   str(n.run_dir), "--hba", str(hba), "--api", agents[t].url,
                                   "--check-interval", "0.5", "--rejoin-timeout", "10")
        n1, n2, n3 = cluster[1], cluster[2], cluster[3]

        async def bootstrapped() -> bool:
            for p in procs.values():
                assert p.proc.returncode is None, p.log()
            return (await n1.role() == (True, "1") and await n2.streams_from(n1) and await n3.streams_from(n1))

        try:
            await eventually(bootstrapped, 90, "node 1 the primary, 2 and 3 its replicas")
        except AssertionError:
            raise AssertionError("\n".join(p.log() for p in procs.values())) from None
        assert any("following the mesh leader for PostgreSQL" in ln for ln in procs[1].lines)
        await n1.sql("CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
        # The replication role's application_name is the node's seat, read from the agent.
        names = (await n1.sql("SELECT string_agg(application_name, ',' ORDER BY application_name) "
                              "FROM pg_stat_replication"))[0]
        assert names == "node2,node3"

        # Node 1's lease ends, then seat 2 is elected (term 2) as every agent sees it.
        agents[1].set_leader(1, lease=False, reason="the chain view is 7.2 s old, older than the 2.5 s lease")
        await eventually(lambda: stopped(n1), 5, "node 1's primary stopped")
        for a in agents.values():
            a.set_leader(2)

        # Node 1 holds a row past the fork, so it streams from node 2 only once rewound: a replica that has
        # gone past the fork may show 'streaming' for a moment before the startup process refuses the timeline.
        def rewound() -> bool:
            return any("rewound PostgreSQL" in ln for ln in procs[1].lines)

        async def failed_over() -> bool:
            return (await n2.role() == (True, "2") and await n3.streams_from(n2) and rewound()
                    and await n1.streams_from(n2))

        try:
            await eventually(failed_over, 90, "node 2 the primary under term 2, 1 and 3 its replicas")
        except AssertionError:
            raise AssertionError("\n".join(p.log() for p in procs.values())) from None
        assert await rows(n2) == [1]
        await n2.sql("INSERT INTO t VALUES (2)")
        await eventually(lambda: all_have(n1, n3, [1, 2]), 10, "node 2's write on 1 and 3")
        # No line of any log carries the password.
        for p in procs.values():
            assert not any(PASSWORD in ln for ln in p.lines)
        for n in cluster.values():
            assert PASSWORD not in n.pg.log_file.read_text(errors="replace")

        # Stopped, each sidecar stops its server with it: nothing is left unfenced.
        for t, p in procs.items():
            assert await p.stop(signal.SIGTERM) == 0, p.log()
            assert await stopped(cluster[t]), f"node {t}'s PostgreSQL outlived its sidecar"
    finally:
        for p in procs.values():
            await p.stop()
        for a in agents.values():
            await a.stop()


@pytest.mark.asyncio
async def test_the_command_line_names_what_is_missing(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(fl.PASSWORD_ENV, raising=False)
    p = await spawn("follow_leader", "postgres/follow_leader.py", "--data-dir", str(root / "data"),
                    "--socket-dir", str(root), "--api", "http://127.0.0.1:1")
    assert await asyncio.wait_for(p.proc.wait(), 20) == 2
    await p.stop()
    assert any(f"{fl.PASSWORD_ENV} is not set" in ln for ln in p.lines), p.log()
    monkeypatch.setenv(fl.PASSWORD_ENV, PASSWORD)
    p = await spawn("follow_leader", "postgres/follow_leader.py", "--data-dir", str(root / "no" / "data"),
                    "--socket-dir", str(root), "--api", "http://127.0.0.1:1")
    assert await asyncio.wait_for(p.proc.wait(), 20) == 2
    await p.stop()
    assert any("its parent" in ln and "does not exist" in ln for ln in p.lines), p.log()

"""The PostgreSQL recipe's server (examples/postgres/server.py) without a running one: its programs, the
order of a rewind and a promotion, and the files and settings it writes."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import decisions
import pytest
import server
from fakes import assert_cancellation_comes_out, programs_end_as_they_are_read
from postgres_cluster import A2, PASSWORD, RUN_AS, fl


@pytest.mark.asyncio
async def test_a_program_that_ends_as_it_is_cancelled_or_times_out_is_not_an_os_error(
        root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pg = server.Postgres(root / "data", bindir=Path("/nonexistent"), port=5432, socket_dir=root, password=PASSWORD,
                         run_as=RUN_AS)
    programs_end_as_they_are_read(monkeypatch)
    await assert_cancellation_comes_out(lambda: pg.run("pg_ctl", "start"))
    with pytest.raises(server.PgError, match="pg_ctl status took over 0.05 s"):
        await pg.run("pg_ctl", "status", timeout=0.05)


def stand_in_postgres(root: Path, answers: dict[str, list[str]], ran: list[tuple[str, ...]]) -> Any:
    """A real `Postgres` whose queries get `answers` (by their first words) and whose programs only record
    that they ran."""
    pg = server.Postgres(root / "data", bindir=Path("/nonexistent"), port=5432, socket_dir=root, password=PASSWORD,
                         run_as=RUN_AS)

    async def sql(query: str, **kw: Any) -> list[str]:
        return next(row for start, row in answers.items() if query.startswith(start))

    async def run(program: str, *args: str, **kw: Any) -> Any:
        ran.append((program, *args))
        return server.Ran(0, "", "")

    pg.sql, pg.run = sql, run
    return pg


@pytest.mark.asyncio
async def test_a_rewind_waits_for_a_promoted_source_to_checkpoint_its_new_timeline(root: Path) -> None:
    # The source promoted to timeline 2 but its control file still says 1: pg_rewind would report "no
    # rewind required" and the old primary would start on timeline 1, past the fork, never to stream.
    ran: list[tuple[str, ...]] = []
    pg = stand_in_postgres(root, {server.Postgres.CHECKPOINT_TIMELINE_SQL: ["1", "2"]}, ran)
    with pytest.raises(server.NotYet, match="on timeline 2 but its last checkpoint is on timeline 1"):
        await pg.rewind(A2)
    assert ran == [], "pg_rewind ran against a source that had not checkpointed its promotion"

    pg = stand_in_postgres(root, {server.Postgres.CHECKPOINT_TIMELINE_SQL: ["2", "2"]}, ran)
    await pg.rewind(A2)
    assert [r[0] for r in ran] == ["pg_rewind"]


@pytest.mark.asyncio
async def test_a_promotion_checkpoints_before_anyone_rewinds_against_it(root: Path) -> None:
    ran: list[tuple[str, ...]] = []
    queries: list[str] = []
    pg = stand_in_postgres(root, {}, ran)

    async def sql(query: str, **kw: Any) -> list[str]:
        queries.append(query)
        if query.startswith("SELECT current_setting"):
            return ["7"]
        return ["t"] if query.startswith("SELECT pg_promote") else []

    pg.sql, pg.install = sql, lambda *a: None
    await pg.promote(7, None)
    promoted = next(i for i, q in enumerate(queries) if q.startswith("SELECT pg_promote"))
    assert "CHECKPOINT" in queries[promoted + 1:], queries


def test_quoting_and_password_files() -> None:
    assert server.conf_quote("it's a \\ path") == "'it''s a \\\\ path'"
    assert server.conninfo_quote("it's") == "'it\\'s'"
    assert server.pgpass_line("replicator", "a:b\\c") == "*:*:*:replicator:a\\:b\\\\c\n"
    assert fl.check_password("s3cret!") == "s3cret!"
    for bad, words in ((None, "is not set"), ("", "is not set"), ("pässword", "printable ASCII"),
                       ("two\nlines", "printable ASCII")):
        with pytest.raises(ValueError, match=words):
            fl.check_password(bad)


def test_scram_verifier_matches_rfc_7677() -> None:
    # RFC 7677's example: password "pencil", this salt, 4096 iterations; its ServerSignature for the example
    # exchange follows from the ServerKey, which is what the verifier keeps.
    import base64
    import hashlib
    import hmac

    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    v = server.scram_verifier("pencil", salt)
    assert v.startswith("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$")
    server_key = base64.b64decode(v.rsplit(":", 1)[1])
    auth = (b"n=user,r=rOprNGfwEbeRWgbNEkqO,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
            b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
    signature = hmac.new(server_key, auth, hashlib.sha256).digest()
    assert base64.b64encode(signature).decode() == "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    assert "pencil" not in v


def test_controldata_is_parsed() -> None:
    c = server.parse_controldata("Database system identifier:           7711899932746272379\n"
                                 "Latest checkpoint location:           0/4026450\n"
                                 "Latest checkpoint's TimeLineID:       2\n")
    assert c["Database system identifier"] == "7711899932746272379"
    assert decisions.parse_lsn(c["Latest checkpoint location"]) == 0x4026450


def test_pg_hba_admits_the_clusters_prefix_whatever_it_is(root: Path, hba: Path) -> None:
    pg = server.Postgres(root / "data", bindir=Path("/nonexistent"), port=5432, socket_dir=root, password=PASSWORD,
                         hba=hba, run_as=RUN_AS)
    (root / "data").mkdir()
    pg.mesh_prefix = "10.1.0.0/16"
    pg.install(decisions.REPLICA, ("10.1.1.44", 5432), None)
    rules = [line.split() for line in (root / "data" / "pg_hba.conf").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert ["host", "replication", "replicator", "10.1.0.0/16", "scram-sha-256"] in rules
    assert ["host", "all", "all", "10.1.0.0/16", "scram-sha-256"] in rules
    # Nothing else from the mesh, and no rule left naming the default prefix or the mark.
    assert not [r for r in rules if r[0] == "host" and r[3].startswith("10.") and r[3] != "10.1.0.0/16"]
    assert server.PREFIX_MARK not in (root / "data" / "pg_hba.conf").read_text()


def test_no_server_is_set_up_before_the_agent_reports_the_prefix(root: Path, hba: Path) -> None:
    pg = server.Postgres(root / "data", bindir=Path("/nonexistent"), port=5432, socket_dir=root, password=PASSWORD,
                         hba=hba, run_as=RUN_AS)
    (root / "data").mkdir()
    with pytest.raises(server.NotYet, match=r"chain\.prefix"):
        pg.install(decisions.PRIMARY, None, 1)
    assert list((root / "data").iterdir()) == [], "install wrote files before it could write pg_hba.conf"

import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

# The examples are scripts run from their own folders, not packages; the tests import them as such.
EXAMPLES = Path(__file__).resolve().parent.parent
for folder in (EXAMPLES / "counter", EXAMPLES / "hello-p2p", EXAMPLES / "redis", EXAMPLES / "tests"):
    sys.path.insert(0, str(folder))
# The PostgreSQL sidecar's modules, found beside it as when it runs; last on the path, since the Redis recipe's
# sidecar is also follow_leader.py (postgres_cluster loads the PostgreSQL one under a name of its own).
sys.path.append(str(EXAMPLES / "postgres"))

import server  # noqa: E402
from postgres_cluster import Node  # noqa: E402
from procs import free_port  # noqa: E402


# --- real PostgreSQL, for the tests of the PostgreSQL recipe ---------------------------------------------------


@pytest.fixture(scope="session")
def bindir() -> Path:
    try:
        return server.find_bindir()
    except ValueError as e:
        pytest.fail(f"{e} (scripts/bootstrap installs it)")


@pytest.fixture
def root() -> Iterator[Path]:
    # Not pytest's tmp_path: PostgreSQL runs as postgres, which cannot enter root's 0700 directories.
    d = Path(tempfile.mkdtemp(prefix="pgmesh-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def hba() -> Path:
    """The recipe's own pg_hba.conf: each node's sidecar puts in the prefix its agent reports."""
    return EXAMPLES / "postgres" / "pg_hba.conf"


@pytest_asyncio.fixture
async def cluster(root: Path, hba: Path, bindir: Path) -> Any:
    """Three nodes' PostgreSQL (none started), on one port of 127.0.1.1-3. test_counter.py has a `cluster` of
    its own."""
    port = free_port([f"127.0.1.{t}" for t in (1, 2, 3)])
    nodes = {t: Node(root, t, port, bindir, hba) for t in (1, 2, 3)}
    try:
        yield nodes
    finally:
        for n in nodes.values():
            await n.stop()

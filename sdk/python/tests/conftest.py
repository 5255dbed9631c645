from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Iterator

import pytest

from fake_agent import FakeAgent


@pytest.fixture(autouse=True)
def _no_api_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The developer's or CI's own DSTACK_MESH_API must not leak into the discovery tests.
    monkeypatch.delenv("DSTACK_MESH_API", raising=False)


@pytest.fixture
def sock_dir() -> Iterator[str]:
    # Not tmp_path: a unix socket path must stay under ~100 bytes, and this is removed at once.
    with tempfile.TemporaryDirectory(prefix="dsp2p-") as d:
        yield d


@pytest.fixture
async def agent(sock_dir: str) -> AsyncIterator[FakeAgent]:
    a = await FakeAgent(os.path.join(sock_dir, "api.sock")).start()
    try:
        yield a
    finally:
        await a.stop()

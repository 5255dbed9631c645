"""hello_p2p's greeting logic with a fake SDK: overlay-IP peers, gateway-URL peers, unreachable ones."""
from __future__ import annotations

from typing import Any

import pytest
from aiohttp import ClientSession, web

from fakes import FakeSDK, closed_port
from hello_p2p import HelloNode, peer_base


def test_peer_base() -> None:
    assert peer_base("10.0.1.2", 8081) == "http://10.0.1.2:8081"
    assert peer_base("https://abc-8081.gw.example/", 8081) == "https://abc-8081.gw.example"


@pytest.mark.asyncio
async def test_hello_uses_each_peers_address() -> None:
    runners: list[web.AppRunner] = []
    nodes: list[HelloNode] = []

    async def serve(node: HelloNode, port: int = 0) -> int:
        runner = web.AppRunner(node.make_app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        nodes.append(node)
        await node.start()
        return runner.addresses[0][1]

    # Node 2 is reached by "overlay IP" + peer port, node 3 by a "gateway URL", node 4 not at all.
    port2 = await serve(HelloNode(FakeSDK(2, [1, 2, 3, 4], None), 0))
    port3 = await serve(HelloNode(FakeSDK(3, [1, 2, 3, 4], None), 0))
    dead = closed_port()
    addresses = {2: "127.0.0.1", 3: f"http://127.0.0.1:{port3}/", 4: None}
    sdk1 = FakeSDK(1, [1, 2, 3, 4], None, address=lambda t: addresses.get(t, f"http://127.0.0.1:{dead}"))
    port1 = await serve(HelloNode(sdk1, port2, timeout=1.0))
    try:
        async with ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port1}/hello") as r:
                assert r.status == 200
                hello: list[dict[str, Any]] = await r.json()
            async with http.get(f"http://127.0.0.1:{port1}/peers") as r:
                peers = await r.json()
        assert [p["token_id"] for p in peers] == [2, 3, 4]
        by = {h["tokenId"]: h for h in hello}
        assert by[2]["ok"] and by[2]["reply"]["tokenId"] == 2 and by[2]["address"] == "127.0.0.1"
        assert by[3]["ok"] and by[3]["reply"]["message"] == "hello from node 3"
        assert not by[4]["ok"] and "no address" in by[4]["error"]
        assert all(isinstance(h["ms"], (int, float)) for h in hello)
    finally:
        for runner in runners:
            await runner.cleanup()
        for node in nodes:
            await node.close()

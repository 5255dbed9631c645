#!/usr/bin/env python3
"""A distributed counter on a dstack-mesh cluster, replicated through the on-chain leader.

Every node runs this next to its mesh agent. The cluster contract elects the leader and the agents
fail it over; this program only follows that choice through the SDK:

* the leader serialises increments, sends each new count to every follower over the mesh, and
  acknowledges the client only once a majority of the cluster (itself included) holds it;
* a follower forwards POST /increment to the leader and hands back the leader's answer;
* a node that becomes leader first collects the counts of a majority and continues from the highest,
  so an acknowledged count (held by a majority) is never lost across a failover.

Ballots fence off a deposed leader that still thinks it leads (it was frozen, or cut off and comes
back): a ballot is (mesh term, round, leader), compared as a tuple. The mesh term is the fencing term
the node's own agent reported when it said this node leads (`Leader.term`: it grows at every leader
change and never goes back); the round counts this leader's syncs within that term. A new leader has a
majority promise its ballot (POST /prepare) before it serves; a node refuses a prepare or replicate whose
ballot is below its promise, or whose mesh term is older than the newest its own agent has reported.
Without that, an old and a new leader could each acknowledge "count 11" for different increments, and
one of those writes would vanish in the max. A node leads only while its agent says `is_self` (under a
lease), and stops serving the moment it says otherwise.

It reports its health to the agent (`set_healthy`, a heartbeat with a ttl): a counter that crashed or
hangs makes its node unhealthy, so that node stops leading and the cluster elects one whose counter runs.

State lives in memory: a node that restarts comes back with count 0 and relearns the count from the
leader's next replicate, so the guarantee covers failures where at most a minority restarts at once.

The counter is this file (its command line) and the modules beside it: counter_node.py (the node: its
state, its HTTP API, leading and following), ballots.py (ballots, terms and majorities) and http_json.py
(the JSON of requests and answers).

    python counter.py --listen 0.0.0.0:8080 [--api SOCKET_OR_URL] [--contract 0x...] [--peer-port 8080]
                      [--no-report-health]
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Any

from aiohttp import web
from dstack_p2p import AgentUnreachable, DStackP2PSDK, RegistrationError

from counter_node import HEALTH_INTERVAL, HEALTH_TTL, CounterNode

log = logging.getLogger("counter")


def parse_hostport(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def setup_logging() -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # httpx logs every request to the agent at INFO: the SDK's event stream and polls would drown ours.
    logging.getLogger("httpx").setLevel(logging.WARNING)


async def serve(node: CounterNode, host: str, port: int, name: str) -> None:
    runner = web.AppRunner(node.make_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    bound = runner.addresses[0][1] if runner.addresses else port
    logging.getLogger(name).info("listening on %s:%s", host, bound)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await runner.cleanup()


async def register(sdk: Any, timeout: float) -> bool:
    """sdk.register, waiting out an agent that is not up yet (a compose sidecar starting beside us).

    Raises RegistrationError (and the SDK's other errors) as the SDK does; returns False on timeout.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return bool(await sdk.register(timeout=max(deadline - loop.time(), 0.1)))
        except AgentUnreachable as e:
            if loop.time() >= deadline:
                raise
            log.info("waiting for the mesh agent: %s", e)
            await asyncio.sleep(min(2.0, max(deadline - loop.time(), 0.0)))


async def amain(args: argparse.Namespace) -> int:
    host, port = args.listen
    try:
        sdk = DStackP2PSDK(contract=args.contract, api=args.api)
    except ValueError as e:
        log.error("%s", e)
        return 2
    try:
        try:
            registered = await register(sdk, args.register_timeout)
        except RegistrationError as e:
            log.error("registration failed: %s", e)
            return 1
        except Exception as e:  # the agent never answered, or serves another cluster: say so, no traceback
            log.error("could not register through the mesh agent's API: %s", e)
            return 1
        if not registered:
            log.warning("this node is not on-chain after %.0f s; going on, the agent keeps trying",
                        args.register_timeout)

        def peer_url(token: int, overlay_ip: str | None) -> str:
            return f"http://{overlay_ip or f'10.0.1.{token}'}:{args.peer_port}"

        node = CounterNode(sdk, peer_url, peer_timeout=args.peer_timeout, report_health=args.report_health)
        await node.start()
        try:
            await serve(node, host, port, "counter")
        finally:
            await node.close()
        return 0
    finally:
        await sdk.aclose()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="A distributed counter replicated through the mesh's leader.")
    p.add_argument("--listen", type=parse_hostport, default=("0.0.0.0", 8080), metavar="HOST:PORT",
                   help="where to serve the HTTP API (default 0.0.0.0:8080)")
    p.add_argument("--api", default=None, metavar="SOCKET_OR_URL",
                   help="the mesh agent's API: a unix socket path or http://127.0.0.1:PORT "
                        "(default: $DSTACK_MESH_API)")
    p.add_argument("--contract", default=None, metavar="0x...", help="the cluster contract, passed to the SDK")
    p.add_argument("--peer-port", type=int, default=8080,
                   help="the port the other nodes' counters listen on (default 8080)")
    p.add_argument("--peer-timeout", type=float, default=2.0,
                   help="seconds any call to another node may take (default 2)")
    p.add_argument("--register-timeout", type=float, default=120.0,
                   help="seconds to wait for this node's on-chain record (default 120)")
    p.add_argument("--report-health", action=argparse.BooleanOptionalAction, default=True,
                   help=f"report this counter's health to the mesh agent every {HEALTH_INTERVAL:.0f} s, each "
                        f"report holding {HEALTH_TTL:.0f} s, so that a crashed or hung counter makes its node "
                        "step down (default on; the agent keeps one report per node, so turn it off if "
                        "another app on this node reports)")
    args = p.parse_args(argv)
    setup_logging()
    try:
        return asyncio.run(amain(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

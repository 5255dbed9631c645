#!/usr/bin/env python3
"""Follows the peers and the leader, one JSON line per callback, for --seconds (default 120).

    DSTACK_MESH_API=/path/api.sock monitor.py [--seconds N] [--contract 0x...] [--detailed]

Lines: {"t", "kind": "peers", "peers": [addresses]} on each change of the address list (with --detailed,
on each change of any peer field, traffic counters included, with "detailed": [{tokenId, address,
connection, healthy, leader}] too), {"t", "kind": "leader", "tokenId", "isSelf", "address", "term", "state",
"healthy", "reason"} on each change of the leader (its lease and term included), and
{"kind": "reconnected", "t", "attempts", "downSecs", "reason"} from the SDK's on_reconnect hook. The SDK's
log records (the stream lost, back) go to stderr. Exits 0 after N seconds; on an error, prints
{"kind": "error", "error_type", "message"} and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time

from _live import emit, error, leader_json, log_to_stderr, peer_json
from dstack_p2p import DStackP2PError, DStackP2PSDK, Leader, Peer, Reconnected
from dstack_p2p.models import addresses


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--contract")
    parser.add_argument("--detailed", action="store_true", help="also print each peer's connection")
    args = parser.parse_args()
    log_to_stderr()

    def on_peers(peers: list[str]) -> None:
        emit({"t": time.time(), "kind": "peers", "peers": peers})

    def on_detailed(peers: list[Peer]) -> None:
        detailed = [peer_json(p) for p in peers]
        emit({"t": time.time(), "kind": "peers", "peers": addresses(peers), "detailed": detailed})

    def on_leader(leader: Leader) -> None:
        emit({"t": time.time(), "kind": "leader", **leader_json(leader)})

    def on_reconnect(info: Reconnected) -> None:
        emit(
            {
                "kind": "reconnected",
                "t": time.time(),
                "attempts": info.attempts,
                "downSecs": info.down_secs,
                "reason": info.reason,
            }
        )

    async with DStackP2PSDK(args.contract) as sdk:
        if args.detailed:
            monitor = sdk.monitor_peers(
                on_detailed, on_leader=on_leader, detailed=True, on_reconnect=on_reconnect
            )
        else:
            monitor = sdk.monitor_peers(on_peers, on_leader=on_leader, on_reconnect=on_reconnect)
        task = asyncio.ensure_future(monitor)
        done, _ = await asyncio.wait({task}, timeout=args.seconds)
        if task in done:
            try:
                task.result()
            except DStackP2PError as e:
                emit({"kind": "error", **error(e)})
                return 1
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

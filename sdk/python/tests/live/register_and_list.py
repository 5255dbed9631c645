#!/usr/bin/env python3
"""Waits for registration, then prints the peers and the leader as one JSON line.

    DSTACK_MESH_API=/path/api.sock register_and_list.py --contract 0x... [--timeout S] [--expect-error]

Prints {"registered", "peers", "detailed", "leader"}. With --expect-error, register() must raise
RegistrationError: prints {"error_type": "RegistrationError", "message"} and exits 0, or exits 1 after
printing {"error_type": null} (or the other error's type) when it did not.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from _live import emit, error, leader_json, log_to_stderr, peer_json
from dstack_p2p import DStackP2PError, DStackP2PSDK, RegistrationError
from dstack_p2p.models import addresses


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contract", required=True)
    parser.add_argument("--mode", choices=["wireguard", "tls"])
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds register() waits")
    parser.add_argument("--expect-error", action="store_true")
    args = parser.parse_args()
    log_to_stderr()

    async with DStackP2PSDK(args.contract, args.mode) as sdk:
        if args.expect_error:
            try:
                registered = await sdk.register(timeout=args.timeout)
            except RegistrationError as e:
                emit(error(e))
                return 0
            except DStackP2PError as e:
                emit(error(e))
                return 1
            emit({"error_type": None, "registered": registered})
            return 1

        try:
            registered = await sdk.register(timeout=args.timeout)
            # Two reads: the list may change between them, so read again until they agree.
            for _ in range(5):
                detailed = await sdk.peers()
                peers = await sdk.get_peers()
                if peers == addresses(detailed):
                    break
                await asyncio.sleep(0.2)
            leader = await sdk.leader()
        except DStackP2PError as e:
            emit(error(e))
            return 1
        emit(
            {
                "registered": registered,
                "peers": peers,
                "detailed": [peer_json(p) for p in detailed],
                "leader": leader_json(leader),
            }
        )
        return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

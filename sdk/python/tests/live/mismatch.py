#!/usr/bin/env python3
"""Calls get_peers() with a contract the agent does not serve and prints the error as one JSON line.

    DSTACK_MESH_API=/path/api.sock mismatch.py --contract 0x...

Prints {"error_type": "ConfigMismatch", "message"} and exits 0. Any other error is printed the same way
with exit 1; so is {"error_type": null, "peers"} when get_peers() did not raise.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from _live import emit, error
from dstack_p2p import ConfigMismatch, DStackP2PError, DStackP2PSDK


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contract", required=True)
    parser.add_argument("--mode", choices=["wireguard", "tls"])
    args = parser.parse_args()
    async with DStackP2PSDK(args.contract, args.mode) as sdk:
        try:
            peers = await sdk.get_peers()
        except DStackP2PError as e:
            emit(error(e))
            return 0 if isinstance(e, ConfigMismatch) else 1
    emit({"error_type": None, "peers": peers})
    return 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

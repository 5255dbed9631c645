#!/usr/bin/env python3
"""The blocking wrapper: prints {"peers": [addresses], "leader": {tokenId, isSelf, address, term, state,
healthy, reason}} as one line.

    DSTACK_MESH_API=/path/api.sock sync_smoke.py [--contract 0x...]

On an error prints {"error_type", "message"} and exits 1.
"""

from __future__ import annotations

import argparse
import sys

from _live import emit, error, leader_json
from dstack_p2p import DStackP2PError
from dstack_p2p.sync import DStackP2P


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contract")
    args = parser.parse_args()
    with DStackP2P(args.contract) as client:
        try:
            peers = client.get_peers()
            leader = client.leader()
        except DStackP2PError as e:
            emit(error(e))
            return 1
    emit({"peers": peers, "leader": leader_json(leader)})
    return 0


if __name__ == "__main__":
    sys.exit(main())

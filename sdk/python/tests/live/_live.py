"""What the live scripts share: finding the SDK, and printing one JSON object per line.

The harness may run these with a Python that has httpx but not this package installed, so the package's
source next to them is used when it cannot be imported.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

try:
    import dstack_p2p  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from dstack_p2p import Leader, Peer


def emit(obj: dict[str, Any]) -> None:
    """One JSON object on one line of stdout, flushed at once so the harness sees it as it happens."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def error(e: BaseException) -> dict[str, Any]:
    return {"error_type": type(e).__name__, "message": str(e)}


def leader_json(leader: Leader) -> dict[str, Any]:
    return {
        "tokenId": leader.token_id,
        "isSelf": leader.is_self,
        "address": leader.address,
        "term": leader.term,
        "state": leader.state,
        "healthy": leader.healthy,
        "reason": leader.reason,
    }


def peer_json(peer: Peer) -> dict[str, Any]:
    return {
        "tokenId": peer.token_id,
        "address": peer.address,
        "connection": peer.connection,
        "healthy": peer.healthy,
        "leader": peer.leader,
    }


def log_to_stderr() -> None:
    """The SDK's log records (lost stream, reconnected) on stderr, beside the harness's own logs."""
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    # httpx logs every request at INFO.
    logging.getLogger("httpx").setLevel(logging.WARNING)

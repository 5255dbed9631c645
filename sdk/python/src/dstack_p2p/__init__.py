"""Python SDK for the dstack-mesh agent's local API.

    sdk = DStackP2PSDK(contract, "wireguard")
    await sdk.register()
    peers = await sdk.get_peers()

:class:`DStackP2PSDK` is the async client; :class:`DStackP2P` (``dstack_p2p.sync``) the blocking one.
:func:`follow_leader` runs a service as the leader says: promoted, demoted, following (``dstack_p2p.follow``).
:class:`Backoff` is the retry delay the SDK waits with, for applications' own retries too.
"""

from ._version import __version__
from .backoff import Backoff
from .client import DStackP2PSDK
from .endpoint import DEFAULT_SOCKET, DEFAULT_URL, ENV_VAR
from .errors import (
    AgentError,
    AgentUnreachable,
    ConfigMismatch,
    DStackP2PError,
    ProtocolError,
    RegistrationError,
)
from .follow import FollowAction, FollowState, follow_leader, why_not_leading
from .models import (
    LEADER_CURRENT,
    LEADER_STALE,
    LEADER_STATES,
    LEADER_UNKNOWN,
    AppHealth,
    ChainInfo,
    Health,
    HealthCheck,
    Leader,
    NodeInfo,
    Peer,
    PeerPolicy,
    PeerRelayStatus,
    PolicyDrops,
    PolicyStatus,
    Ports,
    Reconnected,
    Status,
)
from .overlay import overlay_address, seat_of
from .sync import DStackP2P

#: The blocking client under a name that says so.
DStackP2PSync = DStackP2P

__all__ = [
    "DEFAULT_SOCKET",
    "DEFAULT_URL",
    "ENV_VAR",
    "LEADER_CURRENT",
    "LEADER_STALE",
    "LEADER_STATES",
    "LEADER_UNKNOWN",
    "AgentError",
    "AgentUnreachable",
    "AppHealth",
    "Backoff",
    "ChainInfo",
    "ConfigMismatch",
    "DStackP2P",
    "DStackP2PError",
    "DStackP2PSDK",
    "DStackP2PSync",
    "FollowAction",
    "FollowState",
    "Health",
    "HealthCheck",
    "Leader",
    "NodeInfo",
    "Peer",
    "PeerPolicy",
    "PeerRelayStatus",
    "PolicyDrops",
    "PolicyStatus",
    "Ports",
    "ProtocolError",
    "Reconnected",
    "RegistrationError",
    "Status",
    "__version__",
    "follow_leader",
    "overlay_address",
    "seat_of",
    "why_not_leading",
]

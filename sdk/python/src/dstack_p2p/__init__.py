"""Python SDK for the dstack-mesh agent's local API.

    sdk = DStackP2PSDK(contract, "wireguard")
    await sdk.register()
    peers = await sdk.get_peers()

:class:`DStackP2PSDK` is the async client; :class:`DStackP2P` (``dstack_p2p.sync``) the blocking one.
"""

from ._version import __version__
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
from .models import ChainInfo, Leader, NodeInfo, Peer, Reconnected, Status
from .sync import DStackP2P

#: The blocking client under a name that says so.
DStackP2PSync = DStackP2P

__all__ = [
    "DEFAULT_SOCKET",
    "DEFAULT_URL",
    "ENV_VAR",
    "AgentError",
    "AgentUnreachable",
    "ChainInfo",
    "ConfigMismatch",
    "DStackP2P",
    "DStackP2PError",
    "DStackP2PSDK",
    "DStackP2PSync",
    "Leader",
    "NodeInfo",
    "Peer",
    "ProtocolError",
    "Reconnected",
    "RegistrationError",
    "Status",
    "__version__",
]

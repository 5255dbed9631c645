"""Seats and overlay addresses: seat N of a cluster has the N-th host address of the cluster's mesh prefix.

    overlay_address("10.1.0.0/16", 300)      # "10.1.1.44"
    seat_of("10.1.0.0/16", "10.1.1.44")      # 300

The prefix is the one the agent reports as ``status().chain.prefix``. The network and broadcast addresses
are never a seat's, so a prefix of length L holds 2^(32-L) - 2 seats, numbered from 1. Both functions
raise ``ValueError`` naming what is wrong and what would be accepted, like the SDK's other argument checks.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re

from .models import _short

_SHORTEST = 8
_LONGEST = 30

# ipaddress alone would also take "10.0.1.0/255.255.255.0" or "10.0.1.0/024"; one spelling keeps the rules
# the same as the TypeScript SDK's.
_LENGTH = re.compile(r"0|[1-9][0-9]?")
_EXAMPLE = "such as 10.0.1.0/24"


def _network(prefix: str) -> ipaddress.IPv4Network:
    if not isinstance(prefix, str):
        raise ValueError(f"prefix must be a string {_EXAMPLE}, not {_short(prefix)}")
    address, slash, length = prefix.partition("/")
    network = None
    if slash and _LENGTH.fullmatch(length):
        with contextlib.suppress(ipaddress.AddressValueError):
            network = ipaddress.IPv4Address(address)
    if network is None:
        raise ValueError(f"prefix {_short(prefix)} is not an IPv4 prefix {_EXAMPLE}")
    bits = int(length)
    if not _SHORTEST <= bits <= _LONGEST:
        raise ValueError(f"prefix {prefix} is a /{bits}: a mesh prefix is from /{_SHORTEST} to /{_LONGEST}")
    net = ipaddress.IPv4Network((network, bits), strict=False)
    if net.network_address != network:
        raise ValueError(f"prefix {prefix} has host bits set: its network is {net}")
    return net


def _capacity(net: ipaddress.IPv4Network) -> int:
    return net.num_addresses - 2


def overlay_address(prefix: str, token_id: int) -> str:
    """The overlay address of seat ``token_id`` in ``prefix`` (``"10.0.1.0/24"``, 1 -> ``"10.0.1.1"``).

    Raises ``ValueError`` for a prefix that is not an IPv4 network from /8 to /30 (what the cluster contract
    takes), or a seat outside 1 to the prefix's capacity.
    """
    net = _network(prefix)
    # bool is an int in Python; True is no seat number.
    if not isinstance(token_id, int) or isinstance(token_id, bool):
        raise ValueError(f"token_id must be an integer, not {_short(token_id)}")
    capacity = _capacity(net)
    if not 1 <= token_id <= capacity:
        raise ValueError(
            f"seat {token_id} has no address in {prefix}: a /{net.prefixlen} holds seats 1 to {capacity}"
        )
    return str(net.network_address + token_id)


def seat_of(prefix: str, address: str) -> int:
    """The seat whose overlay address in ``prefix`` is ``address`` (``"10.0.1.0/24"``, ``"10.0.1.1"`` -> 1).

    Raises ``ValueError`` for a prefix as :func:`overlay_address` does, an address that is not IPv4 or
    outside the prefix, or the prefix's network or broadcast address, which no seat has.
    """
    net = _network(prefix)
    if not isinstance(address, str):
        raise ValueError(f"address must be a string such as 10.0.1.1, not {_short(address)}")
    try:
        ip = ipaddress.IPv4Address(address)
    except ipaddress.AddressValueError:
        raise ValueError(f"address {_short(address)} is not an IPv4 address such as 10.0.1.1") from None
    first, last = net.network_address + 1, net.broadcast_address - 1
    if ip not in net:
        raise ValueError(f"address {ip} is outside {prefix}, whose seats are {first} to {last}")
    if ip in (net.network_address, net.broadcast_address):
        which = "network" if ip == net.network_address else "broadcast"
        raise ValueError(
            f"address {ip} is the {which} address of {prefix}, which no seat has: "
            f"its seats are {first} to {last}"
        )
    return int(ip) - int(net.network_address)

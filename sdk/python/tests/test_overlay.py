from __future__ import annotations

from typing import Any

import pytest

import dstack_p2p
from dstack_p2p import overlay_address, seat_of


@pytest.mark.parametrize(
    ("prefix", "seat", "address"),
    [
        ("10.0.1.0/24", 1, "10.0.1.1"),
        ("10.0.1.0/24", 254, "10.0.1.254"),
        ("10.1.0.0/16", 1, "10.1.0.1"),
        ("10.1.0.0/16", 255, "10.1.0.255"),
        ("10.1.0.0/16", 256, "10.1.1.0"),
        ("10.1.0.0/16", 300, "10.1.1.44"),
        ("10.1.0.0/16", 65534, "10.1.255.254"),
        ("192.168.4.0/22", 1022, "192.168.7.254"),
        ("200.1.0.0/16", 300, "200.1.1.44"),
        ("10.0.0.0/8", 16777214, "10.255.255.254"),
        ("10.0.1.8/30", 2, "10.0.1.10"),
    ],
)
def test_a_seat_is_the_prefixs_nth_host_address(prefix: str, seat: int, address: str) -> None:
    assert overlay_address(prefix, seat) == address
    assert seat_of(prefix, address) == seat


@pytest.mark.parametrize(
    ("prefix", "seat", "message"),
    [
        ("10.0.1.0/24", 0, "seat 0 has no address in 10.0.1.0/24: a /24 holds seats 1 to 254"),
        ("10.0.1.0/24", 255, "seat 255 has no address in 10.0.1.0/24: a /24 holds seats 1 to 254"),
        ("10.0.1.0/24", -1, "seat -1 has no address in 10.0.1.0/24: a /24 holds seats 1 to 254"),
        ("10.1.0.0/16", 65535, "seat 65535 has no address in 10.1.0.0/16: a /16 holds seats 1 to 65534"),
        ("10.1.0.0/16", 2**40, "a /16 holds seats 1 to 65534"),
        ("10.0.1.8/30", 3, "seat 3 has no address in 10.0.1.8/30: a /30 holds seats 1 to 2"),
    ],
)
def test_a_seat_outside_the_prefix_is_refused_with_its_capacity(prefix: str, seat: int, message: str) -> None:
    with pytest.raises(ValueError) as info:
        overlay_address(prefix, seat)
    assert message in str(info.value)


@pytest.mark.parametrize("seat", [True, 1.0, "1", None])
def test_a_seat_must_be_an_integer(seat: Any) -> None:
    with pytest.raises(ValueError, match="token_id must be an integer"):
        overlay_address("10.0.1.0/24", seat)


@pytest.mark.parametrize(
    ("prefix", "message"),
    [
        ("10.0.1.0/31", "prefix 10.0.1.0/31 is a /31: a mesh prefix is from /8 to /30"),
        ("8.0.0.0/7", "prefix 8.0.0.0/7 is a /7: a mesh prefix is from /8 to /30"),
        ("10.0.1.0/32", "is a /32: a mesh prefix is from /8 to /30"),
        ("10.0.1.7/24", "prefix 10.0.1.7/24 has host bits set: its network is 10.0.1.0/24"),
        ("10.1.1.0/16", "prefix 10.1.1.0/16 has host bits set: its network is 10.1.0.0/16"),
        ("fd00::/64", "prefix 'fd00::/64' is not an IPv4 prefix such as 10.0.1.0/24"),
        ("10.0.1.0", "prefix '10.0.1.0' is not an IPv4 prefix"),
        ("10.0.1.0/", "is not an IPv4 prefix"),
        ("10.0.1.0/024", "is not an IPv4 prefix"),
        ("10.0.1.0/255.255.255.0", "is not an IPv4 prefix"),
        ("10.0.1/24", "is not an IPv4 prefix"),
        ("10.0.256.0/24", "is not an IPv4 prefix"),
        ("010.0.1.0/24", "is not an IPv4 prefix"),
        (" 10.0.1.0/24", "is not an IPv4 prefix"),
        ("", "prefix '' is not an IPv4 prefix"),
        (None, "prefix must be a string such as 10.0.1.0/24, not None"),
    ],
)
def test_a_bad_prefix_is_refused_by_both(prefix: Any, message: str) -> None:
    with pytest.raises(ValueError) as info:
        overlay_address(prefix, 1)
    assert message in str(info.value)
    with pytest.raises(ValueError) as info:
        seat_of(prefix, "10.0.1.1")
    assert message in str(info.value)


def test_seat_of_round_trips_every_seat_of_a_24_and_a_sample_of_a_16() -> None:
    for seat in range(1, 255):
        assert seat_of("10.0.1.0/24", overlay_address("10.0.1.0/24", seat)) == seat
    for seat in [*range(1, 600), *range(65000, 65535), 4096, 32767, 32768, 32769]:
        assert seat_of("10.1.0.0/16", overlay_address("10.1.0.0/16", seat)) == seat


@pytest.mark.parametrize(
    ("prefix", "address", "message"),
    [
        (
            "10.0.1.0/24",
            "10.0.1.0",
            "address 10.0.1.0 is the network address of 10.0.1.0/24, which no seat has: "
            "its seats are 10.0.1.1 to 10.0.1.254",
        ),
        ("10.0.1.0/24", "10.0.1.255", "address 10.0.1.255 is the broadcast address of 10.0.1.0/24"),
        ("10.1.0.0/16", "10.1.0.0", "the network address of 10.1.0.0/16"),
        (
            "10.1.0.0/16",
            "10.1.255.255",
            "the broadcast address of 10.1.0.0/16, which no seat has: its seats are 10.1.0.1 to 10.1.255.254",
        ),
        (
            "10.0.1.0/24",
            "10.0.2.1",
            "address 10.0.2.1 is outside 10.0.1.0/24, whose seats are 10.0.1.1 to 10.0.1.254",
        ),
        ("10.0.1.0/24", "10.0.0.255", "address 10.0.0.255 is outside 10.0.1.0/24"),
        ("10.1.0.0/16", "10.2.0.1", "address 10.2.0.1 is outside 10.1.0.0/16"),
        ("10.0.1.0/24", "10.0.1.1/32", "address '10.0.1.1/32' is not an IPv4 address such as 10.0.1.1"),
        ("10.0.1.0/24", "::1", "address '::1' is not an IPv4 address"),
        ("10.0.1.0/24", "10.0.1.01", "is not an IPv4 address"),
        ("10.0.1.0/24", 1, "address must be a string such as 10.0.1.1, not 1"),
    ],
)
def test_seat_of_refuses_what_no_seat_has(prefix: str, address: Any, message: str) -> None:
    with pytest.raises(ValueError) as info:
        seat_of(prefix, address)
    assert message in str(info.value)


def test_exported_from_the_package() -> None:
    assert {"overlay_address", "seat_of"} <= set(dstack_p2p.__all__)

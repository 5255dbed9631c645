"""Backoff: the SDK's one retry delay, which the event stream, follow_leader and the examples wait with."""

from __future__ import annotations

import pytest

import dstack_p2p
from dstack_p2p import Backoff
from dstack_p2p.backoff import BACKOFF_MAX, BACKOFF_START


def delays(backoff: Backoff, n: int) -> list[float]:
    return [backoff.next() for _ in range(n)]


def test_it_doubles_from_its_start_up_to_its_cap() -> None:
    assert delays(Backoff(0.5, 10.0, rand=lambda: 1.0), 7) == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_reset_starts_it_again() -> None:
    backoff = Backoff(1.0, 10.0, rand=lambda: 1.0)
    assert delays(backoff, 3) == [1.0, 2.0, 4.0]
    backoff.reset()
    assert delays(backoff, 2) == [1.0, 2.0]


def test_the_jitter_takes_at_most_half_of_each_delay() -> None:
    assert delays(Backoff(1.0, 4.0, rand=lambda: 0.0), 4) == [0.5, 1.0, 2.0, 2.0]
    for d, full in zip(delays(Backoff(1.0, 4.0), 200), [1.0, 2.0] + [4.0] * 198):
        assert full / 2 <= d <= full


def test_a_very_long_outage_stays_at_the_cap() -> None:
    backoff = Backoff(0.2, 5.0, rand=lambda: 1.0)
    assert delays(backoff, 5000)[-1] == 5.0


def test_the_event_streams_defaults_and_the_export() -> None:
    assert delays(Backoff(rand=lambda: 1.0), 6) == [BACKOFF_START * 2**i for i in range(5)] + [BACKOFF_MAX]
    assert "Backoff" in dstack_p2p.__all__


def test_a_cap_below_the_start_caps_the_first_delay_too() -> None:
    assert delays(Backoff(0.5, 0.3, rand=lambda: 1.0), 3) == [0.3, 0.3, 0.3]


@pytest.mark.parametrize(("start", "cap"), [(0.0, 1.0), (-1.0, 1.0), (1.0, 0.0)])
def test_a_backoff_that_cannot_back_off_is_refused(start: float, cap: float) -> None:
    with pytest.raises(ValueError, match="above 0"):
        Backoff(start, cap)

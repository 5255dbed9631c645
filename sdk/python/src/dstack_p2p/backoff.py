"""The SDK's one retry delay: exponential, capped, with jitter. The event stream's reconnection,
:func:`dstack_p2p.follow_leader` and the examples all wait with it.

    backoff = Backoff(0.5, 10.0)
    while True:
        try:
            await do_it()
        except OSError:
            await asyncio.sleep(backoff.next())
            continue
        backoff.reset()
"""

from __future__ import annotations

import random
from collections.abc import Callable

#: The event stream's reconnection delays: from BACKOFF_START seconds, doubling up to BACKOFF_MAX.
BACKOFF_START = 0.2
BACKOFF_MAX = 5.0


class Backoff:
    """Exponential delays with "equal jitter": half the delay fixed, half random, so that many clients
    that lost the same agent do not come back in step, and none retries at once.

    The n-th :meth:`next` since the last :meth:`reset` (from 0) is between half and all of
    ``min(cap, start * 2**n)`` seconds (a cap below the start caps the first delay too). ``rand`` (``random.random`` unless given) draws the jitter, in
    [0, 1): ``lambda: 1.0`` gives the plain doubling ``start, 2*start, ...`` up to ``cap``.
    """

    def __init__(
        self,
        start: float = BACKOFF_START,
        cap: float = BACKOFF_MAX,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if not (start > 0 and cap > 0):
            raise ValueError(f"a backoff needs a start and a cap above 0, not start {start} and cap {cap}")
        self.start = start
        self.cap = cap
        self._rand = rand
        self._failures = 0

    def next(self) -> float:
        """The delay before the next attempt, in seconds; the one after is twice as long, up to the cap."""
        delay: float = min(self.cap, self.start * 2.0**self._failures)
        # Bounded, so that 2**failures cannot overflow after a very long outage.
        self._failures = min(self._failures + 1, 32)
        return delay / 2 + self._rand() * delay / 2

    def reset(self) -> None:
        """After a success: the next delay is ``start`` again."""
        self._failures = 0

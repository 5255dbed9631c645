"""Blocking wrappers: the async core run on a private event loop, for code that has none.

Each call runs to completion on that loop, in the calling thread; it is not a second implementation, so the
behaviour (errors, checks, reconnection) is the async client's. Use one instance from one thread at a time,
and not from inside a running event loop (use :class:`~dstack_p2p.DStackP2PSDK` there).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, Literal, TypeVar, overload

from .client import DStackP2PSDK
from .models import Health, Leader, Peer, Reconnected, Status

T = TypeVar("T")


class DStackP2P:
    """The blocking twin of :class:`~dstack_p2p.DStackP2PSDK`; same arguments, same methods."""

    def __init__(
        self,
        contract: str | None = None,
        mode: str | None = None,
        *,
        api: str | os.PathLike[str] | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.sdk = DStackP2PSDK(contract, mode, api=api, timeout=timeout)
        self._loop = asyncio.new_event_loop()

    @property
    def api(self) -> str:
        return self.sdk.api

    def __enter__(self) -> DStackP2P:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connections and the private loop; the object cannot be used after."""
        if self._loop.is_closed():
            return
        try:
            # A Ctrl-C in a blocking call leaves its task behind on the loop.
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            if pending:
                self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.run_until_complete(self.sdk.aclose())
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        finally:
            self._loop.close()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            coro.close()
            raise RuntimeError(
                "DStackP2P blocks, so it cannot run inside a running event loop: use DStackP2PSDK there "
                "and await its methods"
            )
        if self._loop.is_closed():
            coro.close()
            raise RuntimeError("this DStackP2P is closed: make a new one")
        return self._loop.run_until_complete(coro)

    def status(self) -> Status:
        return self._run(self.sdk.status())

    def register(self, timeout: float = 120.0, poll: float = 0.5) -> bool:
        """Waits until this node is registered; see :meth:`DStackP2PSDK.register` (it sends nothing: the
        agent registers by itself)."""
        return self._run(self.sdk.register(timeout=timeout, poll=poll))

    def peers(self) -> list[Peer]:
        return self._run(self.sdk.peers())

    def get_peers(self) -> list[str]:
        return self._run(self.sdk.get_peers())

    def leader(self) -> Leader:
        return self._run(self.sdk.leader())

    def health(self) -> Health:
        return self._run(self.sdk.health())

    def set_healthy(self, healthy: bool, reason: str | None = None, ttl: float | None = None) -> Health:
        """Reports this application's health to the agent; see :meth:`DStackP2PSDK.set_healthy`."""
        return self._run(self.sdk.set_healthy(healthy, reason, ttl))

    @overload
    def monitor_peers(
        self,
        callback: Callable[[list[str]], object],
        *,
        on_leader: Callable[[Leader], object] | None = None,
        detailed: Literal[False] = False,
        on_reconnect: Callable[[Reconnected], object] | None = None,
        duration: float | None = None,
    ) -> None: ...

    @overload
    def monitor_peers(
        self,
        callback: Callable[[list[Peer]], object],
        *,
        on_leader: Callable[[Leader], object] | None = None,
        detailed: Literal[True],
        on_reconnect: Callable[[Reconnected], object] | None = None,
        duration: float | None = None,
    ) -> None: ...

    def monitor_peers(
        self,
        callback: Callable[[Any], object],
        *,
        on_leader: Callable[[Leader], object] | None = None,
        detailed: bool = False,
        on_reconnect: Callable[[Reconnected], object] | None = None,
        duration: float | None = None,
    ) -> None:
        """Blocks, calling ``callback`` with the current peers and then each change (of the address list,
        or with ``detailed=True`` of any peer), as
        :meth:`DStackP2PSDK.monitor_peers` does. Returns after ``duration`` seconds if given; otherwise runs
        until a callback raises (the exception propagates) or the process is interrupted."""
        self._run(
            _for(
                self.sdk.monitor_peers(
                    callback,
                    on_leader=on_leader,
                    detailed=detailed,
                    on_reconnect=on_reconnect,  # type: ignore[call-overload]
                ),
                duration,
            )
        )

    def monitor_leader(
        self,
        callback: Callable[[Leader], object],
        *,
        on_reconnect: Callable[[Reconnected], object] | None = None,
        duration: float | None = None,
    ) -> None:
        """Blocks, calling ``callback`` with the current leader and then each change of it; see
        :meth:`monitor_peers` for ``duration``."""
        self._run(_for(self.sdk.monitor_leader(callback, on_reconnect=on_reconnect), duration))


async def _for(coro: Coroutine[Any, Any, Any], duration: float | None) -> None:
    """Runs a monitor for ``duration`` seconds, or for ever when None.

    Not ``asyncio.wait_for``: its TimeoutError would be indistinguishable from one a callback raised.
    """
    task = asyncio.ensure_future(coro)
    try:
        done, _ = await asyncio.wait({task}, timeout=duration)
    except BaseException:
        task.cancel()
        raise
    if task in done:
        task.result()
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task

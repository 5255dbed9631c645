"""The async client of the agent's local API: the SDK's core, which the sync wrapper runs on its own loop."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, Literal, NoReturn, overload

import httpx

from ._version import __version__
from .endpoint import ApiEndpoint, resolve_api, unreachable_message
from .errors import AgentError, AgentUnreachable, ConfigMismatch, ProtocolError, RegistrationError
from .events import ServerSentEvent, aiter_events
from .models import Health, Leader, Peer, Reconnected, Status, _short, addresses, peers_from_json
from .monitor import follow

log = logging.getLogger("dstack_p2p")

#: The agent's modes.
MODES = ("wireguard", "tls")

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")

#: The longest ``reason`` a health report may give (the agent's limit: it goes into logs and every peer's
#: view of this node).
MAX_HEALTH_REASON = 200

# C0 and C1 controls, DEL included: what the agent refuses in a reason (it must stay one line in a log).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class DStackP2PSDK:
    """The dstack-mesh agent's local API, from an application on the same node.

    ``contract`` (the cluster contract's address) and ``mode`` (``"wireguard"`` or ``"tls"``) are optional
    checks: when given, the first call reads the agent's status and raises :class:`ConfigMismatch` if the
    agent serves another cluster or runs in another mode, so that an app wired to the wrong agent fails at
    once rather than talking to the wrong peers.

    ``api`` is where the agent's API is: a unix socket path, or a loopback URL such as
    ``http://127.0.0.1:8000``. When ``None``: ``$DSTACK_MESH_API``, else ``/run/p2p-agent/api.sock`` if it
    exists, else ``http://127.0.0.1:8000`` (the compose sidecar's). ``timeout`` bounds each request, in
    seconds.

    Use it as ``async with DStackP2PSDK(...) as sdk:``, or call :meth:`aclose` when done. Its connections
    belong to the event loop that opened them: used from another loop later, it opens new ones and leaves
    the old ones to the garbage collector.
    """

    def __init__(
        self,
        contract: str | None = None,
        mode: str | None = None,
        *,
        api: str | os.PathLike[str] | None = None,
        timeout: float = 5.0,
    ) -> None:
        if contract is not None and not _ADDRESS.fullmatch(contract.strip()):
            raise ValueError(
                f"contract {contract!r} is not a contract address (0x and 40 hex digits): pass the cluster "
                f"contract's address, or None to skip the check"
            )
        if mode is not None and mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)} (or None to skip the check)")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        self.contract = contract.strip() if contract is not None else None
        self.mode = mode
        self.timeout = timeout
        self.endpoint: ApiEndpoint = resolve_api(api)
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._checked = False
        self._closed = False

    @property
    def api(self) -> str:
        """The socket path or URL in use."""
        return self.endpoint.address

    def __repr__(self) -> str:
        return f"DStackP2PSDK(contract={self.contract!r}, mode={self.mode!r}, api={self.api!r})"

    async def __aenter__(self) -> DStackP2PSDK:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes the connections; the SDK cannot be used after."""
        self._closed = True
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    # --- the API -------------------------------------------------------------------------------------

    async def status(self) -> Status:
        """``GET /v1/status``: the agent, this node and the chain. Does no contract/mode check."""
        return Status.from_json(await self._get_json("/v1/status"))

    async def register(self, timeout: float = 120.0, poll: float = 0.5) -> bool:
        """Waits until this node's record is on-chain; True once it is.

        The agent registers the node by itself as soon as a seat of the cluster is bound to its instance:
        this method sends nothing, it polls the agent's status every ``poll`` seconds and waits.

        Returns False if ``timeout`` seconds pass while the agent is still trying without reporting an
        error (e.g. waiting for a transaction to be mined). Raises :class:`RegistrationError` with the
        agent's own text as soon as it reports why it cannot register: no seat bound to this instance (the
        text carries the ``meshctl bind --instance`` command for the holder), no funded sender, or the chain's
        RPC failing. Raises :class:`ConfigMismatch` if the agent serves another contract or mode, and
        :class:`AgentUnreachable` if the agent cannot be reached at first (once it has answered, a restart
        of the agent during the wait is waited out).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        answered = False
        while True:
            try:
                status = await self.status()
            except AgentUnreachable as e:
                if not answered or loop.time() >= deadline:
                    raise
                log.info("the agent is not answering while registering (%s); still waiting", e)
            else:
                answered = True
                self._check(status)
                self._checked = True
                if status.node.registered:
                    return True
                if status.node.registration_error:
                    raise RegistrationError(status.node.registration_error)
                if status.chain.last_error:
                    raise RegistrationError(status.chain.last_error, source="chain")
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            await asyncio.sleep(min(poll, remaining))

    async def peers(self) -> list[Peer]:
        """``GET /v1/peers``: every peer with every field, in tokenId order."""
        await self._ensure_checked()
        return peers_from_json(await self._get_json("/v1/peers"))

    async def get_peers(self) -> list[str]:
        """The address to connect to for each peer that has one, in tokenId order: its overlay IP while the
        tunnel is up, its gateway URL otherwise. Peers reachable neither way are left out."""
        return addresses(await self.peers())

    async def leader(self) -> Leader:
        """``GET /v1/leader``: the cluster's elected leader (``token_id`` None when there is none).

        ``is_self`` is true only while this node leads under a lease that holds now, and ``term`` is the
        fencing term to tag writes with: see :class:`Leader`."""
        await self._ensure_checked()
        return Leader.from_json(await self._get_json("/v1/leader"))

    async def health(self) -> Health:
        """``GET /v1/health``: whether this node is fit to lead, by this application's last report
        (:meth:`set_healthy`) and the agent's own check (``--health-url``, ``--health-cmd``)."""
        await self._ensure_checked()
        return Health.from_json(await self._get_json("/v1/health"))

    async def set_healthy(self, healthy: bool, reason: str | None = None, ttl: float | None = None) -> Health:
        """Reports this application's health to the agent (``POST /v1/health``); returns the node's health.

        Leadership depends on it: while the report says unhealthy this node never reports ``is_self``, casts
        no vote or election, and if it leads, the other nodes vote it out after their ``--leader-timeout``.
        ``reason`` (at most 200 characters, one line) is shown in ``Leader.reason`` and the agent's log.

        With ``ttl`` (seconds, above 0) the report holds that long and then counts as unhealthy until the
        next one, so an application that renews it more often than ``ttl`` makes its node unhealthy by
        crashing or hanging; without it the report holds until the next one. The agent keeps one report
        per node: the last one sent wins, whichever process sent it.

        Raises ``ValueError`` for an argument the agent would refuse, :class:`AgentError` with the agent's
        text when it refuses the report (403: sent to an ``--api-listen`` address that is not loopback;
        405: an agent older than this API), and :class:`AgentUnreachable` as every call does.
        """
        if not isinstance(healthy, bool):
            raise ValueError(f"healthy must be True or False, not {healthy!r}")
        body: dict[str, object] = {"healthy": healthy}
        if reason is not None:
            if not isinstance(reason, str):
                raise ValueError(f"reason must be a string or None, not {_short(reason)}")
            if len(reason) > MAX_HEALTH_REASON:
                raise ValueError(
                    f"reason has {len(reason)} characters; the agent takes at most {MAX_HEALTH_REASON}: "
                    f"shorten it (it is shown in logs and in every peer's view of this node)"
                )
            if _CONTROL.search(reason):
                raise ValueError(
                    f"reason {_short(reason)} contains control characters (a newline, say): give one line of "
                    f"text, e.g. the first line of the error"
                )
            body["reason"] = reason
        if ttl is not None:
            if (
                isinstance(ttl, bool)
                or not isinstance(ttl, (int, float))
                or not math.isfinite(ttl)
                or ttl <= 0
            ):
                raise ValueError(
                    f"ttl must be a number of seconds above 0, not {ttl!r}, or None for a report that holds "
                    f"until the next one"
                )
            body["ttlSecs"] = ttl
        await self._ensure_checked()
        return Health.from_json(await self._post_json("/v1/health", body))

    @overload
    async def monitor_peers(
        self,
        callback: Callable[[list[str]], object],
        *,
        on_leader: Callable[[Leader], object] | None = None,
        detailed: Literal[False] = False,
        on_reconnect: Callable[[Reconnected], object] | None = None,
    ) -> NoReturn: ...

    @overload
    async def monitor_peers(
        self,
        callback: Callable[[list[Peer]], object],
        *,
        on_leader: Callable[[Leader], object] | None = None,
        detailed: Literal[True],
        on_reconnect: Callable[[Reconnected], object] | None = None,
    ) -> NoReturn: ...

    async def monitor_peers(
        self,
        callback: Callable[[Any], object],
        *,
        on_leader: Callable[[Leader], object] | None = None,
        detailed: bool = False,
        on_reconnect: Callable[[Reconnected], object] | None = None,
    ) -> NoReturn:
        """Follows the peer list until cancelled: ``callback`` gets the current list first, then each
        change.

        The list is what :meth:`get_peers` returns, and ``callback`` is called again only when that list
        of addresses differs from the last one it got: a peer's health, path or leadership changing with
        the same addresses calls nothing. With ``detailed=True`` it gets ``list[Peer]`` as :meth:`peers`
        does, on each change :meth:`Peer.change_key` says, the agent's own definition (its
        ``--on-change`` hook follows it too): a peer joining or leaving, or one's key, endpoint, address,
        connection, path, health or leadership changing; never traffic counters or handshake times alone.
        ``on_leader`` gets a :class:`Leader` first and then whenever what an application acts on changes:
        ``token_id``, ``address``, ``reachable``, ``is_self``, ``term``, ``state``, ``healthy`` or
        ``reason`` (so it hears at once that this node's lease ended), not when only ``age_ms`` or
        ``lease_ms`` moved. Callbacks may be plain functions or coroutine functions; what they raise
        propagates out of this method.

        When the stream is lost (the agent stopped or restarted) it reconnects, waiting from 0.2 s doubling
        to 5 s with jitter, and calls the callbacks again only if what they would get differs from what
        they got last, so a restart with the same peers is no change. Each loss is logged as a WARNING on
        the ``dstack_p2p`` logger, each reconnection as an INFO, and ``on_reconnect`` gets a
        :class:`Reconnected`. Failing to connect at the start raises :class:`AgentUnreachable`.
        """
        await self._ensure_checked()
        await follow(
            self._event_stream,
            address=self.endpoint.describe(),
            on_peers=callback,
            on_leader=on_leader,
            detailed=detailed,
            on_reconnect=on_reconnect,
            recheck=self._recheck if self._has_checks else None,
        )

    async def monitor_leader(
        self,
        callback: Callable[[Leader], object],
        *,
        on_reconnect: Callable[[Reconnected], object] | None = None,
    ) -> NoReturn:
        """Follows the leader until cancelled: ``callback`` gets the current :class:`Leader` first, then
        one on each change, as ``on_leader`` of :meth:`monitor_peers` does. Reconnects as it does."""
        await self._ensure_checked()
        await follow(
            self._event_stream,
            address=self.endpoint.describe(),
            on_peers=None,
            on_leader=callback,
            detailed=False,
            on_reconnect=on_reconnect,
            recheck=self._recheck if self._has_checks else None,
        )

    # --- plumbing ------------------------------------------------------------------------------------

    @property
    def _has_checks(self) -> bool:
        return self.contract is not None or self.mode is not None

    def _check(self, status: Status) -> None:
        if self.contract is not None and self.contract.lower() != status.chain.contract.lower():
            raise ConfigMismatch(
                f"the dstack-mesh agent at {self.endpoint.describe()} serves cluster contract "
                f"{status.chain.contract}, but this SDK was given {self.contract}: the agent serves another "
                f"cluster. Fix DSTACK_MESH_CONTRACT (the agent's or this app's) or the SDK's contract "
                f"argument so that both name the same contract.",
                field="contract",
                expected=self.contract,
                actual=status.chain.contract,
            )
        if self.mode is not None and self.mode != status.mode:
            raise ConfigMismatch(
                f"the dstack-mesh agent at {self.endpoint.describe()} runs in mode {status.mode!r}, but "
                f"this SDK was given mode {self.mode!r}: the agent runs in another mode. Fix the agent's "
                f"DSTACK_MESH_MODE or the SDK's mode argument.",
                field="mode",
                expected=self.mode,
                actual=status.mode,
            )

    async def _ensure_checked(self) -> None:
        if self._checked or not self._has_checks:
            return
        self._check(await self.status())
        self._checked = True

    async def _recheck(self) -> None:
        self._check(await self.status())

    def _http(self) -> httpx.AsyncClient:
        if self._closed:
            raise RuntimeError("this DStackP2PSDK is closed: make a new one")
        loop = asyncio.get_running_loop()
        if self._client is not None and self._client_loop is not loop:
            # Pooled connections belong to the loop that opened them; a new loop (a second asyncio.run)
            # starts a new pool, and the old one goes with its loop.
            self._client = None
        if self._client is None:
            self._client_loop = loop
            transport = httpx.AsyncHTTPTransport(uds=self.endpoint.socket)
            self._client = httpx.AsyncClient(
                base_url=self.endpoint.base_url,
                transport=transport,
                timeout=httpx.Timeout(self.timeout),
                # A local API never goes through a proxy, whatever HTTP_PROXY says.
                trust_env=False,
                headers={"user-agent": f"dstack-p2p-python/{__version__}"},
            )
        return self._client

    def _unreachable(self, error: httpx.TransportError) -> AgentUnreachable:
        return AgentUnreachable(
            unreachable_message(self.endpoint, error, self.timeout), address=self.endpoint.address
        )

    async def _get_json(self, path: str) -> object:
        try:
            response = await self._http().get(path, headers={"accept": "application/json"})
        except httpx.TransportError as e:
            raise self._unreachable(e) from e
        return self._json_reply(response, "GET", path)

    async def _post_json(self, path: str, body: object) -> object:
        try:
            response = await self._http().post(path, json=body, headers={"accept": "application/json"})
        except httpx.TransportError as e:
            raise self._unreachable(e) from e
        return self._json_reply(response, "POST", path)

    def _json_reply(self, response: httpx.Response, method: str, path: str) -> object:
        if response.status_code != 200:
            raise _http_error(response, path, method)
        try:
            return json.loads(response.content)
        except ValueError:
            raise ProtocolError(
                f"the reply to {method} {path} from {self.endpoint.describe()} is not JSON: is the "
                f"dstack-mesh agent what serves this address?"
            ) from None

    @asynccontextmanager
    async def _event_stream(self) -> AsyncIterator[AsyncIterator[ServerSentEvent]]:
        path = "/v1/events"
        client = self._http()
        request = client.build_request(
            "GET",
            path,
            headers={"accept": "text/event-stream", "cache-control": "no-cache"},
            # Events come only on changes, so a quiet stream is not a dead one.
            timeout=httpx.Timeout(self.timeout, read=None),
        )
        # Only the SDK's own I/O is turned into its errors: the body of this context runs the caller's
        # callbacks, whose exceptions must pass through untouched.
        try:
            response = await client.send(request, stream=True)
        except httpx.TransportError as e:
            raise self._unreachable(e) from e
        try:
            if response.status_code != 200:
                try:
                    await response.aread()
                except httpx.TransportError as e:
                    raise self._unreachable(e) from e
                raise _http_error(response, path)
            chunks = self._chunks(response)
            events = aiter_events(chunks)
            try:
                yield events
            finally:
                await events.aclose()
                await chunks.aclose()
        finally:
            await response.aclose()

    async def _chunks(self, response: httpx.Response) -> AsyncGenerator[bytes, None]:
        try:
            async for chunk in response.aiter_bytes():
                yield chunk
        except httpx.TransportError as e:
            # Only follow() sees this, and it names the address itself.
            raise AgentUnreachable(f"the stream broke: {e}", address=self.endpoint.address) from e


def _http_error(response: httpx.Response, path: str, method: str = "GET") -> AgentError:
    """The agent's error text from its ``{"error": ...}`` body, and nothing else of the reply."""
    text = response.reason_phrase or "error"
    try:
        body = json.loads(response.content)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        text = body["error"]
    return AgentError(response.status_code, text, path=path, method=method)


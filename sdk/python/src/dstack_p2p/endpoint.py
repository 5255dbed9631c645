"""Where the agent's API is: a unix socket, or loopback TCP, found from the argument, the environment or the
defaults, and how to say that it cannot be reached."""

from __future__ import annotations

import errno
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

#: The variable naming the API: a socket path or a loopback URL.
ENV_VAR = "DSTACK_MESH_API"
#: Where the agent serves its API unless told otherwise.
DEFAULT_SOCKET = "/run/p2p-agent/api.sock"
#: Where the compose sidecar's agent serves it, to the containers sharing its network namespace.
DEFAULT_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True)
class ApiEndpoint:
    """The API's address: ``socket`` (a path) or ``url`` (loopback HTTP), and where that choice came from."""

    socket: str | None
    url: str | None
    #: ``"argument"``, ``"DSTACK_MESH_API"``, ``"default socket"`` or ``"default URL"``.
    source: str

    @property
    def address(self) -> str:
        """The socket path or the URL, as the messages name it."""
        return self.socket if self.socket is not None else str(self.url)

    @property
    def base_url(self) -> str:
        # Over a socket the host is only the Host header, which the agent ignores.
        return self.url if self.url is not None else "http://localhost"

    def describe(self) -> str:
        kind = "unix socket" if self.socket is not None else "URL"
        return f"{kind} {self.address} (from {self.source})"


def parse_api(api: str | os.PathLike[str], source: str = "argument") -> ApiEndpoint:
    """A socket path, or an ``http://`` URL on a loopback address; anything else raises ``ValueError``."""
    raw = os.fspath(api)
    if not raw:
        raise ValueError(
            f"the agent API address from {source} is empty: give its socket path "
            f"(e.g. {DEFAULT_SOCKET}) or its loopback URL (e.g. {DEFAULT_URL})"
        )
    if raw.startswith("unix:"):
        # The form some tools write (unix:/path, unix:///path); the path is what matters.
        path = raw[len("unix:") :]
        path = "/" + path.lstrip("/") if path.startswith("//") else path
        if not path:
            raise ValueError(f"{raw!r} (from {source}) names no socket path, e.g. unix:{DEFAULT_SOCKET}")
        return ApiEndpoint(socket=path, url=None, source=source)
    if "://" not in raw:
        return ApiEndpoint(socket=raw, url=None, source=source)
    parts = urlsplit(raw)
    if parts.scheme != "http":
        raise ValueError(
            f"{raw!r} (from {source}): the agent's API is plain HTTP on loopback or a unix socket, "
            f"so give a socket path or http://127.0.0.1:<port>"
        )
    host = parts.hostname or ""
    if not _is_loopback(host):
        raise ValueError(
            f"{raw!r} (from {source}) is not a loopback address: the agent's API is local only, served on "
            f"its unix socket or on 127.0.0.1 to containers sharing its network namespace. Give the socket "
            f"path or {DEFAULT_URL}; to reach another node, use the addresses get_peers() returns"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(
            f"{raw!r} (from {source}): give the API's base URL, like {DEFAULT_URL}, without a path"
        )
    try:
        port = parts.port
    except ValueError as e:
        raise ValueError(f"{raw!r} (from {source}): {e}") from None
    netloc = f"[{host}]" if ":" in host else host
    url = f"http://{netloc}" + (f":{port}" if port is not None else "")
    return ApiEndpoint(socket=None, url=url, source=source)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        # A name other than localhost could resolve anywhere.
        return False


def resolve_api(
    api: str | os.PathLike[str] | None,
    env: Mapping[str, str] | None = None,
    default_socket: str = DEFAULT_SOCKET,
) -> ApiEndpoint:
    """The argument if given; else ``DSTACK_MESH_API``; else the default socket if it exists; else the
    compose sidecar's loopback URL."""
    if api is not None:
        return parse_api(api, "argument")
    env = os.environ if env is None else env
    from_env = env.get(ENV_VAR, "").strip()
    if from_env:
        return parse_api(from_env, ENV_VAR)
    if os.path.exists(default_socket):
        return ApiEndpoint(socket=default_socket, url=None, source="default socket")
    return ApiEndpoint(socket=None, url=DEFAULT_URL, source="default URL")


def unreachable_message(endpoint: ApiEndpoint, cause: BaseException | None, timeout: float) -> str:
    """Why the agent cannot be reached, and what to check, from the error behind it."""
    os_error = _os_error(cause)
    code = os_error.errno if os_error is not None else None
    where = endpoint.describe()
    hint_api = (
        f"Set {ENV_VAR} to the agent's socket path, or to {DEFAULT_URL} when the agent serves loopback TCP "
        f"in this network namespace (the compose sidecar)."
    )
    if _is_timeout(cause):
        return f"the dstack-mesh agent at {where} did not answer within {timeout:g} s: is it stuck?"
    if endpoint.socket is not None:
        if code == errno.ENOENT:
            return (
                f"cannot reach the dstack-mesh agent: no socket at {where}. Is the agent running, and is its "
                f"socket's directory mounted into this container? {hint_api}"
            )
        if code in (errno.EACCES, errno.EPERM):
            return (
                f"cannot open the dstack-mesh agent's {where}: permission denied. The socket is mode 0660 "
                f"by default: run as its owner or in its group (the agent's --api-socket-group), or read "
                f"the API over loopback TCP instead. {hint_api}"
            )
        if code == errno.ECONNREFUSED:
            return (
                f"cannot reach the dstack-mesh agent: its {where} exists but nothing accepts on it. Is the "
                f"agent running (or restarting)?"
            )
        if code == errno.ENOTSOCK:
            return f"cannot reach the dstack-mesh agent: {where} is not a socket. {hint_api}"
    elif code == errno.ECONNREFUSED:
        return (
            f"cannot connect to the dstack-mesh agent at {where}: connection refused. Is the agent running "
            f"and serving its API there (DSTACK_MESH_API_LISTEN), and does this container share its network "
            f"namespace (network_mode: service:<the agent's>)? {hint_api}"
        )
    detail = str(os_error) if os_error is not None else (str(cause) if cause is not None else "")
    detail = f" ({detail})" if detail else ""
    return f"cannot reach the dstack-mesh agent at {where}{detail}. Is the agent running? {hint_api}"


def _causes(error: BaseException | None) -> list[BaseException]:
    seen: list[BaseException] = []
    while error is not None and all(error is not s for s in seen):
        seen.append(error)
        error = error.__cause__ or error.__context__
    return seen


def _os_error(error: BaseException | None) -> OSError | None:
    for e in _causes(error):
        if isinstance(e, OSError) and e.errno is not None:
            return e
    return None


def _is_timeout(error: BaseException | None) -> bool:
    return any(isinstance(e, (httpx.TimeoutException, TimeoutError)) for e in _causes(error))

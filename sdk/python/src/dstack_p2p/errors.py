"""What can go wrong talking to the agent, one class per thing the caller would do differently."""

from __future__ import annotations


class DStackP2PError(Exception):
    """Every error this SDK raises on purpose (argument mistakes are plain ``ValueError``)."""


class AgentUnreachable(DStackP2PError):
    """The agent's API could not be reached: no socket, nothing listening, or no answer in time.

    ``address`` is where the SDK looked (a socket path or a loopback URL).
    """

    def __init__(self, message: str, *, address: str) -> None:
        super().__init__(message)
        self.address = address


class AgentError(DStackP2PError):
    """The agent answered with an HTTP error. ``status`` is the HTTP status, ``error`` the agent's text,
    ``method`` and ``path`` the request's."""

    def __init__(self, status: int, error: str, *, path: str, method: str = "GET") -> None:
        super().__init__(f"the agent answered {status} to {method} {path}: {error}")
        self.status = status
        self.error = error
        self.path = path
        self.method = method


class ProtocolError(DStackP2PError):
    """The agent's reply is not what this SDK understands (not JSON, or a field missing or mistyped).

    Seen with an agent much older than the SDK, or with something else serving the address.
    """


class ConfigMismatch(DStackP2PError):
    """The agent serves another cluster contract or runs in another mode than the SDK was given.

    ``field`` is ``"contract"`` or ``"mode"``; ``expected`` is what the SDK was given, ``actual`` what the
    agent reports.
    """

    def __init__(self, message: str, *, field: str, expected: str, actual: str) -> None:
        super().__init__(message)
        self.field = field
        self.expected = expected
        self.actual = actual


class RegistrationError(DStackP2PError):
    """The agent reports that it cannot register this node; ``reason`` is its text, verbatim.

    The text says what to do: with no seat bound to this instance it includes the ``meshctl bind --instance`` command
    for the cluster owner; with no funded sender, which account to fund. ``source`` is ``"registration"``
    for the agent's registration error, ``"chain"`` when the chain's RPC is failing (``reason`` is then
    the RPC's error, and the message says so).
    """

    def __init__(self, reason: str, *, source: str = "registration") -> None:
        message = reason
        if source == "chain":
            message = f"the agent cannot read the chain, so this node is not registered: {reason}"
        super().__init__(message)
        self.reason = reason
        self.source = source

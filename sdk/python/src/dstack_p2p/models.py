"""The API's replies as typed dataclasses, with snake_case attributes for its camelCase fields.

Parsing ignores fields it does not know, because the API grows; a field this SDK needs that is missing or of
the wrong type raises :class:`~dstack_p2p.errors.ProtocolError` rather than surfacing later as a
``KeyError`` in the caller's code. Fields the agent added after its first release (``leader``,
``registrationError``, ``path``, ``relayUrl``, ``relaySeat``, the chain's ``prefix``, and the leader's
``term``, ``state``, ``ageMs``, ``leaseMs``, ``healthy`` and ``reason``, the ``policy`` of the status and
of each peer, and the status's ``peerRelay``) fall back to their "nothing to report" value when absent.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

from .errors import ProtocolError

T = TypeVar("T")

#: ``Peer.connection`` values: over the tunnel, over the peer's TLS-gateway URL, or neither.
CONNECTION_WIREGUARD = "wireguard"
CONNECTION_TLS_GATEWAY = "tls-gateway"
CONNECTION_UNREACHABLE = "unreachable"

#: ``Leader.state`` values: what this node knows of the leader was confirmed less than a lease ago, longer
#: ago, or never since its agent started.
LEADER_CURRENT = "current"
LEADER_STALE = "stale"
LEADER_UNKNOWN = "unknown"
LEADER_STATES = (LEADER_CURRENT, LEADER_STALE, LEADER_UNKNOWN)

_MISSING = object()


class _Fields:
    """Reads one JSON object's fields by type, naming the object and field in its errors."""

    def __init__(self, value: object, what: str) -> None:
        if not isinstance(value, Mapping):
            raise ProtocolError(f"the agent's {what} is not a JSON object: {_short(value)}")
        self._obj: Mapping[str, Any] = value
        self._what = what

    def _get(self, key: str, kind: type[T], *, nullable: bool, default: object = _MISSING) -> T | None:
        value = self._obj.get(key, _MISSING)
        if value is _MISSING:
            if default is _MISSING:
                raise ProtocolError(
                    f"the agent's {self._what} has no field {key!r}: is the agent older than this SDK?"
                )
            value = default
        if value is None and nullable:
            return None
        # bool is an int in Python; a JSON true where a number belongs is still wrong.
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise ProtocolError(f"the agent's {self._what} has {key!r} = {_short(value)}, of the wrong type")
        return value

    def text(self, key: str) -> str:
        return _present(self._get(key, str, nullable=False))

    def opt_text(self, key: str) -> str | None:
        return self._get(key, str, nullable=True, default=None)

    def integer(self, key: str, default: object = _MISSING) -> int:
        return _present(self._get(key, int, nullable=False, default=default))

    def opt_integer(self, key: str) -> int | None:
        return self._get(key, int, nullable=True, default=None)

    def flag(self, key: str, default: object = _MISSING) -> bool:
        return _present(self._get(key, bool, nullable=False, default=default))

    def opt_flag(self, key: str) -> bool | None:
        return self._get(key, bool, nullable=True, default=None)

    def mapping(self, key: str) -> object:
        return self._get(key, Mapping, nullable=False)

    def opt_mapping(self, key: str) -> object | None:
        return self._get(key, Mapping, nullable=True, default=None)

    def choice(self, key: str, values: tuple[str, ...], default: object = _MISSING) -> str:
        value = _present(self._get(key, str, nullable=False, default=default))
        if value not in values:
            raise ProtocolError(
                f"the agent's {self._what} has {key!r} = {_short(value)}, not one of {', '.join(values)}: "
                f"is the agent newer than this SDK?"
            )
        return value

    def integers(self, key: str) -> list[int]:
        """A list of integers; an empty one when the field is absent (an older agent)."""
        value = _present(self._get(key, list, nullable=False, default=[]))
        if not all(isinstance(item, int) and not isinstance(item, bool) for item in value):
            raise ProtocolError(f"the agent's {self._what} has {key!r} = {_short(value)}, not a list of integers")
        return list(value)

    def counts(self, key: str) -> dict[str, int]:
        """Counts by name (``{"full": 2}``); an empty map when the field is absent."""
        value = _present(self._get(key, Mapping, nullable=False, default={}))
        # JSON's keys are strings; each value must be a count.
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in value.values()):
            raise ProtocolError(
                f"the agent's {self._what} has {key!r} = {_short(value)}, not a map of counts"
            )
        return dict(value)

    def texts(self, key: str, default: object = _MISSING) -> list[str]:
        value = _present(self._get(key, list, nullable=False, default=default))
        if not all(isinstance(item, str) for item in value):
            raise ProtocolError(f"the agent's {self._what} has {key!r} = {_short(value)}, not a list of strings")
        return list(value)


def _present(value: T | None) -> T:
    # _get returns None only when nullable; this narrows the type for the callers that are not.
    assert value is not None
    return value


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


#: The protocols a grant between seats names ports of (:attr:`Ports.tcp`, :attr:`Ports.udp`).
PROTOCOLS = ("tcp", "udp")

#: ``"5432"`` or ``"8000-8080"``.
_PORT_RANGE = re.compile(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", re.ASCII)


def _check_port(port: int, protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r}: a grant names ports of tcp or udp only")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port {port!r}: a port is an integer from 0 to 65535")


@dataclass(frozen=True)
class Ports:
    """Destination ports by protocol, each a port (``"5432"``) or a range (``"8000-8080"``), as the agent
    writes them."""

    tcp: tuple[str, ...] = ()
    udp: tuple[str, ...] = ()

    def allows(self, port: int, protocol: str = "tcp") -> bool:
        """Whether ``port`` of ``protocol`` (``"tcp"`` or ``"udp"``) is one of these; an entry that is
        neither a port nor a range is left out."""
        _check_port(port, protocol)
        for entry in self.tcp if protocol == "tcp" else self.udp:
            match = _PORT_RANGE.fullmatch(entry)
            if match is not None and int(match[1]) <= port <= int(match[2] or match[1]):
                return True
        return False

    @classmethod
    def from_json(cls, value: object, what: str) -> Ports:
        f = _Fields(value, what)
        return cls(tcp=tuple(f.texts("tcp", default=[])), udp=tuple(f.texts("udp", default=[])))


@dataclass(frozen=True)
class PolicyDrops:
    """Packets the policy dropped here, by why: no grant lets the peer reach the port (``no_grant``), a
    protocol no grant can name (``protocol``: neither ICMP, TCP nor UDP), or too short to judge
    (``malformed``)."""

    no_grant: int = 0
    protocol: int = 0
    malformed: int = 0

    @classmethod
    def from_json(cls, value: object | None, what: str) -> PolicyDrops:
        if value is None:
            return cls()
        f = _Fields(value, what)
        return cls(
            no_grant=f.integer("noGrant", default=0),
            protocol=f.integer("protocol", default=0),
            malformed=f.integer("malformed", default=0),
        )


@dataclass(frozen=True)
class PeerPolicy:
    """What the grants between seats let pass between this node and one peer (``Peer.policy``)."""

    #: The ports the peer may open flows to on this node, as in force on this node's interface.
    reaches_here: Ports
    #: The ports this node may open flows to on the peer, by the grants (the peer enforces them).
    reachable_there: Ports
    #: The peer's packets dropped here since the agent started.
    dropped: PolicyDrops = PolicyDrops()

    @classmethod
    def from_json(cls, value: object) -> PeerPolicy:
        f = _Fields(value, "peer.policy")
        return cls(
            reaches_here=Ports.from_json(f.mapping("reachesHere"), "peer.policy.reachesHere"),
            reachable_there=Ports.from_json(f.mapping("reachableThere"), "peer.policy.reachableThere"),
            dropped=PolicyDrops.from_json(f.opt_mapping("dropped"), "peer.policy.dropped"),
        )


@dataclass(frozen=True)
class PolicyStatus:
    """The cluster's grants between seats, as this node's interface enforces them (``status.policy``)."""

    #: In force: a peer reaches only what a grant allows it. Not in force: every seat reaches every port.
    enforced: bool
    #: The contract's policy version the interface enforces: one more at every change.
    version: int
    #: How many grants it holds.
    grants: int
    #: This node's tags (its seat's and its app's), by name.
    own_tags: tuple[str, ...] = ()
    #: Peers' packets dropped here since the agent started.
    dropped: PolicyDrops = PolicyDrops()
    #: The version last read from the chain while the interface enforces another; ``None`` once it holds it.
    #: A change is in force here when ``version`` names it and this is ``None``.
    pending: int | None = None

    @classmethod
    def from_json(cls, value: object) -> PolicyStatus:
        f = _Fields(value, "status.policy")
        return cls(
            enforced=f.flag("enforced"),
            version=f.integer("version"),
            grants=f.integer("grants"),
            own_tags=tuple(f.texts("ownTags", default=[])),
            dropped=PolicyDrops.from_json(f.opt_mapping("dropped"), "status.policy.dropped"),
            pending=f.opt_integer("pending"),
        )


@dataclass(frozen=True)
class Peer:
    """One peer of this node, as ``GET /v1/peers`` lists it.

    ``address`` is what to connect to: the overlay IP while the tunnel is up, the peer's gateway URL
    otherwise, ``None`` when neither works.
    """

    token_id: int
    instance_id: str
    overlay_ip: str
    wg_public_key: str | None
    endpoint: str | None
    gateway_url: str | None
    #: ``"wireguard"``, ``"tls-gateway"`` or ``"unreachable"``.
    connection: str
    #: ``"direct"``, ``"punched"`` (UDP through holes punched in both NATs), ``"peer-relay"`` (UDP through
    #: another member that relays for the pair, ``relay_seat``) or ``"relay"`` (through the gateway) for a
    #: WireGuard peer, ``None`` for a peer with no tunnel.
    path: str | None
    relay_url: str | None
    address: str | None
    #: Whether it answers now: it sent something (data, a keepalive, an answer to the agent's probe) within
    #: the agent's peer timeout (2.5 s unless ``--peer-timeout-ms`` says otherwise).
    healthy: bool
    #: Unix seconds of the latest WireGuard handshake, ``None`` when there has been none.
    latest_handshake: int | None
    rx_bytes: int
    tx_bytes: int
    #: Whether this peer is the cluster's elected leader.
    leader: bool
    #: While relayed: why, and why hole punching has not brought it over UDP (``None`` otherwise).
    path_reason: str | None = None
    #: While on a peer relay: the seat relaying (``None`` otherwise, and from an agent without peer relays).
    relay_seat: int | None = None
    #: Unix seconds of the last time the peer was heard from, ``None`` when never (or from an older agent).
    last_heard: int | None = None
    #: Whether it is being drained: replica ports leave it out, and no leader is handed to it.
    draining: bool = False
    #: What the grants between seats let pass between it and this node; ``None`` while no policy is in force
    #: (every seat reaches every port), and from an agent older than grants.
    policy: PeerPolicy | None = None

    def may_reach(self, port: int, protocol: str = "tcp") -> bool:
        """Whether this node may open a flow to ``port`` (``"tcp"`` or ``"udp"``) on this peer, by the
        grants between seats: true for every port while no policy is in force. The peer enforces it: a flow
        it does not allow is dropped there, unanswered. (ICMP always passes.)"""
        if self.policy is None:
            _check_port(port, protocol)
            return True
        return self.policy.reachable_there.allows(port, protocol)

    def change_key(self) -> tuple[object, ...]:
        """What applications see as a change of this peer: who it is, where and how it is reached, whether
        it is healthy and whether it leads; not its counters or handshake time. The agent's definition
        (``Peer::change_key`` in ``mesh-api``), which its ``--on-change`` hook and ``/v1/events`` follow."""
        return (
            self.token_id,
            self.instance_id,
            self.wg_public_key,
            self.endpoint,
            self.address,
            self.connection,
            self.path,
            self.healthy,
            self.leader,
            self.draining,
        )

    @classmethod
    def from_json(cls, value: object) -> Peer:
        f = _Fields(value, "peer")
        return cls(
            token_id=f.integer("tokenId"),
            instance_id=f.text("instanceId"),
            overlay_ip=f.text("overlayIp"),
            wg_public_key=f.opt_text("wgPublicKey"),
            endpoint=f.opt_text("endpoint"),
            gateway_url=f.opt_text("gatewayUrl"),
            connection=f.text("connection"),
            path=f.opt_text("path"),
            relay_url=f.opt_text("relayUrl"),
            address=f.opt_text("address"),
            healthy=f.flag("healthy"),
            latest_handshake=f.opt_integer("latestHandshake"),
            rx_bytes=f.integer("rxBytes"),
            tx_bytes=f.integer("txBytes"),
            leader=f.flag("leader", default=False),
            path_reason=f.opt_text("pathReason"),
            relay_seat=f.opt_integer("relaySeat"),
            last_heard=f.opt_integer("lastHeard"),
            draining=f.flag("draining", default=False),
            policy=_opt(PeerPolicy.from_json, f.opt_mapping("policy")),
        )


def _opt(parse: Callable[[object], T], value: object | None) -> T | None:
    return None if value is None else parse(value)


def peers_from_json(value: object) -> list[Peer]:
    """Parses ``GET /v1/peers`` (or a ``peers`` event's data), kept in tokenId order."""
    if not isinstance(value, list):
        raise ProtocolError(f"the agent's peer list is not a JSON array: {_short(value)}")
    peers = [Peer.from_json(item) for item in value]
    # The agent sends them in order already; sorting keeps the promise with any agent.
    peers.sort(key=lambda p: p.token_id)
    return peers


def addresses(peers: list[Peer]) -> list[str]:
    """The ``address`` of each peer that has one, in tokenId order: what ``get_peers()`` returns."""
    return [p.address for p in peers if p.address is not None]


@dataclass(frozen=True)
class Leader:
    """The cluster's elected leader as this node sees it (``GET /v1/leader``).

    ``token_id`` is ``None`` when no leader is elected, and when the seat elected is one whose evidence this
    node refuses: then ``refused_seat`` names it and ``reason`` says why (its node will be voted out; there
    is no leader to follow meanwhile). ``address`` is what to connect to (this node's own
    overlay IP when it leads); ``reachable`` is whether this node hears the leader over the mesh, ``None``
    when it is this node or unknown.

    ``is_self`` is true only while this node leads under a lease that holds now: its agent's view of the
    chain was confirmed less than a lease ago, a majority of the seats confirmed this node as leader over
    the mesh, and this node is healthy (see :meth:`DStackP2PSDK.set_healthy`). The lease is worked out when
    the agent answers, so a node that was frozen and resumes, or lost its RPC, does not say it leads from
    an old view; ``lease_ms`` is how much longer the claim holds at most. When this node is the seat named
    leader but ``is_self`` is false, ``reason`` says why. Two nodes may still both have *acted* as leader
    a moment apart (the old one's message in flight while the new one starts), which is what ``term`` is
    for.

    ``term`` is the fencing term: the contract's leader term as of this node's view. It grows by one at
    every leader change (elected, replaced, cleared) and never goes back, so one term names one
    leadership. Tag every write the leader makes with the term it leads under, and have whatever takes the
    write (a follower, a store) refuse a term older than the newest it has seen: a deposed leader's late
    writes are then refused rather than applied. ``None`` only before the agent has any view of the chain.

    ``state`` says whether what this node knows was confirmed less than a lease ago (``"current"``), longer
    ago (``"stale"``: the leader may have changed since), or never since the agent started (``"unknown"``,
    and for an agent older than this field); ``age_ms`` is how long ago, ``None`` if never. ``healthy`` is
    this node's own health signal: an unhealthy node never leads.
    """

    token_id: int | None
    instance_id: str | None
    overlay_ip: str | None
    address: str | None
    is_self: bool
    reachable: bool | None
    term: int | None = None
    #: ``"current"``, ``"stale"`` or ``"unknown"`` (:data:`LEADER_STATES`).
    state: str = LEADER_UNKNOWN
    age_ms: int | None = None
    lease_ms: int | None = None
    healthy: bool = True
    reason: str | None = None
    #: The seat the contract names leader when this node refuses its evidence, else ``None``.
    refused_seat: int | None = None
    #: How the term began: ``"elected"``, ``"handoff"`` (planned: the old leader gave it up first),
    #: ``"voted-out"`` (a failover) or ``"seat-left"``; ``None`` when this node did not see it begin.
    term_reason: str | None = None
    #: The seats being drained.
    draining: tuple[int, ...] = ()
    #: While this node hands its term off: the successor's seat. A demotion that comes with it is a clean
    #: switchover: stop taking writes and let the replicas catch up, the successor promotes after the block.
    handing_off_to: int | None = None

    @property
    def elected(self) -> bool:
        return self.token_id is not None

    @classmethod
    def from_json(cls, value: object) -> Leader:
        f = _Fields(value, "leader")
        return cls(
            token_id=f.opt_integer("tokenId"),
            instance_id=f.opt_text("instanceId"),
            overlay_ip=f.opt_text("overlayIp"),
            address=f.opt_text("address"),
            is_self=f.flag("isSelf", default=False),
            reachable=f.opt_flag("reachable"),
            term=f.opt_integer("term"),
            # An agent that does not say whether its view is confirmed has not confirmed it.
            state=f.choice("state", LEADER_STATES, default=LEADER_UNKNOWN),
            age_ms=f.opt_integer("ageMs"),
            lease_ms=f.opt_integer("leaseMs"),
            healthy=f.flag("healthy", default=True),
            reason=f.opt_text("reason"),
            refused_seat=f.opt_integer("refusedSeat"),
            term_reason=f.opt_text("termReason"),
            draining=tuple(f.integers("draining")),
            handing_off_to=_handing_off_to(f.opt_mapping("handingOff")),
        )


def _handing_off_to(value: object | None) -> int | None:
    return None if value is None else _Fields(value, "leader.handingOff").integer("to")


@dataclass(frozen=True)
class AppHealth:
    """The application's last health report, as the agent holds it (``health.app``)."""

    #: As reported, or ``False`` once a report sent with a ``ttl`` has expired.
    healthy: bool
    reason: str | None
    #: How much longer the report holds; ``None`` for a report sent without ``ttl``.
    expires_in_ms: int | None

    @classmethod
    def from_json(cls, value: object) -> AppHealth:
        f = _Fields(value, "health.app")
        return cls(
            healthy=f.flag("healthy"),
            reason=f.opt_text("reason"),
            expires_in_ms=f.opt_integer("expiresInMs"),
        )


@dataclass(frozen=True)
class HealthCheck:
    """The agent's own health check (``--health-url`` or ``--health-cmd``), as last run (``health.check``)."""

    #: ``"url"`` or ``"command"``.
    kind: str
    healthy: bool
    #: Why it fails: the status, the exit code, the error.
    reason: str | None

    @classmethod
    def from_json(cls, value: object) -> HealthCheck:
        f = _Fields(value, "health.check")
        return cls(kind=f.text("kind"), healthy=f.flag("healthy"), reason=f.opt_text("reason"))


@dataclass(frozen=True)
class Health:
    """``GET /v1/health``: whether this node is fit to lead, by the application's report and the agent's check.

    ``healthy`` is false when either says so (or the application's report expired); ``reasons`` says why, one
    sentence per source. ``app`` is ``None`` until the application has reported (with no report and no
    check a node is healthy: the signal is opt-in); ``check`` is ``None`` unless the agent runs one.
    """

    healthy: bool
    reasons: list[str]
    app: AppHealth | None
    check: HealthCheck | None

    @classmethod
    def from_json(cls, value: object) -> Health:
        f = _Fields(value, "health")
        app = f.opt_mapping("app")
        check = f.opt_mapping("check")
        return cls(
            healthy=f.flag("healthy"),
            reasons=f.texts("reasons"),
            app=AppHealth.from_json(app) if app is not None else None,
            check=HealthCheck.from_json(check) if check is not None else None,
        )


@dataclass(frozen=True)
class NodeInfo:
    """This node (``status.node``). ``token_id`` and ``overlay_ip`` are ``None`` until a seat is bound."""

    instance_id: str
    app_id: str
    token_id: int | None
    overlay_ip: str | None
    wg_public_key: str | None
    interface: str | None
    listen_port: int | None
    endpoint: str | None
    gateway_url: str | None
    #: Whether this node's record is on-chain.
    registered: bool
    #: Why registering fails, in the agent's words (what to do included); ``None`` while it does not.
    registration_error: str | None

    @classmethod
    def from_json(cls, value: object) -> NodeInfo:
        f = _Fields(value, "status.node")
        return cls(
            instance_id=f.text("instanceId"),
            app_id=f.text("appId"),
            token_id=f.opt_integer("tokenId"),
            overlay_ip=f.opt_text("overlayIp"),
            wg_public_key=f.opt_text("wgPublicKey"),
            interface=f.opt_text("interface"),
            listen_port=f.opt_integer("listenPort"),
            endpoint=f.opt_text("endpoint"),
            gateway_url=f.opt_text("gatewayUrl"),
            registered=f.flag("registered"),
            registration_error=f.opt_text("registrationError"),
        )


@dataclass(frozen=True)
class ChainInfo:
    """Where the agent is with the chain (``status.chain``)."""

    #: The cluster contract, checksummed.
    contract: str
    chain_id: int | None
    rpc_url: str
    head: int | None
    last_processed_block: int | None
    lag: int | None
    #: The peer set came from the agent's on-disk cache: the RPC has not answered since it started.
    from_cache: bool
    #: The RPC's error while it is failing, else ``None``.
    last_error: str | None
    #: The cluster's mesh prefix (``"10.0.1.0/24"``): seat N's overlay address is its N-th host address
    #: (:func:`~dstack_p2p.overlay.overlay_address`). ``None`` until the agent has read the chain, and from
    #: an agent older than this field. Last, with a default, so positional construction still works.
    prefix: str | None = None
    #: New heads come to the agent by WebSocket subscription now (a change reaches it as its block does);
    #: ``False`` while it polls, and from an agent older than this field.
    subscribed: bool = False

    @classmethod
    def from_json(cls, value: object) -> ChainInfo:
        f = _Fields(value, "status.chain")
        return cls(
            contract=f.text("contract"),
            chain_id=f.opt_integer("chainId"),
            rpc_url=f.text("rpcUrl"),
            head=f.opt_integer("head"),
            last_processed_block=f.opt_integer("lastProcessedBlock"),
            lag=f.opt_integer("lag"),
            from_cache=f.flag("fromCache", default=False),
            last_error=f.opt_text("lastError"),
            prefix=f.opt_text("prefix"),
            subscribed=f.flag("subscribed", default=False),
        )


@dataclass(frozen=True)
class PeerRelayStatus:
    """This node as a peer relay (``Status.peer_relay``): whether it offers to relay WireGuard datagrams
    between two of its peers that cannot reach each other, and what it has carried since its interface came
    up."""

    #: Whether it offers to relay now.
    offering: bool
    #: Why it offers, or why not, in the agent's words (``"--relay-for-peers always"``, what STUN showed).
    why: str
    #: Pairs it holds an allocation for now (asked for by one seat of the pair or both).
    allocations: int
    #: Allocations that became ready since the agent started (both seats asked).
    granted: int
    #: What it forwarded between the pairs, in bytes and datagrams.
    forwarded_bytes: int
    forwarded_datagrams: int
    #: Requests refused, by reason: ``"not-relaying"``, ``"not-a-seat"``, ``"self"``, ``"peer-not-on-udp"``,
    #: ``"full"``, ``"seat-limit"``, ``"released"`` (an allocation it ended, one per seat told). Read-only.
    refused: Mapping[str, int] = field(default_factory=dict, hash=False)
    #: Relayed datagrams not forwarded, by reason: ``"unknown-vni"``, ``"not-ready"`` (one seat has asked),
    #: ``"stranger"`` (from neither seat's endpoint), ``"pair-rate"``, ``"total-rate"``. Read-only.
    dropped: Mapping[str, int] = field(default_factory=dict, hash=False)
    #: Relayed datagrams whose header did not parse.
    malformed: int = 0

    def __post_init__(self) -> None:
        # Read-only copies, as every other field of a model is immutable (and left out of its hash).
        object.__setattr__(self, "refused", MappingProxyType(dict(self.refused)))
        object.__setattr__(self, "dropped", MappingProxyType(dict(self.dropped)))

    @classmethod
    def from_json(cls, value: object) -> PeerRelayStatus:
        f = _Fields(value, "status.peerRelay")
        return cls(
            offering=f.flag("offering"),
            why=f.text("why"),
            allocations=f.integer("allocations"),
            granted=f.integer("granted"),
            forwarded_bytes=f.integer("forwardedBytes"),
            forwarded_datagrams=f.integer("forwardedDatagrams"),
            refused=f.counts("refused"),
            dropped=f.counts("dropped"),
            malformed=f.integer("malformed", default=0),
        )


@dataclass(frozen=True)
class Status:
    """``GET /v1/status``: the agent, this node and the chain."""

    version: str
    #: ``"wireguard"`` or ``"tls"``.
    mode: str
    #: ``"userspace"`` or ``"kernel"``; ``None`` in TLS mode.
    backend: str | None
    node: NodeInfo
    chain: ChainInfo
    uptime_secs: int
    peers_configured: int
    peers_healthy: int
    #: The grants between seats as this node last read them, and what they dropped here; ``None`` until
    #: read, and from an agent older than grants.
    policy: PolicyStatus | None = None
    #: This node as a peer relay; ``None`` on the kernel WireGuard backend (which cannot relay), in TLS mode,
    #: and from an agent older than peer relays.
    peer_relay: PeerRelayStatus | None = None

    @classmethod
    def from_json(cls, value: object) -> Status:
        f = _Fields(value, "status")
        return cls(
            version=f.text("version"),
            mode=f.text("mode"),
            backend=f.opt_text("backend"),
            node=NodeInfo.from_json(f.mapping("node")),
            chain=ChainInfo.from_json(f.mapping("chain")),
            uptime_secs=f.integer("uptimeSecs"),
            peers_configured=f.integer("peersConfigured"),
            peers_healthy=f.integer("peersHealthy"),
            policy=_opt(PolicyStatus.from_json, f.opt_mapping("policy")),
            peer_relay=_opt(PeerRelayStatus.from_json, f.opt_mapping("peerRelay")),
        )


@dataclass(frozen=True)
class Reconnected:
    """Passed to a monitor's ``on_reconnect`` hook when it has followed the agent again after losing it.

    ``attempts`` is how many connection attempts it took (1 when the first succeeded), ``down_secs`` the time
    from losing the stream to having it back, ``reason`` why the previous stream ended.
    """

    attempts: int
    down_secs: float
    reason: str

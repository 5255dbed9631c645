/**
 * The API's replies as typed, frozen objects, with the API's own camelCase field names.
 *
 * Parsing ignores fields it does not know, because the API grows; a field this SDK needs that is missing or
 * of the wrong type throws {@link ProtocolError} rather than surfacing later as `undefined` in the caller's
 * code. Fields the agent added after its first release (`leader`, `registrationError`, `path`, `relayUrl`,
 * `relaySeat`, `pathReason`, the chain's `prefix`, the leader's `term`, `state`, `ageMs`, `leaseMs`, `healthy` and
 * `reason`, the `policy` of the status and of each peer, and the status's `peerRelay`) fall back to their
 * "nothing to report" value when absent. Absent values are `null`, as the API sends them.
 */

import { ProtocolError } from "./errors.js";
import { Fields, type FieldsOf } from "./fields.js";
import { PeerPolicy, PolicyStatus, type Protocol, checkPort } from "./policy.js";
import { show } from "./show.js";

/** `Peer.connection` values: over the tunnel, over the peer's TLS-gateway URL, or neither. */
export const CONNECTION_WIREGUARD = "wireguard";
export const CONNECTION_TLS_GATEWAY = "tls-gateway";
export const CONNECTION_UNREACHABLE = "unreachable";

/**
 * `Leader.state` values: what this node knows of the leader was confirmed less than a lease ago, longer ago,
 * or never since its agent started.
 */
export const LEADER_CURRENT = "current";
export const LEADER_STALE = "stale";
export const LEADER_UNKNOWN = "unknown";
export const LEADER_STATES = [LEADER_CURRENT, LEADER_STALE, LEADER_UNKNOWN] as const;
export type LeaderState = (typeof LEADER_STATES)[number];

/**
 * One peer of this node, as `GET /v1/peers` lists it.
 *
 * `address` is what to connect to: the overlay IP while the tunnel is up, the peer's gateway URL otherwise,
 * `null` when neither works.
 */
export class Peer {
  readonly tokenId!: number;
  readonly instanceId!: string;
  readonly overlayIp!: string;
  readonly wgPublicKey!: string | null;
  readonly endpoint!: string | null;
  readonly gatewayUrl!: string | null;
  /** `"wireguard"`, `"tls-gateway"` or `"unreachable"`. */
  readonly connection!: string;
  /**
   * `"direct"`, `"punched"` (UDP through holes punched in both NATs), `"peer-relay"` (UDP through another
   * member that relays for the pair, `relaySeat`) or `"relay"` (through the gateway) for a WireGuard peer,
   * `null` for a peer with no tunnel.
   */
  readonly path!: string | null;
  readonly relayUrl!: string | null;
  readonly address!: string | null;
  /**
   * Whether it answers now: it sent something (data, a keepalive, an answer to the agent's probe) within the
   * agent's peer timeout (2.5 s unless `--peer-timeout-ms` says otherwise).
   */
  readonly healthy!: boolean;
  /** Unix seconds of the latest WireGuard handshake, `null` when there has been none. */
  readonly latestHandshake!: number | null;
  readonly rxBytes!: number;
  readonly txBytes!: number;
  /** Whether this peer is the cluster's elected leader. */
  readonly leader!: boolean;
  /** While relayed: why, and why hole punching has not brought it over UDP (`null` otherwise). */
  readonly pathReason!: string | null;
  /** While on a peer relay: the seat relaying (`null` otherwise, and from an agent without peer relays). */
  readonly relaySeat!: number | null;
  /** Unix seconds of the last time the peer was heard from, `null` when never (or from an older agent). */
  readonly lastHeard!: number | null;
  /** Whether it is being drained: replica ports leave it out, and no leader is handed to it. */
  readonly draining!: boolean;
  /**
   * What the grants between seats let pass between it and this node; `null` while no policy is in force
   * (every seat reaches every port), and from an agent older than grants.
   */
  readonly policy!: PeerPolicy | null;

  constructor(
    fields: Omit<FieldsOf<Peer>, "pathReason" | "relaySeat" | "lastHeard" | "draining" | "policy"> & {
      readonly pathReason?: string | null;
      readonly relaySeat?: number | null;
      readonly lastHeard?: number | null;
      readonly draining?: boolean;
      readonly policy?: PeerPolicy | null;
    },
  ) {
    Object.assign(
      this,
      { pathReason: null, relaySeat: null, lastHeard: null, draining: false, policy: null },
      fields,
    );
    Object.freeze(this);
  }

  /**
   * Whether this node may open a flow to `port` (`"tcp"` or `"udp"`) on this peer, by the grants between
   * seats: true for every port while no policy is in force. The peer enforces it: a flow it does not allow
   * is dropped there, unanswered. (ICMP always passes.) Throws as {@link Ports.allows} does.
   */
  mayReach(port: number, protocol: Protocol = "tcp"): boolean {
    if (this.policy === null) {
      checkPort(port, protocol);
      return true;
    }
    return this.policy.reachableThere.allows(port, protocol);
  }

  /**
   * What applications see as a change of this peer: who it is, where and how it is reached, whether it is
   * healthy and whether it leads; not its counters or handshake time. The agent's definition
   * (`Peer::change_key` in `mesh-api`), which its `--on-change` hook and `/v1/events` follow. Two peers are
   * the same change-wise when their keys are equal (`===`).
   */
  changeKey(): string {
    return JSON.stringify([
      this.tokenId,
      this.instanceId,
      this.wgPublicKey,
      this.endpoint,
      this.address,
      this.connection,
      this.path,
      this.healthy,
      this.leader,
      this.draining,
    ]);
  }

  static fromJSON(value: unknown): Peer {
    const f = new Fields(value, "peer");
    return new Peer({
      tokenId: f.integer("tokenId"),
      instanceId: f.text("instanceId"),
      overlayIp: f.text("overlayIp"),
      wgPublicKey: f.optText("wgPublicKey"),
      endpoint: f.optText("endpoint"),
      gatewayUrl: f.optText("gatewayUrl"),
      connection: f.text("connection"),
      path: f.optText("path"),
      relayUrl: f.optText("relayUrl"),
      address: f.optText("address"),
      healthy: f.flag("healthy"),
      latestHandshake: f.optInteger("latestHandshake"),
      rxBytes: f.integer("rxBytes"),
      txBytes: f.integer("txBytes"),
      leader: f.flag("leader", false),
      pathReason: f.optText("pathReason"),
      relaySeat: f.optInteger("relaySeat"),
      lastHeard: f.optInteger("lastHeard"),
      draining: f.flag("draining", false),
      policy: optional(PeerPolicy.fromJSON, f.optObject("policy")),
    });
  }
}

function optional<T>(parse: (value: unknown) => T, value: Record<string, unknown> | null): T | null {
  return value === null ? null : parse(value);
}

/** Parses `GET /v1/peers` (or a `peers` event's data), kept in tokenId order. */
export function peersFromJSON(value: unknown): Peer[] {
  if (!Array.isArray(value)) {
    throw new ProtocolError(`the agent's peer list is not a JSON array: ${show(value)}`);
  }
  const peers = value.map((item) => Peer.fromJSON(item));
  // The agent sends them in order already; sorting keeps the promise with any agent.
  return peers.sort((a, b) => a.tokenId - b.tokenId);
}

/** The `address` of each peer that has one, in tokenId order: what `getPeers()` returns. */
export function addresses(peers: readonly Peer[]): string[] {
  return peers.flatMap((p) => (p.address !== null ? [p.address] : []));
}

type LeaderInit = Omit<
  FieldsOf<Leader>,
  | "elected"
  | "term"
  | "state"
  | "ageMs"
  | "leaseMs"
  | "healthy"
  | "reason"
  | "refusedSeat"
  | "termReason"
  | "draining"
  | "handingOffTo"
> &
  Partial<
    Pick<
      FieldsOf<Leader>,
      | "term"
      | "state"
      | "ageMs"
      | "leaseMs"
      | "healthy"
      | "reason"
      | "refusedSeat"
      | "termReason"
      | "draining"
      | "handingOffTo"
    >
  >;

function handingOffTo(value: Record<string, unknown> | null): number | null {
  return value === null ? null : new Fields(value, "leader.handingOff").integer("to");
}

/**
 * The cluster's elected leader as this node sees it (`GET /v1/leader`).
 *
 * `tokenId` is `null` when no leader is elected, and when the seat elected is one whose evidence this node
 * refuses: then `refusedSeat` names it and `reason` says why (its node will be voted out; there is no leader
 * to follow meanwhile). `address` is what to connect to (this node's own overlay
 * IP when it leads); `reachable` is whether this node hears the leader over the mesh, `null` when it is this
 * node or unknown.
 *
 * `isSelf` is true only while this node leads under a lease that holds now: its agent's view of the chain
 * was confirmed less than a lease ago, a majority of the seats confirmed this node as leader over the mesh,
 * and this node is healthy (see {@link DStackP2PSDK.setHealthy}). The lease is worked out when the agent
 * answers, so a node that was frozen and resumes, or lost its RPC, does not say it leads from an old view;
 * `leaseMs` is how much longer the claim holds at most. When this node is the seat named leader but
 * `isSelf` is false, `reason` says why. Two nodes may still both have *acted* as leader a moment apart (the
 * old one's message in flight while the new one starts), which is what `term` is for.
 *
 * `term` is the fencing term: the contract's leader term as of this node's view. It grows by one at every
 * leader change (elected, replaced, cleared) and never goes back, so one term names one leadership. Tag
 * every write the leader makes with the term it leads under, and have whatever takes the write (a follower,
 * a store) refuse a term older than the newest it has seen: a deposed leader's late writes are then refused
 * rather than applied. `null` only before the agent has any view of the chain.
 *
 * `state` says whether what this node knows was confirmed less than a lease ago (`"current"`), longer ago
 * (`"stale"`: the leader may have changed since), or never since the agent started (`"unknown"`, and for an
 * agent older than this field); `ageMs` is how long ago, `null` if never. `healthy` is this node's own
 * health signal: an unhealthy node never leads.
 */
export class Leader {
  readonly tokenId!: number | null;
  readonly instanceId!: string | null;
  readonly overlayIp!: string | null;
  readonly address!: string | null;
  readonly isSelf!: boolean;
  readonly reachable!: boolean | null;
  readonly term!: number | null;
  /** `"current"`, `"stale"` or `"unknown"` ({@link LEADER_STATES}). */
  readonly state!: LeaderState;
  readonly ageMs!: number | null;
  readonly leaseMs!: number | null;
  readonly healthy!: boolean;
  readonly reason!: string | null;
  /** The seat the contract names leader when this node refuses its evidence, else `null`. */
  readonly refusedSeat!: number | null;
  /**
   * How the term began: `"elected"`, `"handoff"` (planned: the old leader gave it up first), `"voted-out"` (a
   * failover) or `"seat-left"`; `null` when this node did not see it begin.
   */
  readonly termReason!: string | null;
  /** The seats being drained (`meshctl drain`, or SIGTERM): no leader is handed to or elected from them. */
  readonly draining!: readonly number[];
  /**
   * While this node hands its term off: the successor's seat. A demotion that comes with it is a clean
   * switchover: stop taking writes and let the replicas catch up; the successor promotes after the block.
   */
  readonly handingOffTo!: number | null;

  constructor(fields: LeaderInit) {
    Object.assign(
      this,
      {
        term: null,
        state: LEADER_UNKNOWN,
        ageMs: null,
        leaseMs: null,
        healthy: true,
        reason: null,
        refusedSeat: null,
        termReason: null,
        draining: [],
        handingOffTo: null,
      },
      fields,
    );
    Object.freeze(this);
  }

  /** Whether a leader is elected at all. */
  get elected(): boolean {
    return this.tokenId !== null;
  }

  static fromJSON(value: unknown): Leader {
    const f = new Fields(value, "leader");
    return new Leader({
      tokenId: f.optInteger("tokenId"),
      instanceId: f.optText("instanceId"),
      overlayIp: f.optText("overlayIp"),
      address: f.optText("address"),
      isSelf: f.flag("isSelf", false),
      reachable: f.optFlag("reachable"),
      term: f.optInteger("term"),
      // An agent that does not say whether its view is confirmed has not confirmed it.
      state: f.choice("state", LEADER_STATES, LEADER_UNKNOWN),
      ageMs: f.optInteger("ageMs"),
      leaseMs: f.optInteger("leaseMs"),
      healthy: f.flag("healthy", true),
      reason: f.optText("reason"),
      refusedSeat: f.optInteger("refusedSeat"),
      termReason: f.optText("termReason"),
      draining: Object.freeze(f.integers("draining", [])),
      handingOffTo: handingOffTo(f.optObject("handingOff")),
    });
  }
}

/**
 * What makes a leader event a change for `onLeader`: everything an application acts on.
 *
 * `isSelf`, `state`, `healthy` and `reason` are in it so that a leader hears at once that its lease ended,
 * even though the seat named leader is the same; `ageMs` and `leaseMs` are not, since they move all the
 * time without anything to act on.
 */
export function leaderKey(leader: Leader): string {
  return JSON.stringify([
    leader.tokenId,
    leader.refusedSeat,
    leader.address,
    leader.reachable,
    leader.isSelf,
    leader.term,
    leader.state,
    leader.healthy,
    leader.reason,
  ]);
}

/** The application's last health report, as the agent holds it (`health.app`). */
export class AppHealth {
  /** As reported, or `false` once a report sent with a `ttl` has expired. */
  readonly healthy!: boolean;
  readonly reason!: string | null;
  /** How much longer the report holds; `null` for a report sent without `ttl`. */
  readonly expiresInMs!: number | null;

  constructor(fields: FieldsOf<AppHealth>) {
    Object.assign(this, fields);
    Object.freeze(this);
  }

  static fromJSON(value: unknown): AppHealth {
    const f = new Fields(value, "health.app");
    return new AppHealth({
      healthy: f.flag("healthy"),
      reason: f.optText("reason"),
      expiresInMs: f.optInteger("expiresInMs"),
    });
  }
}

/** The agent's own health check (`--health-url` or `--health-cmd`), as last run (`health.check`). */
export class HealthCheck {
  /** `"url"` or `"command"`. */
  readonly kind!: string;
  readonly healthy!: boolean;
  /** Why it fails: the status, the exit code, the error. */
  readonly reason!: string | null;

  constructor(fields: FieldsOf<HealthCheck>) {
    Object.assign(this, fields);
    Object.freeze(this);
  }

  static fromJSON(value: unknown): HealthCheck {
    const f = new Fields(value, "health.check");
    return new HealthCheck({ kind: f.text("kind"), healthy: f.flag("healthy"), reason: f.optText("reason") });
  }
}

/**
 * `GET /v1/health`: whether this node is fit to lead, by the application's report and the agent's check.
 *
 * `healthy` is false when either says so (or the application's report expired); `reasons` says why, one
 * sentence per source. `app` is `null` until the application has reported (with no report and no check a
 * node is healthy: the signal is opt-in); `check` is `null` unless the agent runs one.
 */
export class Health {
  readonly healthy!: boolean;
  readonly reasons!: readonly string[];
  readonly app!: AppHealth | null;
  readonly check!: HealthCheck | null;

  constructor(fields: FieldsOf<Health>) {
    Object.assign(this, fields, { reasons: Object.freeze([...fields.reasons]) });
    Object.freeze(this);
  }

  static fromJSON(value: unknown): Health {
    const f = new Fields(value, "health");
    const app = f.optObject("app");
    const check = f.optObject("check");
    return new Health({
      healthy: f.flag("healthy"),
      reasons: f.texts("reasons"),
      app: app !== null ? AppHealth.fromJSON(app) : null,
      check: check !== null ? HealthCheck.fromJSON(check) : null,
    });
  }
}

/** This node (`status.node`). `tokenId` and `overlayIp` are `null` until a seat is bound. */
export class NodeInfo {
  readonly instanceId!: string;
  readonly appId!: string;
  readonly tokenId!: number | null;
  readonly overlayIp!: string | null;
  readonly wgPublicKey!: string | null;
  readonly interface!: string | null;
  readonly listenPort!: number | null;
  readonly endpoint!: string | null;
  readonly gatewayUrl!: string | null;
  /** Whether this node's record is on-chain. */
  readonly registered!: boolean;
  /** Why registering fails, in the agent's words (what to do included); `null` while it does not. */
  readonly registrationError!: string | null;

  constructor(fields: FieldsOf<NodeInfo>) {
    Object.assign(this, fields);
    Object.freeze(this);
  }

  static fromJSON(value: unknown): NodeInfo {
    const f = new Fields(value, "status.node");
    return new NodeInfo({
      instanceId: f.text("instanceId"),
      appId: f.text("appId"),
      tokenId: f.optInteger("tokenId"),
      overlayIp: f.optText("overlayIp"),
      wgPublicKey: f.optText("wgPublicKey"),
      interface: f.optText("interface"),
      listenPort: f.optInteger("listenPort"),
      endpoint: f.optText("endpoint"),
      gatewayUrl: f.optText("gatewayUrl"),
      registered: f.flag("registered"),
      registrationError: f.optText("registrationError"),
    });
  }
}

/**
 * What `ChainInfo`'s constructor takes: `prefix` and `subscribed` are optional, so code written before them
 * still compiles.
 */
type ChainInfoInit = Omit<FieldsOf<ChainInfo>, "prefix" | "subscribed"> &
  Partial<Pick<FieldsOf<ChainInfo>, "prefix" | "subscribed">>;

/** Where the agent is with the chain (`status.chain`). */
export class ChainInfo {
  /** The cluster contract, checksummed. */
  readonly contract!: string;
  readonly chainId!: number | null;
  readonly rpcUrl!: string;
  readonly head!: number | null;
  readonly lastProcessedBlock!: number | null;
  readonly lag!: number | null;
  /** The peer set came from the agent's on-disk cache: the RPC has not answered since it started. */
  readonly fromCache!: boolean;
  /** The RPC's error while it is failing, else `null`. */
  readonly lastError!: string | null;
  /**
   * The cluster's mesh prefix (`"10.0.1.0/24"`): seat N's overlay address is its N-th host address
   * (`overlayAddress`). `null` until the agent has read the chain, and from an agent older than this field.
   */
  readonly prefix!: string | null;
  /**
   * New heads come to the agent by WebSocket subscription now (a change reaches it as its block does);
   * `false` while it polls, and from an agent older than this field.
   */
  readonly subscribed!: boolean;

  constructor(fields: ChainInfoInit) {
    Object.assign(this, { prefix: null, subscribed: false }, fields);
    Object.freeze(this);
  }

  static fromJSON(value: unknown): ChainInfo {
    const f = new Fields(value, "status.chain");
    return new ChainInfo({
      contract: f.text("contract"),
      chainId: f.optInteger("chainId"),
      rpcUrl: f.text("rpcUrl"),
      head: f.optInteger("head"),
      lastProcessedBlock: f.optInteger("lastProcessedBlock"),
      lag: f.optInteger("lag"),
      fromCache: f.flag("fromCache", false),
      lastError: f.optText("lastError"),
      prefix: f.optText("prefix"),
      subscribed: f.flag("subscribed", false),
    });
  }
}

/**
 * This node as a peer relay (`Status.peerRelay`): whether it offers to relay WireGuard datagrams between two
 * of its peers that cannot reach each other, and what it has carried since its interface came up.
 */
export class PeerRelayStatus {
  /** Whether it offers to relay now. */
  readonly offering!: boolean;
  /** Why it offers, or why not, in the agent's words (`"--relay-for-peers always"`, what STUN showed). */
  readonly why!: string;
  /** Pairs it holds an allocation for now (asked for by one seat of the pair or both). */
  readonly allocations!: number;
  /** Allocations that became ready since the agent started (both seats asked). */
  readonly granted!: number;
  /** What it forwarded between the pairs, in bytes and datagrams. */
  readonly forwardedBytes!: number;
  readonly forwardedDatagrams!: number;
  /**
   * Requests refused, by reason: `"not-relaying"`, `"not-a-seat"`, `"self"`, `"peer-not-on-udp"`, `"full"`,
   * `"seat-limit"`, `"released"` (an allocation it ended, one per seat told).
   */
  readonly refused!: Readonly<Record<string, number>>;
  /**
   * Relayed datagrams not forwarded, by reason: `"unknown-vni"`, `"not-ready"` (one seat has asked),
   * `"stranger"` (from neither seat's endpoint), `"pair-rate"`, `"total-rate"`.
   */
  readonly dropped!: Readonly<Record<string, number>>;
  /** Relayed datagrams whose header did not parse. */
  readonly malformed!: number;

  constructor(
    fields: Omit<FieldsOf<PeerRelayStatus>, "refused" | "dropped" | "malformed"> &
      Partial<Pick<FieldsOf<PeerRelayStatus>, "refused" | "dropped" | "malformed">>,
  ) {
    Object.assign(this, { malformed: 0 }, fields, {
      refused: Object.freeze({ ...fields.refused }),
      dropped: Object.freeze({ ...fields.dropped }),
    });
    Object.freeze(this);
  }

  static fromJSON(value: unknown): PeerRelayStatus {
    const f = new Fields(value, "status.peerRelay");
    return new PeerRelayStatus({
      offering: f.flag("offering"),
      why: f.text("why"),
      allocations: f.integer("allocations"),
      granted: f.integer("granted"),
      forwardedBytes: f.integer("forwardedBytes"),
      forwardedDatagrams: f.integer("forwardedDatagrams"),
      refused: f.counts("refused"),
      dropped: f.counts("dropped"),
      malformed: f.integer("malformed", 0),
    });
  }
}

/** `GET /v1/status`: the agent, this node and the chain. */
export class Status {
  readonly version!: string;
  /** `"wireguard"` or `"tls"`. */
  readonly mode!: string;
  /** `"userspace"` or `"kernel"`; `null` in TLS mode. */
  readonly backend!: string | null;
  readonly node!: NodeInfo;
  readonly chain!: ChainInfo;
  readonly uptimeSecs!: number;
  readonly peersConfigured!: number;
  readonly peersHealthy!: number;
  /**
   * The grants between seats as this node last read them, and what they dropped here; `null` until read,
   * and from an agent older than grants.
   */
  readonly policy!: PolicyStatus | null;
  /**
   * This node as a peer relay; `null` on the kernel WireGuard backend (which cannot relay), in TLS mode, and
   * from an agent older than peer relays.
   */
  readonly peerRelay!: PeerRelayStatus | null;

  constructor(
    fields: Omit<FieldsOf<Status>, "policy" | "peerRelay"> & {
      readonly policy?: PolicyStatus | null;
      readonly peerRelay?: PeerRelayStatus | null;
    },
  ) {
    Object.assign(this, { policy: null, peerRelay: null }, fields);
    Object.freeze(this);
  }

  static fromJSON(value: unknown): Status {
    const f = new Fields(value, "status");
    return new Status({
      version: f.text("version"),
      mode: f.text("mode"),
      backend: f.optText("backend"),
      node: NodeInfo.fromJSON(f.object("node")),
      chain: ChainInfo.fromJSON(f.object("chain")),
      uptimeSecs: f.integer("uptimeSecs"),
      peersConfigured: f.integer("peersConfigured"),
      peersHealthy: f.integer("peersHealthy"),
      policy: optional(PolicyStatus.fromJSON, f.optObject("policy")),
      peerRelay: optional(PeerRelayStatus.fromJSON, f.optObject("peerRelay")),
    });
  }
}

/**
 * Passed to a monitor's `onReconnect` hook when it has followed the agent again after losing it.
 *
 * `attempts` is how many connection attempts it took (1 when the first succeeded), `downSecs` the time from
 * losing the stream to having it back, `reason` why the previous stream ended.
 */
export class Reconnected {
  readonly attempts!: number;
  readonly downSecs!: number;
  readonly reason!: string;

  constructor(fields: FieldsOf<Reconnected>) {
    Object.assign(this, fields);
    Object.freeze(this);
  }
}

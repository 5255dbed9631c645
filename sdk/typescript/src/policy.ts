/**
 * The grants between seats as the agent shows them: `status.policy` ({@link PolicyStatus}) and each peer's
 * `policy` ({@link PeerPolicy}), with the ports they let pass ({@link Ports}).
 */

import { Fields, type FieldsOf } from "./fields.js";
import { show } from "./show.js";

/** The protocols a grant between seats names ports of (`Ports.tcp`, `Ports.udp`). */
export const PROTOCOLS = ["tcp", "udp"] as const;
export type Protocol = (typeof PROTOCOLS)[number];

/** `"5432"` or `"8000-8080"`. */
const PORT_RANGE = /^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$/;

/** Throws unless `port` is a port and `protocol` one a grant names. */
export function checkPort(port: number, protocol: string): void {
  const what = "a port is an integer from 0 to 65535";
  if (!Number.isInteger(port)) throw new TypeError(`port ${show(port)}: ${what}`);
  if (port < 0 || port > 65535) throw new RangeError(`port ${port}: ${what}`);
  if (!(PROTOCOLS as readonly string[]).includes(protocol)) {
    throw new RangeError(`protocol ${show(protocol)}: a grant names ports of tcp or udp only`);
  }
}

/**
 * Destination ports by protocol, each a port (`"5432"`) or a range (`"8000-8080"`), as the agent writes
 * them.
 */
export class Ports {
  readonly tcp!: readonly string[];
  readonly udp!: readonly string[];

  constructor(fields: Partial<FieldsOf<Ports>> = {}) {
    Object.assign(this, {
      tcp: Object.freeze([...(fields.tcp ?? [])]),
      udp: Object.freeze([...(fields.udp ?? [])]),
    });
    Object.freeze(this);
  }

  /**
   * Whether `port` of `protocol` is one of these; an entry that is neither a port nor a range is left out.
   * Throws a `TypeError` for a port that is no integer, a `RangeError` for one outside 0 to 65535 or a
   * protocol other than `"tcp"` and `"udp"`.
   */
  allows(port: number, protocol: Protocol = "tcp"): boolean {
    checkPort(port, protocol);
    return (protocol === "tcp" ? this.tcp : this.udp).some((entry) => {
      const m = PORT_RANGE.exec(entry);
      return m !== null && Number(m[1]) <= port && port <= Number(m[2] ?? m[1]);
    });
  }

  static fromJSON(value: unknown, what: string): Ports {
    const f = new Fields(value, what);
    return new Ports({ tcp: f.texts("tcp", []), udp: f.texts("udp", []) });
  }
}

/**
 * Packets the policy dropped here, by why: no grant lets the peer reach the port (`noGrant`), a protocol no
 * grant can name (`protocol`: neither ICMP, TCP nor UDP), or too short to judge (`malformed`).
 */
export class PolicyDrops {
  readonly noGrant!: number;
  readonly protocol!: number;
  readonly malformed!: number;

  constructor(fields: Partial<FieldsOf<PolicyDrops>> = {}) {
    Object.assign(this, { noGrant: 0, protocol: 0, malformed: 0 }, fields);
    Object.freeze(this);
  }

  static fromJSON(value: Record<string, unknown> | null, what: string): PolicyDrops {
    if (value === null) return new PolicyDrops();
    const f = new Fields(value, what);
    return new PolicyDrops({
      noGrant: f.integer("noGrant", 0),
      protocol: f.integer("protocol", 0),
      malformed: f.integer("malformed", 0),
    });
  }
}

/** What the grants between seats let pass between this node and one peer (`Peer.policy`). */
export class PeerPolicy {
  /** The ports the peer may open flows to on this node, as in force on this node's interface. */
  readonly reachesHere!: Ports;
  /** The ports this node may open flows to on the peer, by the grants (the peer enforces them). */
  readonly reachableThere!: Ports;
  /** The peer's packets dropped here since the agent started. */
  readonly dropped!: PolicyDrops;

  constructor(fields: Omit<FieldsOf<PeerPolicy>, "dropped"> & { readonly dropped?: PolicyDrops }) {
    Object.assign(this, { dropped: new PolicyDrops() }, fields);
    Object.freeze(this);
  }

  static fromJSON(value: unknown): PeerPolicy {
    const f = new Fields(value, "peer.policy");
    return new PeerPolicy({
      reachesHere: Ports.fromJSON(f.object("reachesHere"), "peer.policy.reachesHere"),
      reachableThere: Ports.fromJSON(f.object("reachableThere"), "peer.policy.reachableThere"),
      dropped: PolicyDrops.fromJSON(f.optObject("dropped"), "peer.policy.dropped"),
    });
  }
}

/** The cluster's grants between seats, as this node's interface enforces them (`status.policy`). */
export class PolicyStatus {
  /** In force: a peer reaches only what a grant allows it. Not in force: every seat reaches every port. */
  readonly enforced!: boolean;
  /** The contract's policy version the interface enforces: one more at every change. */
  readonly version!: number;
  /**
   * The version last read from the chain while the interface enforces another; `null` once it holds it.
   * A change is in force here when `version` names it and this is `null`.
   */
  readonly pending!: number | null;
  /** How many grants it holds. */
  readonly grants!: number;
  /** This node's tags (its seat's and its app's), by name. */
  readonly ownTags!: readonly string[];
  /** Peers' packets dropped here since the agent started. */
  readonly dropped!: PolicyDrops;

  constructor(
    fields: Omit<FieldsOf<PolicyStatus>, "ownTags" | "dropped" | "pending"> &
      Partial<Pick<FieldsOf<PolicyStatus>, "ownTags" | "dropped" | "pending">>,
  ) {
    Object.assign(this, { dropped: new PolicyDrops(), pending: null }, fields, {
      ownTags: Object.freeze([...(fields.ownTags ?? [])]),
    });
    Object.freeze(this);
  }

  static fromJSON(value: unknown): PolicyStatus {
    const f = new Fields(value, "status.policy");
    return new PolicyStatus({
      enforced: f.flag("enforced"),
      version: f.integer("version"),
      grants: f.integer("grants"),
      ownTags: f.texts("ownTags", []),
      dropped: PolicyDrops.fromJSON(f.optObject("dropped"), "status.policy.dropped"),
      pending: f.optInteger("pending"),
    });
  }
}

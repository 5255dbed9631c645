/**
 * Following the leader as a role: promote this node when it leads a term, demote it when it stops, follow
 * another node while that one leads; fenced by the term.
 *
 * {@link decideFollow} is the whole decision, a pure function of what was decided before and one view of the
 * leader. {@link followLeader} is the I/O around it: the agent's events, renewing the lease while this node
 * leads (events come only on changes), and standing down when the lease runs out unrenewed (the agent gone,
 * or its stream lost), since nothing else would say so. The port of `dstack_p2p.follow` (Python).
 */

import { Backoff } from "./backoff.js";
import { DStackP2PSDK, toLogger } from "./client.js";
import { LEADER_CURRENT, Leader } from "./models.js";
import { type Logger, sleep } from "./monitor.js";
import { show } from "./show.js";

/** {@link FollowAction} kinds. */
export const PROMOTE = "promote";
export const DEMOTE = "demote";
export const FOLLOW = "follow";
export type FollowKind = typeof PROMOTE | typeof DEMOTE | typeof FOLLOW;

/**
 * Seconds between two reads of the leader after a lease ran out unrenewed: the agent's event stream repeats
 * nothing it said before, so a lease that holds again is only heard of by asking.
 */
const POLL = 1.0;
/**
 * Seconds before following the agent again when it cannot be followed at all, doubling up to RETRY_MAX (the
 * default {@link Backoff} of {@link followLeader}).
 */
const RETRY_START = 1.0;
const RETRY_MAX = 10.0;
/** The longest one request to the agent (a renewal, this node's seat) is waited for, in seconds. */
const ASK_TIMEOUT = 5.0;

/** The `reason` of the view `onDemote` gets when this node's lease ran out with no renewal. */
export const LEASE_LAPSED = "no word from the agent renewed this node's lease before it ran out";

/** What {@link decideFollow} has decided so far; start from {@link INITIAL_FOLLOW_STATE}. */
export interface FollowState {
  /**
   * Whether a view was decided yet: the first one always calls back, so that a service left leading by an
   * earlier run stands down.
   */
  readonly started: boolean;
  /** The term this node was promoted under and not demoted since; `null` while it does not lead. */
  readonly leading: number | null;
  /** The leader last followed ({@link followKey}); kept while no leader can be acted on. */
  readonly following: string | null;
  /** The newest term any view carried: nothing is done under an older one. */
  readonly term: number | null;
  /** This node's seat, when known: that seat named leader without `isSelf` is never followed. */
  readonly seat: number | null;
  /** Why the latest view's `isSelf` was not taken as leading (no term, or an older term than seen). */
  readonly refused: string | null;
}

export const INITIAL_FOLLOW_STATE: FollowState = Object.freeze({
  started: false,
  leading: null,
  following: null,
  term: null,
  seat: null,
  refused: null,
});

/**
 * One callback to make: `kind` with `leader`. `term` is the term it acts for: promoted under, of the
 * leadership a demotion ends (the newest known for the first demotion, when this node was not leading), of
 * the leader followed. It never goes back.
 */
export interface FollowAction {
  readonly kind: FollowKind;
  readonly leader: Leader;
  readonly term: number | null;
}

/** What makes following another leader a change: the seat, its term and where it is reached. */
export function followKey(leader: Leader): string {
  return JSON.stringify([leader.tokenId, leader.term, leader.overlayIp, leader.address]);
}

function notLeading(leader: Leader, reason: string): Leader {
  return new Leader({ ...leader, isSelf: false, leaseMs: null, reason });
}

/**
 * The callbacks one view of the leader calls for, in order, and the state after them.
 *
 * - This node leads (`isSelf`) under a term no older than any seen: PROMOTE, once per term; a promotion
 *   under a newer term while leading is DEMOTE then PROMOTE.
 * - Another seat leads, confirmed (`state` current), under a term no older than any seen: DEMOTE if this
 *   node was leading, then FOLLOW unless it is the leader already followed.
 * - Anything else (no leader, a refused seat, this node's seat named but not leading, a view that is not
 *   current, an older term): DEMOTE if this node was leading; otherwise nothing, and the leader followed
 *   stays followed.
 *
 * The first view always makes a DEMOTE unless it promotes. `isSelf` without a term, or under a term older
 * than one seen, is not leading: the view passed on has `isSelf` false and `reason` saying why, which
 * `refused` of the new state holds too.
 */
export function decideFollow(state: FollowState, leader: Leader): [FollowState, FollowAction[]] {
  const seen = state.term;
  const term = leader.term;
  const newest = seen === null || (term !== null && term > seen) ? term : seen;
  const older = term !== null && seen !== null && term < seen;
  let refused: string | null = null;
  let view = leader;
  if (view.isSelf) {
    if (term === null) {
      refused =
        "the agent says this node leads but gives no term (an agent older than this SDK?): a promotion " +
        "without a term cannot be fenced";
    } else if (older) {
      refused =
        `the agent says this node leads under term ${term}, older than term ${seen} already seen: ` +
        `not promoting`;
    }
    if (refused !== null) view = notLeading(view, refused);
  }
  const next: FollowState = { ...state, started: true, term: newest, refused };
  const actions: FollowAction[] = [];

  if (view.isSelf && term !== null) {
    if (state.leading === term) return [next, []];
    if (state.leading !== null) actions.push({ kind: DEMOTE, leader: view, term: state.leading });
    actions.push({ kind: PROMOTE, leader: view, term });
    return [{ ...next, leading: term, following: null }, actions];
  }

  if (state.leading !== null || !state.started) {
    actions.push({ kind: DEMOTE, leader: view, term: state.leading ?? newest });
  }
  let following = state.following;
  if (
    view.tokenId !== null &&
    view.tokenId !== state.seat &&
    // The agent gives a reason exactly when this node is the seat named but does not lead.
    view.reason === null &&
    view.state === LEADER_CURRENT &&
    !older
  ) {
    const key = followKey(view);
    if (key !== state.following) actions.push({ kind: FOLLOW, leader: view, term });
    following = key;
  }
  return [{ ...next, leading: null, following }, actions];
}

/** Why this node does not lead, in one sentence for a log, from the view `onDemote` got. */
export function whyNotLeading(leader: Leader): string {
  if (leader.tokenId === null) {
    if (leader.refusedSeat !== null) {
      const why = leader.reason ?? "no reason given";
      return `this node refuses seat ${leader.refusedSeat}, elected leader (${why})`;
    }
    return "the cluster has no leader";
  }
  if (leader.reason !== null) {
    // The agent's reason, or this module's: a term not to promote under, a lease not renewed.
    return `this node is the seat named leader but does not lead (${leader.reason})`;
  }
  if (leader.state !== LEADER_CURRENT) {
    return `node ${leader.tokenId} leads, but this node's view of it is ${leader.state}`;
  }
  return `node ${leader.tokenId} leads under term ${leader.term}`;
}

/** What {@link followLeader} uses of the SDK (a {@link DStackP2PSDK} is one). */
export interface LeaderSource {
  monitorLeader(callback: (leader: Leader) => unknown, options: { signal?: AbortSignal }): Promise<unknown>;
  leader(signal?: AbortSignal): Promise<Leader>;
  status(signal?: AbortSignal): Promise<{ readonly node: { readonly tokenId: number | null } }>;
}

export interface FollowLeaderOptions {
  /**
   * Called when another node leads, confirmed, and is to be followed at `leader.address` (again when it
   * moves).
   */
  readonly onFollow?: ((leader: Leader) => unknown) | null;
  /** The SDK to use; without it one is made for `api` and closed on the way out. */
  readonly sdk?: LeaderSource | null;
  /** Where a new SDK finds the agent, as {@link DStackP2PSDK} takes it. */
  readonly api?: string | null;
  /** Aborting it stops following, which then rejects with the signal's reason. */
  readonly signal?: AbortSignal;
  /**
   * Where the warnings go (a refused promotion, a lease that ran out, the agent unreachable): warnings to
   * `console.warn` by default, `null` silences it.
   */
  readonly logger?: Partial<Logger> | null;
  /**
   * Spaces the attempts to follow the agent while it cannot be followed at all (not up yet, a reply it could
   * not read); `new Backoff(1, 10)` unless given. Once following, the SDK reconnects by itself.
   */
  readonly backoff?: Backoff;
}

/**
 * Follows the leader as a role until `signal` aborts: `onPromote(leader)` when this node becomes the leader
 * of a term (`leader.term` is the term to fence its writes with), `onDemote(leader)` when it stops (another
 * node leads, its lease ended, no leader, its seat refused), `onFollow(leader)` when another node leads,
 * confirmed, and is to be followed at `leader.address` (again when it moves).
 *
 * Fenced by the term: nothing is done under a term older than one seen; a promotion in term T is followed by
 * exactly one demotion before any promotion in a later term; a view that changes nothing calls nothing. The
 * first view always calls back (`onDemote` unless it promotes), so that a service left leading by an earlier
 * run stands down. {@link decideFollow} has the rules.
 *
 * While this node leads it renews the lease by reading the leader again at a third of what is left, and
 * demotes it when the lease runs out with no renewal (the agent stopped, or cannot answer); `onDemote` then
 * gets the last view with `isSelf` false and `reason` {@link LEASE_LAPSED}. An agent that restarts is
 * followed again without a call if nothing changed. A planned change (the leader's agent stopped with SIGTERM,
 * or asked to hand off) comes as one change of term: `onDemote` on the old leader with `leader.handingOffTo`
 * naming the successor (a clean switchover: stop taking writes and let the replicas catch up), then
 * `onPromote` on the successor once the hand-off's block is in, with `leader.termReason` `"handoff"`.
 * Callbacks may be plain or async functions and are awaited one at a time, in order: keep them short (hand
 * long work to a task). What they throw rejects this function.
 */
export async function followLeader(
  onPromote: (leader: Leader) => unknown,
  onDemote: (leader: Leader) => unknown,
  options: FollowLeaderOptions = {},
): Promise<never> {
  for (const [name, f] of [
    ["onPromote", onPromote],
    ["onDemote", onDemote],
  ] as const) {
    if (typeof f !== "function") {
      throw new TypeError(`followLeader() takes ${name} as a function, not ${show(f)}`);
    }
  }
  const given = options.sdk ?? null;
  if (given !== null && options.api != null) {
    throw new TypeError("give sdk or api, not both: api is where a new SDK would look for the agent");
  }
  const own = given === null ? new DStackP2PSDK({ api: options.api ?? null, logger: options.logger }) : null;
  try {
    return await new Following(own ?? (given as LeaderSource), options, {
      [PROMOTE]: onPromote,
      [DEMOTE]: onDemote,
      [FOLLOW]: options.onFollow ?? null,
    }).run();
  } finally {
    own?.close();
  }
}

function seconds(): number {
  return performance.now() / 1000;
}

function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

/** A flag a task waits on, set by another: what `asyncio.Event` is to the Python SDK. */
class Wake {
  private isSet = false;
  private readonly waiters = new Set<() => void>();

  set(): void {
    this.isSet = true;
    for (const w of this.waiters) w();
    this.waiters.clear();
  }

  clear(): void {
    this.isSet = false;
  }

  /** True once set (at once if it is), false after `timeout` seconds (never when null); rejects on abort. */
  wait(timeout: number | null, signal?: AbortSignal): Promise<boolean> {
    if (this.isSet) return Promise.resolve(true);
    return new Promise<boolean>((resolve, reject) => {
      if (signal?.aborted) {
        reject(signal.reason);
        return;
      }
      let timer: ReturnType<typeof setTimeout> | undefined;
      const done = (value: boolean) => {
        clearTimeout(timer);
        signal?.removeEventListener("abort", onAbort);
        this.waiters.delete(woken);
        resolve(value);
      };
      const woken = () => done(true);
      const onAbort = () => {
        clearTimeout(timer);
        this.waiters.delete(woken);
        reject(signal?.reason);
      };
      this.waiters.add(woken);
      if (timeout !== null) timer = setTimeout(() => done(false), timeout * 1000);
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  }
}

/**
 * The loop around {@link decideFollow}: it takes the views in order and makes the calls, while the agent's
 * events are followed into it.
 */
class Following {
  private state: FollowState = INITIAL_FOLLOW_STATE;
  /** The agent's latest word, as it said it. */
  private view: Leader | null = null;
  /** Until when (seconds of `performance.now()`) this node's lease holds, by the last view renewing it. */
  private leaseUntil: number | null = null;
  // A lease ran out unrenewed, and no word from the agent came since: ask it until one does.
  private lapsed = false;
  // Renewals fail since the last warning about it: said once, not at every retry.
  private failing = false;
  // Every view, in order: skipping one could skip a newer term, and promote under an older one.
  private readonly inputs: [Leader, number][] = [];
  private readonly wake = new Wake();
  private heard = 0;
  private readonly log: Logger;
  private readonly stopping = new AbortController();
  private readonly where: string;
  private readonly backoff: Backoff;

  constructor(
    private readonly sdk: LeaderSource,
    private readonly options: FollowLeaderOptions,
    private readonly callbacks: Record<FollowKind, ((leader: Leader) => unknown) | null>,
  ) {
    this.log = toLogger(options.logger);
    const endpoint = (sdk as { endpoint?: { describe(): string } }).endpoint;
    this.where = endpoint !== undefined ? endpoint.describe() : "the agent";
    this.backoff = options.backoff ?? new Backoff(RETRY_START, RETRY_MAX);
  }

  private readonly hear = (leader: Leader): void => {
    this.heard += 1;
    this.inputs.push([leader, seconds()]);
    this.wake.set();
  };

  async run(): Promise<never> {
    const signal = this.options.signal;
    const stop = () => this.stopping.abort(signal?.reason);
    signal?.addEventListener("abort", stop, { once: true });
    const watching = this.watch();
    try {
      for (;;) {
        signal?.throwIfAborted();
        this.wake.clear();
        for (let input = this.inputs.shift(); input !== undefined; input = this.inputs.shift()) {
          await this.take(input[0], input[1]);
        }
        if (!(await this.wake.wait(this.waitFor(seconds()), signal))) await this.due();
      }
    } finally {
      signal?.removeEventListener("abort", stop);
      this.stopping.abort(new Error("followLeader stopped"));
      await watching;
    }
  }

  /**
   * The agent's events into the queue, until stopped. The SDK reconnects by itself once connected; this
   * retries what it does not (the agent not up yet, a reply it could not read).
   */
  private async watch(): Promise<void> {
    const signal = this.stopping.signal;
    while (!signal.aborted) {
      const heard = this.heard;
      let failure: { error: unknown } | null = null;
      try {
        await this.sdk.monitorLeader(this.hear, { signal });
      } catch (error) {
        if (signal.aborted) return;
        failure = { error };
      }
      // Followed for a while: a new failure, not the same one still going on.
      if (this.heard !== heard) this.backoff.reset();
      const delay = this.backoff.next();
      if (failure !== null) {
        const [why, wait] = [message(failure.error), delay.toFixed(1)];
        this.log.warn(`following the leader at ${this.where} failed (${why}); retrying in ${wait} s`);
      }
      try {
        await sleep(delay, signal);
      } catch {
        return;
      }
    }
  }

  private waitFor(now: number): number | null {
    if (this.state.leading !== null && this.leaseUntil !== null) {
      const left = this.leaseUntil - now;
      // A third of what is left, so that two answers can be lost before it ends.
      return left <= 0 ? 0 : Math.max(left / 3, Math.min(left, 0.05));
    }
    return this.lapsed ? POLL : null;
  }

  private async due(): Promise<void> {
    if (!this.leaseOver(seconds())) await this.renew();
    if (this.leaseOver(seconds())) await this.lapse();
  }

  private leaseOver(now: number): boolean {
    return this.state.leading !== null && this.leaseUntil !== null && now >= this.leaseUntil;
  }

  private async take(leader: Leader, heardAt: number): Promise<void> {
    this.view = leader;
    this.lapsed = false;
    if (this.state.seat === null && leader.tokenId !== null && !leader.isSelf && leader.reason === null) {
      await this.learnSeat();
    }
    await this.decide(leader);
    const holds = this.state.leading !== null && leader.isSelf && leader.leaseMs !== null;
    this.leaseUntil = holds && leader.leaseMs !== null ? heardAt + leader.leaseMs / 1000 : null;
  }

  private async lapse(): Promise<void> {
    const view = this.view as Leader;
    this.log.warn(
      `this node's lease ran out with no renewal from the agent at ${this.where}: standing down as leader`,
    );
    this.leaseUntil = null;
    this.lapsed = true;
    await this.decide(notLeading(view, LEASE_LAPSED));
  }

  private async decide(leader: Leader): Promise<void> {
    const refused = this.state.refused;
    const [state, actions] = decideFollow(this.state, leader);
    this.state = state;
    if (state.refused !== null && state.refused !== refused) this.log.warn(state.refused);
    for (const action of actions) {
      this.log.debug(`${action.kind} (term ${action.term}): seat ${action.leader.tokenId}`);
      const callback = this.callbacks[action.kind];
      if (callback !== null) await callback(action.leader);
    }
  }

  /** Reads the leader again; an event heard meanwhile wins, and cuts the wait short. */
  private async renew(): Promise<void> {
    // The lease counts from before the question: the answer is at least that old.
    const askedAt = seconds();
    const heard = this.heard;
    const leading = this.state.leading !== null && this.leaseUntil !== null;
    const left = leading && this.leaseUntil !== null ? this.leaseUntil - askedAt : ASK_TIMEOUT;
    const ask = new AbortController();
    const stop = () => ask.abort(this.stopping.signal.reason);
    this.stopping.signal.addEventListener("abort", stop, { once: true });
    type Outcome =
      | { kind: "answer"; leader: Leader }
      | { kind: "error"; error: unknown }
      | { kind: "woken" | "late" };
    let outcome: Outcome;
    try {
      outcome = await Promise.race<Outcome>([
        this.sdk.leader(ask.signal).then(
          (leader) => ({ kind: "answer", leader }),
          (error: unknown) => ({ kind: "error", error }),
        ),
        this.wake.wait(Math.min(Math.max(left, 0.05), ASK_TIMEOUT), ask.signal).then(
          (woken) => ({ kind: woken ? "woken" : "late" }),
          (error: unknown) => ({ kind: "error", error }),
        ),
      ]);
    } finally {
      ask.abort(new Error("renewal over"));
      this.stopping.signal.removeEventListener("abort", stop);
    }
    this.stopping.signal.throwIfAborted();
    if (outcome.kind === "woken") return;
    if (outcome.kind === "answer") {
      this.failing = false;
      if (this.heard === heard) await this.take(outcome.leader, askedAt);
      return;
    }
    const why = outcome.kind === "error" ? message(outcome.error) : "no answer in time";
    if (leading && !this.failing) {
      this.failing = true;
      this.log.warn(
        `could not renew this node's lease with the agent at ${this.where} (${why}); it holds for what is ` +
          `left of it, ${Math.max(left, 0).toFixed(1)} s`,
      );
    } else {
      this.log.debug(`could not read the leader from the agent at ${this.where}: ${why}`);
    }
  }

  private async learnSeat(): Promise<void> {
    const ask = new AbortController();
    const stop = () => ask.abort(this.stopping.signal.reason);
    this.stopping.signal.addEventListener("abort", stop, { once: true });
    const timer = setTimeout(() => ask.abort(new Error("no answer in time")), ASK_TIMEOUT * 1000);
    try {
      const seat = (await this.sdk.status(ask.signal)).node.tokenId;
      if (typeof seat === "number") this.state = { ...this.state, seat };
    } catch (e) {
      this.stopping.signal.throwIfAborted();
      this.log.debug(`could not read this node's seat from the agent at ${this.where}: ${message(e)}`);
    } finally {
      clearTimeout(timer);
      this.stopping.signal.removeEventListener("abort", stop);
    }
  }
}

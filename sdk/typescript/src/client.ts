/** The client of the agent's local API: what an application on a node calls. */

import { type ApiEndpoint, resolveApi, unreachableMessage } from "./endpoint.js";
import { AgentError, AgentUnreachable, ConfigMismatch, ProtocolError, RegistrationError } from "./errors.js";
import { iterEvents } from "./events.js";
import { Health, Leader, type Peer, type Reconnected, Status, addresses, peersFromJSON } from "./models.js";
import { DEFAULT_LOGGER, type EventStream, type Logger, SILENT_LOGGER, follow, sleep } from "./monitor.js";
import { show } from "./show.js";
import {
  FetchTransport,
  SocketTransport,
  type Transport,
  type TransportResponse,
  readAll,
} from "./transport.js";
import { VERSION } from "./version.js";

/** The agent's modes. */
export const MODES = ["wireguard", "tls"] as const;
export type Mode = (typeof MODES)[number];

/**
 * The longest `reason` a health report may give (the agent's limit: it goes into logs and every peer's view
 * of this node), in characters (code points, as the agent counts them).
 */
export const MAX_HEALTH_REASON = 200;

const ADDRESS = /^0x[0-9a-fA-F]{40}$/;
// C0 and C1 controls, DEL included: what the agent refuses in a reason (it must stay one line in a log).
// eslint-disable-next-line no-control-regex
const CONTROL = /[\x00-\x1f\x7f-\x9f]/;

export interface DStackP2PSDKOptions {
  /** The cluster contract's address, checked against the agent's; `null` or absent skips the check. */
  readonly contract?: string | null;
  /** `"wireguard"` or `"tls"`, checked against the agent's; `null` or absent skips the check. */
  readonly mode?: Mode | null;
  /**
   * The agent's API: a unix socket path, or a loopback URL such as `http://127.0.0.1:8000`. When absent:
   * `$DSTACK_MESH_API`, else `/run/p2p-agent/api.sock` if it exists, else `http://127.0.0.1:8000`.
   */
  readonly api?: string | null;
  /** Bounds each request, in seconds (5 by default). */
  readonly timeout?: number;
  /**
   * Where the monitors say that the stream was lost (warn) and is back (info). By default warnings go to
   * `console.warn` and the rest nowhere; `null` silences it.
   */
  readonly logger?: Partial<Logger> | null;
}

export interface RegisterOptions {
  /** Seconds to wait for the record before returning false (120 by default). */
  readonly timeout?: number;
  /** Seconds between two reads of the agent's status (0.5 by default). */
  readonly poll?: number;
  /** Aborting it stops the wait, rejecting with its reason. */
  readonly signal?: AbortSignal;
}

export interface SetHealthyOptions {
  /** Why, in one line of at most 200 characters; shown in `Leader.reason` and the agent's log. */
  readonly reason?: string | null;
  /** Seconds (above 0) the report holds; then the node counts as unhealthy until the next report. */
  readonly ttl?: number | null;
}

export interface MonitorPeersOptions<D extends boolean = boolean> {
  /** Gets the current leader first, then each change of what an application acts on. */
  readonly onLeader?: ((leader: Leader) => unknown) | null;
  /** `true`: the callback gets `Peer[]` as `peers()` returns, rather than the addresses. */
  readonly detailed?: D;
  /** Called when the monitor has followed the agent again after losing it. */
  readonly onReconnect?: ((info: Reconnected) => unknown) | null;
  /** Aborting it stops the monitor, which then rejects with the signal's reason. */
  readonly signal?: AbortSignal;
}

export interface MonitorLeaderOptions {
  readonly onReconnect?: ((info: Reconnected) => unknown) | null;
  readonly signal?: AbortSignal;
}

/**
 * The dstack-mesh agent's local API, from an application on the same node.
 *
 * `contract` (the cluster contract's address) and `mode` (`"wireguard"` or `"tls"`) are optional checks:
 * when given, the first call reads the agent's status and throws {@link ConfigMismatch} if the agent serves
 * another cluster or runs in another mode, so that an app wired to the wrong agent fails at once rather
 * than talking to the wrong peers.
 *
 * `api` is where the agent's API is: a unix socket path, or a loopback URL such as `http://127.0.0.1:8000`.
 * When absent: `$DSTACK_MESH_API`, else `/run/p2p-agent/api.sock` if it exists, else
 * `http://127.0.0.1:8000` (the compose sidecar's). `timeout` bounds each request, in seconds.
 *
 * Call {@link close} when done: it ends the monitors still running.
 */
export class DStackP2PSDK {
  readonly contract: string | null;
  readonly mode: Mode | null;
  readonly timeout: number;
  readonly endpoint: ApiEndpoint;
  private readonly transport: Transport;
  private readonly log: Logger;
  private readonly closing = new AbortController();
  private checked = false;

  /** `new DStackP2PSDK(contract, mode, {api, timeout})`, or `new DStackP2PSDK({contract, mode, api, timeout})`. */
  constructor(options?: DStackP2PSDKOptions);
  constructor(
    contract?: string | null,
    mode?: Mode | null,
    options?: Omit<DStackP2PSDKOptions, "contract" | "mode">,
  );
  constructor(
    contractOrOptions?: string | null | DStackP2PSDKOptions,
    mode?: Mode | null,
    options?: Omit<DStackP2PSDKOptions, "contract" | "mode">,
  ) {
    const o: DStackP2PSDKOptions =
      typeof contractOrOptions === "object" && contractOrOptions !== null
        ? contractOrOptions
        : { ...options, contract: contractOrOptions ?? null, mode: mode ?? null };
    const contract = o.contract ?? null;
    if (contract !== null && (typeof contract !== "string" || !ADDRESS.test(contract.trim()))) {
      throw new TypeError(
        `contract ${show(contract)} is not a contract address (0x and 40 hex digits): pass the cluster ` +
          `contract's address, or null to skip the check`,
      );
    }
    const m = o.mode ?? null;
    if (m !== null && !(MODES as readonly unknown[]).includes(m)) {
      throw new TypeError(`mode ${show(m)} is not one of ${MODES.join(", ")} (or null to skip the check)`);
    }
    const timeout = o.timeout ?? 5;
    if (typeof timeout !== "number" || !(timeout > 0) || !Number.isFinite(timeout)) {
      throw new TypeError(`timeout must be a positive number of seconds, not ${show(timeout)}`);
    }
    this.contract = contract !== null ? contract.trim() : null;
    this.mode = m;
    this.timeout = timeout;
    this.endpoint = resolveApi(o.api);
    this.transport =
      this.endpoint.socket !== null
        ? new SocketTransport(this.endpoint.socket)
        : new FetchTransport(this.endpoint.baseUrl);
    this.log = toLogger(o.logger);
  }

  /** The socket path or URL in use. */
  get api(): string {
    return this.endpoint.address;
  }

  toString(): string {
    return `DStackP2PSDK(contract=${show(this.contract)}, mode=${show(this.mode)}, api=${show(this.api)})`;
  }

  /** Ends the monitors and requests under way; the SDK cannot be used after. */
  close(): void {
    this.closing.abort(new Error("this DStackP2PSDK is closed: make a new one"));
  }

  // --- the API -------------------------------------------------------------------------------------

  /** `GET /v1/status`: the agent, this node and the chain. Does no contract/mode check. */
  async status(signal?: AbortSignal): Promise<Status> {
    return Status.fromJSON(await this.getJSON("/v1/status", signal));
  }

  /**
   * Waits until this node's record is on-chain; true once it is.
   *
   * The agent registers the node by itself as soon as a seat of the cluster is bound to its instance: this
   * method sends nothing, it polls the agent's status every `poll` seconds and waits.
   *
   * Returns false if `timeout` seconds pass while the agent is still trying without reporting an error
   * (e.g. waiting for a transaction to be mined). Throws {@link RegistrationError} with the agent's own
   * text as soon as it reports why it cannot register: no seat bound to this instance (the text carries the
   * `meshctl bind --instance` command for the holder), no funded sender, or the chain's RPC failing. Throws
   * {@link ConfigMismatch} if the agent serves another contract or mode, and {@link AgentUnreachable} if the
   * agent cannot be reached at first (once it has answered, a restart of the agent during the wait is
   * waited out).
   */
  async register(options: RegisterOptions = {}): Promise<boolean> {
    const timeout = options.timeout ?? 120;
    const poll = options.poll ?? 0.5;
    for (const [name, value] of [
      ["timeout", timeout],
      ["poll", poll],
    ] as const) {
      if (typeof value !== "number" || Number.isNaN(value) || value < 0) {
        throw new TypeError(`register(): ${name} must be a number of seconds, not ${show(value)}`);
      }
    }
    const now = () => performance.now() / 1000;
    const deadline = now() + timeout;
    let answered = false;
    for (;;) {
      let status: Status | undefined;
      try {
        status = await this.status(options.signal);
      } catch (e) {
        if (!(e instanceof AgentUnreachable) || !answered || now() >= deadline) throw e;
        this.log.info(`the agent is not answering while registering (${e.message}); still waiting`);
      }
      if (status !== undefined) {
        answered = true;
        this.check(status);
        this.checked = true;
        if (status.node.registered) return true;
        if (status.node.registrationError) throw new RegistrationError(status.node.registrationError);
        if (status.chain.lastError) throw new RegistrationError(status.chain.lastError, { source: "chain" });
      }
      const remaining = deadline - now();
      if (remaining <= 0) return false;
      await sleep(Math.min(poll, remaining), options.signal);
    }
  }

  /** `GET /v1/peers`: every peer with every field, in tokenId order. */
  async peers(signal?: AbortSignal): Promise<Peer[]> {
    await this.ensureChecked(signal);
    return peersFromJSON(await this.getJSON("/v1/peers", signal));
  }

  /**
   * The address to connect to for each peer that has one, in tokenId order: its overlay IP while the
   * tunnel is up, its gateway URL otherwise. Peers reachable neither way are left out.
   */
  async getPeers(signal?: AbortSignal): Promise<string[]> {
    return addresses(await this.peers(signal));
  }

  /**
   * `GET /v1/leader`: the cluster's elected leader (`tokenId` null when there is none).
   *
   * `isSelf` is true only while this node leads under a lease that holds now, and `term` is the fencing
   * term to tag writes with: see {@link Leader}.
   */
  async leader(signal?: AbortSignal): Promise<Leader> {
    await this.ensureChecked(signal);
    return Leader.fromJSON(await this.getJSON("/v1/leader", signal));
  }

  /**
   * `GET /v1/health`: whether this node is fit to lead, by this application's last report
   * ({@link setHealthy}) and the agent's own check (`--health-url`, `--health-cmd`).
   */
  async health(signal?: AbortSignal): Promise<Health> {
    await this.ensureChecked(signal);
    return Health.fromJSON(await this.getJSON("/v1/health", signal));
  }

  /**
   * Reports this application's health to the agent (`POST /v1/health`); returns the node's health.
   *
   * Leadership depends on it: while the report says unhealthy this node never reports `isSelf`, casts no
   * vote or election, and if it leads, the other nodes vote it out after their `--leader-timeout`.
   * `reason` (at most 200 characters, one line) is shown in `Leader.reason` and the agent's log.
   *
   * With `ttl` (seconds, above 0) the report holds that long and then counts as unhealthy until the next
   * one, so an application that renews it more often than `ttl` makes its node unhealthy by crashing or
   * hanging; without it the report holds until the next one. The agent keeps one report per node: the last
   * one sent wins, whichever process sent it.
   *
   * Throws a `TypeError` for an argument the agent would refuse, {@link AgentError} with the agent's text
   * when it refuses the report (403: sent to an `--api-listen` address that is not loopback; 405: an agent
   * older than this API), and {@link AgentUnreachable} as every call does.
   */
  async setHealthy(healthy: boolean, options: SetHealthyOptions = {}): Promise<Health> {
    if (typeof healthy !== "boolean") {
      throw new TypeError(`healthy must be true or false, not ${show(healthy)}`);
    }
    const body: Record<string, unknown> = { healthy };
    const { reason, ttl } = options;
    if (reason !== null && reason !== undefined) {
      if (typeof reason !== "string") {
        throw new TypeError(`reason must be a string or null, not ${show(reason)}`);
      }
      const length = [...reason].length;
      if (length > MAX_HEALTH_REASON) {
        throw new TypeError(
          `reason has ${length} characters; the agent takes at most ${MAX_HEALTH_REASON}: ` +
            `shorten it (it is shown in logs and in every peer's view of this node)`,
        );
      }
      if (CONTROL.test(reason)) {
        throw new TypeError(
          `reason ${show(reason)} contains control characters (a newline, say): give one line of ` +
            `text, e.g. the first line of the error`,
        );
      }
      body["reason"] = reason;
    }
    if (ttl !== null && ttl !== undefined) {
      if (typeof ttl !== "number" || !Number.isFinite(ttl) || ttl <= 0) {
        throw new TypeError(
          `ttl must be a number of seconds above 0, not ${show(ttl)}, or null for a report that holds ` +
            `until the next one`,
        );
      }
      body["ttlSecs"] = ttl;
    }
    await this.ensureChecked();
    return Health.fromJSON(await this.postJSON("/v1/health", body));
  }

  /**
   * Follows the peer list until `signal` aborts: `callback` gets the current list first, then each change.
   *
   * The list is what {@link getPeers} returns, and `callback` is called again only when that list of
   * addresses differs from the last one it got: a peer's health, path or leadership changing with the same
   * addresses calls nothing. With `detailed: true` it gets `Peer[]` as {@link peers} does, on each change
   * {@link Peer.changeKey} says, the agent's own definition (its `--on-change` hook follows it too): a peer
   * joining or leaving, or one's key, endpoint, address, connection, path, health or leadership changing;
   * never traffic counters or handshake times alone. `onLeader` gets a {@link Leader}
   * first and then whenever what an application acts on changes: `tokenId`, `address`, `reachable`,
   * `isSelf`, `term`, `state`, `healthy` or `reason` (so it hears at once that this node's lease ended), not
   * when only `ageMs` or `leaseMs` moved. Callbacks may be plain or async functions; what they throw (or
   * their promise rejects with) rejects the monitor.
   *
   * When the stream is lost (the agent stopped or restarted) it reconnects, waiting from 0.2 s doubling to
   * 5 s with jitter, and calls the callbacks again only if what they would get differs from what they got
   * last, so a restart with the same peers is no change. Each loss is logged as a warning, each
   * reconnection as info, and `onReconnect` gets a {@link Reconnected}. Failing to connect at the start
   * rejects with {@link AgentUnreachable}.
   *
   * It never resolves: it rejects with the signal's reason when `signal` aborts, with what a callback threw,
   * or with an error the SDK cannot retry ({@link ConfigMismatch} after a restart, {@link ProtocolError}).
   */
  monitorPeers(callback: (peers: string[]) => unknown, options?: MonitorPeersOptions<false>): Promise<never>;
  monitorPeers(callback: (peers: Peer[]) => unknown, options: MonitorPeersOptions<true>): Promise<never>;
  async monitorPeers(
    callback: ((peers: string[]) => unknown) | ((peers: Peer[]) => unknown),
    options: MonitorPeersOptions = {},
  ): Promise<never> {
    if (typeof callback !== "function") {
      throw new TypeError(`monitorPeers() takes a callback function, not ${show(callback)}`);
    }
    return this.follow(callback as (value: never) => unknown, {
      onLeader: options.onLeader ?? null,
      detailed: options.detailed === true,
      onReconnect: options.onReconnect ?? null,
      signal: options.signal,
    });
  }

  /**
   * Follows the leader until `signal` aborts: `callback` gets the current {@link Leader} first, then one on
   * each change, as `onLeader` of {@link monitorPeers} does. Reconnects as it does.
   */
  async monitorLeader(
    callback: (leader: Leader) => unknown,
    options: MonitorLeaderOptions = {},
  ): Promise<never> {
    if (typeof callback !== "function") {
      throw new TypeError(`monitorLeader() takes a callback function, not ${show(callback)}`);
    }
    return this.follow(null, {
      onLeader: callback,
      detailed: false,
      onReconnect: options.onReconnect ?? null,
      signal: options.signal,
    });
  }

  // --- plumbing ------------------------------------------------------------------------------------

  private async follow(
    onPeers: ((value: never) => unknown) | null,
    o: {
      onLeader: ((leader: Leader) => unknown) | null;
      detailed: boolean;
      onReconnect: ((info: Reconnected) => unknown) | null;
      signal: AbortSignal | undefined;
    },
  ): Promise<never> {
    await this.ensureChecked(o.signal);
    return follow((signal) => this.eventStream(signal), {
      address: this.endpoint.describe(),
      onPeers,
      onLeader: o.onLeader,
      detailed: o.detailed,
      onReconnect: o.onReconnect,
      recheck: this.hasChecks ? () => this.recheck(o.signal) : null,
      signal: o.signal,
      log: this.log,
    });
  }

  private get hasChecks(): boolean {
    return this.contract !== null || this.mode !== null;
  }

  private check(status: Status): void {
    if (this.contract !== null && this.contract.toLowerCase() !== status.chain.contract.toLowerCase()) {
      throw new ConfigMismatch(
        `the dstack-mesh agent at ${this.endpoint.describe()} serves cluster contract ` +
          `${status.chain.contract}, but this SDK was given ${this.contract}: the agent serves another ` +
          `cluster. Fix DSTACK_MESH_CONTRACT (the agent's or this app's) or the SDK's contract ` +
          `argument so that both name the same contract.`,
        { field: "contract", expected: this.contract, actual: status.chain.contract },
      );
    }
    if (this.mode !== null && this.mode !== status.mode) {
      throw new ConfigMismatch(
        `the dstack-mesh agent at ${this.endpoint.describe()} runs in mode "${status.mode}", but ` +
          `this SDK was given mode "${this.mode}": the agent runs in another mode. Fix the agent's ` +
          `DSTACK_MESH_MODE or the SDK's mode argument.`,
        { field: "mode", expected: this.mode, actual: status.mode },
      );
    }
  }

  private async ensureChecked(signal?: AbortSignal): Promise<void> {
    if (this.checked || !this.hasChecks) return;
    this.check(await this.status(signal));
    this.checked = true;
  }

  private async recheck(signal?: AbortSignal): Promise<void> {
    this.check(await this.status(signal));
  }

  /**
   * The caller's signal and the SDK's own `close()`, as one: either ends a request. `done` removes its
   * listeners, which would otherwise pile up on a long-lived signal with each request.
   */
  private signalFor(signal: AbortSignal | undefined): { signal: AbortSignal; done: () => void } {
    this.closing.signal.throwIfAborted();
    if (signal === undefined) return { signal: this.closing.signal, done: () => {} };
    signal.throwIfAborted();
    const both = new AbortController();
    const fromCaller = () => both.abort(signal.reason);
    const fromClose = () => both.abort(this.closing.signal.reason);
    signal.addEventListener("abort", fromCaller, { once: true });
    this.closing.signal.addEventListener("abort", fromClose, { once: true });
    return {
      signal: both.signal,
      done: () => {
        signal.removeEventListener("abort", fromCaller);
        this.closing.signal.removeEventListener("abort", fromClose);
      },
    };
  }

  private async send(
    method: "GET" | "POST",
    path: string,
    headers: Record<string, string>,
    body: Uint8Array | undefined,
    stream: boolean,
    signal: AbortSignal,
  ): Promise<TransportResponse> {
    try {
      return await this.transport.request({
        method,
        path,
        headers: { "user-agent": `dstack-p2p-typescript/${VERSION}`, ...headers },
        ...(body !== undefined ? { body } : {}),
        timeout: this.timeout,
        timeoutCoversBody: !stream,
        signal,
      });
    } catch (e) {
      throw this.transportError(e, signal);
    }
  }

  /** An abort passes through as its reason; anything else from the transport is the agent being unreachable. */
  private transportError(e: unknown, signal: AbortSignal): unknown {
    if (signal.aborted) return signal.reason;
    return new AgentUnreachable(unreachableMessage(this.endpoint, e, this.timeout), {
      address: this.endpoint.address,
      cause: e,
    });
  }

  private async getJSON(path: string, signal?: AbortSignal): Promise<unknown> {
    return this.exchangeJSON("GET", path, undefined, signal);
  }

  private async postJSON(path: string, body: unknown): Promise<unknown> {
    return this.exchangeJSON("POST", path, body);
  }

  private async exchangeJSON(
    method: "GET" | "POST",
    path: string,
    json: unknown,
    signal?: AbortSignal,
  ): Promise<unknown> {
    const headers: Record<string, string> = { accept: "application/json" };
    let body: Uint8Array | undefined;
    if (json !== undefined) {
      headers["content-type"] = "application/json";
      body = new TextEncoder().encode(JSON.stringify(json));
    }
    const combined = this.signalFor(signal);
    let status: number;
    let statusText: string;
    let content: Uint8Array;
    try {
      const response = await this.send(method, path, headers, body, false, combined.signal);
      ({ status, statusText } = response);
      try {
        content = await readAll(response.body);
      } catch (e) {
        throw this.transportError(e, combined.signal);
      } finally {
        response.close();
      }
    } finally {
      combined.done();
    }
    if (status !== 200) throw httpError(status, statusText, content, path, method);
    try {
      return JSON.parse(new TextDecoder().decode(content));
    } catch {
      throw new ProtocolError(
        `the reply to ${method} ${path} from ${this.endpoint.describe()} is not JSON: is the ` +
          `dstack-mesh agent what serves this address?`,
      );
    }
  }

  private async eventStream(signal: AbortSignal | undefined): Promise<EventStream> {
    const path = "/v1/events";
    const combined = this.signalFor(signal);
    let response: TransportResponse;
    try {
      response = await this.send(
        "GET",
        path,
        // Events come only on changes, so a quiet stream is not a dead one: the timeout covers the headers.
        { accept: "text/event-stream", "cache-control": "no-cache" },
        undefined,
        true,
        combined.signal,
      );
      if (response.status !== 200) {
        let content: Uint8Array;
        try {
          content = await readAll(response.body);
        } catch (e) {
          throw this.transportError(e, combined.signal);
        } finally {
          response.close();
        }
        throw httpError(response.status, response.statusText, content, path, "GET");
      }
    } catch (e) {
      combined.done();
      throw e;
    }
    const body = response.body;
    const address = this.endpoint.address;
    // Only the SDK's own I/O is turned into its errors; the monitor tells a broken stream from the rest.
    async function* chunks(): AsyncGenerator<Uint8Array> {
      try {
        yield* body;
      } catch (e) {
        if (combined.signal.aborted) throw combined.signal.reason;
        const text = e instanceof Error ? e.message : String(e);
        throw new AgentUnreachable(`the stream broke: ${text}`, { address, cause: e });
      }
    }
    const events = iterEvents(chunks());
    return {
      events,
      close() {
        response.close();
        combined.done();
        void events.return(undefined).catch(() => {});
      },
    };
  }
}

/**
 * The caller's logger, its missing levels filled in from the default. Called as its methods, not copied
 * off it, so that a logger whose methods live on its prototype (a class instance) keeps its `this`.
 */
/** `given` with the default logger's methods for those it lacks; `null`: silent. */
export function toLogger(given: Partial<Logger> | null | undefined): Logger {
  if (given === null) return SILENT_LOGGER;
  if (given === undefined) return DEFAULT_LOGGER;
  return {
    warn: (m) => (typeof given.warn === "function" ? given.warn(m) : DEFAULT_LOGGER.warn(m)),
    info: (m) => (typeof given.info === "function" ? given.info(m) : DEFAULT_LOGGER.info(m)),
    debug: (m) => (typeof given.debug === "function" ? given.debug(m) : DEFAULT_LOGGER.debug(m)),
  };
}

/** The agent's error text from its `{"error": ...}` body, and nothing else of the reply. */
function httpError(
  status: number,
  statusText: string,
  content: Uint8Array,
  path: string,
  method: string,
): AgentError {
  let text = statusText || "error";
  try {
    const body: unknown = JSON.parse(new TextDecoder().decode(content));
    if (
      typeof body === "object" &&
      body !== null &&
      typeof (body as { error?: unknown }).error === "string"
    ) {
      text = (body as { error: string }).error;
    }
  } catch {
    // Not JSON: the status line's text is all there is.
  }
  return new AgentError(status, text, { path, method });
}

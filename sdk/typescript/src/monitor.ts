/**
 * Following the agent's event stream: deliver the current peers and leader, then their changes, and come
 * back after the agent restarts without telling the caller about changes that did not happen.
 */

import { Backoff } from "./backoff.js";
import { AgentError, AgentUnreachable, ProtocolError } from "./errors.js";
import type { ServerSentEvent } from "./events.js";
import { Leader, type Peer, Reconnected, addresses, leaderKey, peersFromJSON } from "./models.js";
import { show } from "./show.js";

/**
 * Where the SDK reports what callers cannot see otherwise: a WARNING when the event stream is lost, an
 * INFO when it is back, a DEBUG per retry. `console` fits; so does any logger with these three methods.
 */
export interface Logger {
  warn(message: string): void;
  info(message: string): void;
  debug(message: string): void;
}

/** Warnings on stderr, the rest dropped: what an application that set up no logging sees. */
export const DEFAULT_LOGGER: Logger = {
  warn: (message) => console.warn(`dstack-mesh: ${message}`),
  info: () => {},
  debug: () => {},
};

export const SILENT_LOGGER: Logger = { warn: () => {}, info: () => {}, debug: () => {} };

/** An open event stream: its events, and how to close it. */
export interface EventStream {
  readonly events: AsyncIterator<ServerSentEvent>;
  close(): void;
}

export interface FollowOptions {
  /** Where the stream comes from, as the log names it. */
  readonly address: string;
  readonly onPeers: ((value: never) => unknown) | null;
  readonly onLeader: ((leader: Leader) => unknown) | null;
  readonly detailed: boolean;
  readonly onReconnect: ((info: Reconnected) => unknown) | null;
  /** Checks the agent's contract and mode again after a reconnection. */
  readonly recheck: (() => Promise<void>) | null;
  readonly signal: AbortSignal | undefined;
  readonly log: Logger;
  readonly backoff?: Backoff;
}

/** Waits `seconds`; rejects with the signal's reason when it aborts first. */
export function sleep(seconds: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, seconds * 1000);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

function data(event: ServerSentEvent): unknown {
  try {
    return JSON.parse(event.data);
  } catch {
    throw new ProtocolError(
      `the agent's "${event.event}" event is not JSON: ${show(event.data.slice(0, 80))}`,
    );
  }
}

function seconds(): number {
  return performance.now() / 1000;
}

/**
 * Follows `GET /v1/events` until `signal` aborts; see {@link DStackP2PSDK.monitorPeers}.
 *
 * The first connection failing throws (a wrong address should not look like a quiet cluster); once
 * connected, a lost stream is retried for ever. Only the SDK's own I/O is caught: whatever a callback
 * throws propagates, even an SDK error from a call the callback made.
 */
export async function follow(
  openStream: (signal: AbortSignal | undefined) => Promise<EventStream>,
  o: FollowOptions,
): Promise<never> {
  const backoff = o.backoff ?? new Backoff();
  const onPeers = o.onPeers as ((value: Peer[] | string[]) => unknown) | null;
  let lastPeers: string | undefined;
  let lastLeader: string | undefined;
  let connectedOnce = false;
  let lostAt: number | null = null;
  let reason = "";
  let lostReason = "";
  let attempts = 0;

  for (;;) {
    o.signal?.throwIfAborted();
    attempts += 1;
    let stream: EventStream | undefined;
    try {
      let connected = false;
      try {
        stream = await openStream(o.signal);
        if (lostAt !== null && o.recheck !== null) {
          // The agent may have come back with other settings.
          await o.recheck();
        }
        connected = true;
      } catch (e) {
        if (!(e instanceof AgentUnreachable || e instanceof AgentError) || o.signal?.aborted) throw e;
        if (!connectedOnce || (e instanceof AgentError && e.status < 500)) throw e;
        reason = e.message;
      }
      if (connected && stream !== undefined) {
        if (lostAt !== null) {
          const reconnected = new Reconnected({ attempts, downSecs: seconds() - lostAt, reason: lostReason });
          o.log.info(
            `reconnected to the dstack-mesh agent at ${o.address} after ${reconnected.attempts} attempt(s), ` +
              `${reconnected.downSecs.toFixed(1)} s down`,
          );
          lostAt = null;
          if (o.onReconnect !== null) await o.onReconnect(reconnected);
        }
        connectedOnce = true;
        attempts = 0;
        backoff.reset();
        for (;;) {
          let next: IteratorResult<ServerSentEvent>;
          try {
            next = await stream.events.next();
          } catch (e) {
            if (e instanceof AgentUnreachable && !o.signal?.aborted) {
              reason = e.message;
              break;
            }
            throw e;
          }
          if (next.done === true) {
            reason = "the agent ended the event stream (it stopped or restarted)";
            break;
          }
          // Outside the try: a callback's exception is not a lost stream.
          const event = next.value;
          if (event.event === "peers" && onPeers !== null) {
            const peers = peersFromJSON(data(event));
            const value = o.detailed ? peers : addresses(peers);
            // Detailed: any change of a peer (Peer.changeKey). Address list: only a change of the list
            // itself, so a health or path change never repeats the same list.
            const key = JSON.stringify(o.detailed ? peers.map((p) => p.changeKey()) : value);
            if (key !== lastPeers) {
              lastPeers = key;
              await onPeers(value);
            }
          } else if (event.event === "leader" && o.onLeader !== null) {
            const leader = Leader.fromJSON(data(event));
            const key = leaderKey(leader);
            if (key !== lastLeader) {
              lastLeader = key;
              await o.onLeader(leader);
            }
          }
        }
      }
    } finally {
      stream?.close();
    }
    if (lostAt === null) {
      lostAt = seconds();
      lostReason = reason;
      o.log.warn(`lost the event stream of the dstack-mesh agent at ${o.address}: ${reason}; reconnecting`);
    }
    const delay = backoff.next();
    o.log.debug(
      `reconnecting to ${o.address} in ${delay.toFixed(2)} s (attempt ${attempts} failed: ${reason})`,
    );
    await sleep(delay, o.signal);
  }
}

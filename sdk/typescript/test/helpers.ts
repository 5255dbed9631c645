/** What the client tests share: a stand-in agent per test, on a unix socket or loopback TCP. */

import { join } from "node:path";

import { DStackP2PSDK, type DStackP2PSDKOptions } from "../dist/index.js";
import { FakeAgent, type JsonObject, sockDir } from "./fake-agent.js";

export type Kind = "unix socket" | "loopback TCP";
export const KINDS: readonly Kind[] = ["unix socket", "loopback TCP"];

/** This node as the agent's status gives it: a test changes its fields in place. */
export function node(agent: FakeAgent): JsonObject {
  return agent.status.node;
}

/** Runs `body` with a started stand-in agent, and stops it (and removes its directory) after. */
export async function withAgent<T>(
  kind: Kind,
  body: (agent: FakeAgent, dir: string) => Promise<T>,
): Promise<T> {
  const dir = sockDir();
  const agent = new FakeAgent(kind === "unix socket" ? join(dir.path, "api.sock") : null);
  await agent.start();
  try {
    return await body(agent, dir.path);
  } finally {
    await agent.stop();
    dir.remove();
  }
}

/** A new SDK on `api`, closed after `body`; log records are collected in `sdk.logged`. */
export async function withSdk<T>(
  options: DStackP2PSDKOptions,
  body: (sdk: DStackP2PSDK, logged: string[]) => Promise<T>,
): Promise<T> {
  const logged: string[] = [];
  const sdk = new DStackP2PSDK({
    ...options,
    logger: {
      warn: (m) => logged.push(`WARNING ${m}`),
      info: (m) => logged.push(`INFO ${m}`),
      debug: (m) => logged.push(`DEBUG ${m}`),
    },
  });
  try {
    return await body(sdk, logged);
  } finally {
    sdk.close();
  }
}

/**
 * Runs a monitor while `body` runs, then stops it through its signal, and checks that it ended as asked
 * (with the signal's reason) rather than with an error of its own.
 */
export async function running<T>(
  start: (signal: AbortSignal) => Promise<never>,
  body: () => Promise<T>,
): Promise<T> {
  const controller = new AbortController();
  const monitor = start(controller.signal);
  let failure: unknown;
  const failed = monitor.catch((e: unknown) => {
    failure = e;
  });
  try {
    const result = await Promise.race([
      body(),
      failed.then(() => {
        throw new Error(`the monitor ended while it was to run: ${String(failure)}`, { cause: failure });
      }),
    ]);
    return result;
  } finally {
    const stop = new Error("stopped by the test");
    controller.abort(stop);
    await failed;
    if (failure !== stop) {
      // eslint-disable-next-line no-unsafe-finally
      throw new Error(`the monitor did not end with the abort reason: ${String(failure)}`, {
        cause: failure,
      });
    }
  }
}

/** Collects what the callbacks get, in order. */
export class Recorder {
  calls: [string, unknown][] = [];

  peers = (value: unknown): void => {
    this.calls.push(["peers", value]);
  };

  leader = async (value: { tokenId: number | null }): Promise<void> => {
    await Promise.resolve();
    this.calls.push(["leader", value.tokenId]);
  };

  reconnect = (info: unknown): void => {
    this.calls.push(["reconnected", info]);
  };

  async wait(count: number): Promise<void> {
    const deadline = Date.now() + 5000;
    while (this.calls.length < count) {
      if (Date.now() > deadline) {
        throw new Error(`expected ${count} calls within 5 s, got ${JSON.stringify(this.calls)}`);
      }
      await new Promise((r) => setTimeout(r, 10));
    }
  }
}

/** Rejects if `promise` has not settled within `ms`: a test that hangs says so rather than timing out. */
export function within<T>(ms: number, promise: Promise<T>): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`not settled within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

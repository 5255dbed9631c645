/**
 * A stand-in for the agent's API: a real HTTP/1.1 server (node:http) on a unix socket or loopback TCP, so
 * that the SDK's transports, chunked streaming and reconnection are exercised for real. The port of
 * sdk/python/tests/fake_agent.py.
 *
 * Run it by hand to smoke-test the live scripts (after `npm run build:test`):
 *
 *     node dist-test/fake-agent.js /tmp/agent.sock [--registration-error TEXT] &
 *     DSTACK_MESH_API=/tmp/agent.sock node test/live/register_and_list.mjs --contract 0x5FbDB2315678afecb367f032d93F642f64180aa3
 */

import { mkdtempSync, readFileSync, rmSync, unlinkSync } from "node:fs";
import { type IncomingMessage, type Server, type ServerResponse, createServer } from "node:http";
import type { AddressInfo, Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
export type JsonObject = { [key: string]: Json };

/**
 * What the agent's API serves: `GET /v1/status`, `/v1/peers` and `/v1/leader` of node 1 of a three-seat
 * cluster that seat 2 leads, and other views of the leader. Written from the agent's own types by
 * crates/mesh-api/tests/snapshot.rs, and shared with the Python SDK's and the examples' stand-ins: every body
 * this agent serves is a copy of it, adjusted, so that a field the agent renames or adds shows here.
 */
// From test/ and from dist-test/ alike: both are in sdk/typescript.
export const SNAPSHOT_FILE = fileURLToPath(new URL("../../fixtures/snapshot.json", import.meta.url));
const SNAPSHOT = JSON.parse(readFileSync(SNAPSHOT_FILE, "utf8")) as JsonObject;

/** The fixture's bodies, by name. */
export type SnapshotBody =
  | "status"
  | "peers"
  | "leader"
  | "leaderSelf"
  | "leaderHandingOff"
  | "leaderUnknown";

/** A copy of one body of the fixture, to change at will. */
export function snapshot<T extends Json = JsonObject>(name: SnapshotBody): T {
  return structuredClone(SNAPSHOT[name]) as T;
}

/** The fixture's contract as a user gives it, checksummed; the agent serves it in lower case. */
export const CONTRACT = "0x5FbDB2315678afecb367f032d93F642f64180aa3";

/** Node 1's status: seat 1, registered, following the chain. */
export function statusJson(): JsonObject & { node: JsonObject; chain: JsonObject } {
  return snapshot("status");
}

/** `body` (about seat 2) made about seat `tokenId`: who it is and where it is reached. */
function seat(body: JsonObject, tokenId: number): JsonObject {
  const ip = `10.0.1.${tokenId}`;
  return { ...body, tokenId, instanceId: `inst${tokenId}`, overlayIp: ip, address: ip };
}

/**
 * A peer over its tunnel, directly; `address: null` makes it unreachable, a URL puts it behind its gateway;
 * `extra` overrides any field. Seat 2 of the fixture, moved to seat `tokenId`.
 */
export function peerJson(tokenId: number, opts: { address?: string | null } & JsonObject = {}): JsonObject {
  const { address, ...extra } = opts;
  const peer = seat(snapshot<JsonObject[]>("peers")[0]!, tokenId);
  const endpoint = `192.0.2.${tokenId}:51820`;
  const candidates = (peer["candidates"] as JsonObject[]).map((c) => ({ ...c, address: endpoint }));
  const reached: JsonObject =
    address === undefined
      ? {}
      : address === null
        ? { address: null, connection: "unreachable", healthy: false }
        : { address, connection: "tls-gateway" };
  return { ...peer, endpoint, candidates, ...reached, leader: false, ...extra };
}

/**
 * The leader as this agent serves it, with a current view; `term` defaults to the seat's number (0 with no
 * leader); `extra` overrides any field.
 */
export function leaderJson(
  tokenId: number | null,
  opts: { isSelf?: boolean; term?: number | null } & JsonObject = {},
): JsonObject {
  const { isSelf = false, term, ...extra } = opts;
  const lead: JsonObject =
    tokenId === null
      ? // No leader elected; the view current all the same, as after a leader left.
        { ...snapshot("leaderUnknown"), state: "current", ageMs: snapshot("leader")["ageMs"] ?? null }
      : { ...seat(snapshot(isSelf ? "leaderSelf" : "leader"), tokenId), isSelf };
  return { ...lead, term: term !== undefined ? term : (tokenId ?? 0), ...extra };
}

/** The fields of `/v1/leader` an agent older than leases and terms does not send. */
export const LEADER_LEASE_FIELDS = ["term", "state", "ageMs", "leaseMs", "healthy", "reason"] as const;

/** What the agent refuses in a health report's reason. */
export const MAX_REASON = 200;

function sseEvent(name: string, value: Json): string {
  return `event: ${name}\ndata: ${JSON.stringify(value)}\n\n`;
}

/** One client following /v1/events: what to send it, in order. */
class Watcher {
  private chain: Promise<void> = Promise.resolve();

  constructor(
    readonly res: ServerResponse,
    private readonly split: () => boolean,
  ) {}

  send(raw: string): void {
    this.chain = this.chain.then(async () => {
      if (this.res.destroyed || this.res.writableEnded) return;
      if (!this.split()) {
        this.res.write(raw);
        return;
      }
      // Cut in the middle of a line, as a network may deliver it.
      const bytes = Buffer.from(raw);
      const cut = Math.floor(bytes.length / 2) + 1;
      this.res.write(bytes.subarray(0, cut));
      await delay(10);
      if (!this.res.destroyed) this.res.write(bytes.subarray(cut));
    });
  }

  end(): Promise<void> {
    this.chain = this.chain.then(() => {
      if (!this.res.destroyed) this.res.end();
    });
    return this.chain;
  }
}

export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** The API's state is plain fields; `setPeers`/`setLeader` also push events to watchers. */
export class FakeAgent {
  url: string | null = null;
  status = statusJson();
  peers: JsonObject[] = [peerJson(2), peerJson(3)];
  leader: JsonObject = leaderJson(2);
  /** The application's last health report as the agent holds it: {healthy, reason, ttlSecs}. */
  appReport: JsonObject | null = null;
  /** The agent's own check, as /v1/health shows it ({kind, healthy, reason}), or null. */
  check: JsonObject | null = null;
  /** The bodies of the POST /v1/health requests, parsed, in order. */
  healthPosts: unknown[] = [];
  /** Refuse POST /v1/health as an agent older than it does (405, "read-only"). */
  readOnly = false;
  /** Paths answered with (status, error text) instead of their content. */
  errors = new Map<string, [number, string]>();
  /** Paths answered 200 with this raw body instead of their content (for replies the SDK must refuse). */
  bodies = new Map<string, string>();
  /** Paths never answered (for timeouts). */
  hang = new Set<string>();
  /** Paths whose reply stops after its headers and half its body (for timeouts while reading). */
  stall = new Set<string>();
  /** Called before answering /v1/status with the number of status requests so far. */
  onStatus: ((count: number) => void) | null = null;
  /** Write each event in two chunks cut in the middle of a line. */
  splitEvents = false;
  requests: string[] = [];
  eventsConnections = 0;
  /** The user-agent of the last request. */
  userAgent: string | undefined;

  private server: Server | null = null;
  private readonly watchers = new Set<Watcher>();
  private readonly sockets = new Set<Socket>();
  private port = 0;

  constructor(readonly socketPath: string | null = null) {}

  get api(): string {
    return this.socketPath ?? String(this.url);
  }

  get watcherCount(): number {
    return this.watchers.size;
  }

  async start(): Promise<this> {
    const server = createServer((req, res) => this.serve(req, res));
    server.on("connection", (socket: Socket) => {
      this.sockets.add(socket);
      socket.on("close", () => this.sockets.delete(socket));
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      if (this.socketPath !== null) server.listen(this.socketPath, resolve);
      // Same port after a restart, as a restarted agent keeps its address.
      else server.listen(this.port, "127.0.0.1", resolve);
    });
    if (this.socketPath === null) {
      this.port = (server.address() as AddressInfo).port;
      this.url = `http://127.0.0.1:${this.port}`;
    }
    this.server = server;
    return this;
  }

  /** Stops serving. `graceful` ends event streams cleanly; otherwise connections are cut. */
  async stop(opts: { graceful?: boolean } = {}): Promise<void> {
    const graceful = opts.graceful ?? true;
    const server = this.server;
    this.server = null;
    const closed = server ? new Promise<void>((resolve) => server.close(() => resolve())) : Promise.resolve();
    const streaming = this.watchers.size > 0;
    if (graceful) {
      await Promise.all([...this.watchers].map((w) => w.end()));
    }
    this.watchers.clear();
    if (graceful && streaming) {
      // Time for the streams' last chunk to go out.
      await delay(50);
    }
    for (const socket of this.sockets) socket.destroy();
    await closed;
    if (this.socketPath !== null) {
      try {
        unlinkSync(this.socketPath);
      } catch {
        // Already gone: the server removes its socket file when it closes.
      }
    }
  }

  async restart(opts: { down?: number; graceful?: boolean } = {}): Promise<void> {
    await this.stop(opts);
    await delay((opts.down ?? 0.3) * 1000);
    await this.start();
  }

  setPeers(peers: JsonObject[]): void {
    this.peers = peers;
    this.push(sseEvent("peers", peers));
  }

  setLeader(leader: JsonObject): void {
    this.leader = leader;
    this.push(sseEvent("leader", leader));
  }

  /** Sends raw text to every event stream (for comments, unknown events and the like). */
  push(raw: string): void {
    for (const w of this.watchers) w.send(raw);
  }

  healthJson(): JsonObject {
    const reasons: string[] = [];
    let app: JsonObject | null = null;
    const r = this.appReport;
    if (r !== null) {
      const ttl = r["ttlSecs"];
      app = {
        healthy: r["healthy"] ?? null,
        reason: r["reason"] ?? null,
        expiresInMs: typeof ttl === "number" ? Math.trunc(ttl * 1000) : null,
      };
      if (r["healthy"] === false) {
        reasons.push(
          `the application reports itself unhealthy: ${(r["reason"] as string | null) || "no reason given"}`,
        );
      }
    }
    if (this.check !== null && this.check["healthy"] === false) {
      reasons.push(`the agent's check fails: ${String(this.check["reason"])}`);
    }
    return { healthy: reasons.length === 0, reasons, app, check: this.check };
  }

  /** POST /v1/health as the agent judges it: 200 with the health, or 400 saying what is wrong. */
  private healthReport(raw: string): [number, JsonObject] {
    let body: unknown;
    try {
      body = JSON.parse(raw);
    } catch {
      body = null;
    }
    this.healthPosts.push(body);
    const shape = 'the body must be a JSON object like {"healthy": false, "reason": "...", "ttlSecs": 10}';
    if (typeof body !== "object" || body === null || Array.isArray(body)) return [400, { error: shape }];
    const b = body as JsonObject;
    if (typeof b["healthy"] !== "boolean") return [400, { error: shape }];
    const unknown = Object.keys(b).filter((k) => !["healthy", "reason", "ttlSecs"].includes(k));
    if (unknown.length > 0) return [400, { error: `${shape} (unknown field "${unknown.sort()[0]}")` }];
    const reason = b["reason"];
    if (
      reason !== undefined &&
      reason !== null &&
      (typeof reason !== "string" || [...reason].length > MAX_REASON)
    ) {
      return [400, { error: `"reason" must be a string of at most ${MAX_REASON} characters` }];
    }
    const ttl = b["ttlSecs"];
    if (ttl !== undefined && ttl !== null && (typeof ttl !== "number" || ttl <= 0)) {
      return [400, { error: `"ttlSecs" is ${JSON.stringify(ttl)}: give a number of seconds above 0` }];
    }
    this.appReport = b;
    return [200, this.healthJson()];
  }

  private serve(req: IncomingMessage, res: ServerResponse): void {
    const chunks: Buffer[] = [];
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => this.answer(req, res, Buffer.concat(chunks).toString()));
  }

  private answer(req: IncomingMessage, res: ServerResponse, body: string): void {
    const method = req.method ?? "GET";
    const path = req.url ?? "/";
    this.userAgent = req.headers["user-agent"];
    this.requests.push(method === "GET" ? path : `${method} ${path}`);
    const error = this.errors.get(path);
    if (this.hang.has(path)) return;
    if (this.stall.has(path)) {
      const data = JSON.stringify(this.peers);
      res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(data) });
      res.write(data.slice(0, data.length >> 1));
      return;
    }
    if (this.bodies.has(path) && !(method === "POST" && this.readOnly)) {
      res.writeHead(200, { "content-type": "application/json" }).end(this.bodies.get(path));
    } else if (path === "/v1/health" && method === "POST" && !this.readOnly) {
      if (error) reply(res, error[0], { error: error[1] });
      else reply(res, ...this.healthReport(body));
    } else if (path === "/v1/health" && method !== "GET" && !this.readOnly) {
      reply(res, 405, {
        error: "/v1/health takes GET (the node's health) or POST (the application's report)",
      });
    } else if (method !== "GET") {
      reply(res, 405, { error: "the agent API is read-only: use GET" });
    } else if (error) {
      reply(res, error[0], { error: error[1] });
    } else if (path === "/v1/status") {
      this.onStatus?.(this.requests.filter((r) => r === "/v1/status").length);
      reply(res, 200, this.status);
    } else if (path === "/v1/peers") {
      reply(res, 200, this.peers);
    } else if (path === "/v1/leader") {
      reply(res, 200, this.leader);
    } else if (path === "/v1/health" && !this.readOnly) {
      reply(res, 200, this.healthJson());
    } else if (path === "/v1/events") {
      this.stream(req, res);
    } else {
      reply(res, 404, { error: `no such path ${path}` });
    }
  }

  private stream(req: IncomingMessage, res: ServerResponse): void {
    this.eventsConnections += 1;
    res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
    res.flushHeaders();
    const watcher = new Watcher(res, () => this.splitEvents);
    watcher.send(sseEvent("peers", this.peers));
    watcher.send(sseEvent("leader", this.leader));
    this.watchers.add(watcher);
    // The client going away shows as the connection closing.
    res.on("close", () => this.watchers.delete(watcher));
    req.socket.on("close", () => this.watchers.delete(watcher));
  }
}

function reply(res: ServerResponse, code: number, body: Json): void {
  // Indented, as the agent's replies are not: the SDK must not care how the JSON is laid out.
  const data = JSON.stringify(body, null, 2);
  res.writeHead(code, "X", { "content-type": "application/json", "content-length": Buffer.byteLength(data) });
  res.end(data);
}

/** A temporary directory for sockets: short, since a unix socket path must stay under ~100 bytes. */
export function sockDir(): { path: string; remove: () => void } {
  const path = mkdtempSync(join(tmpdir(), "dsp2p-"));
  return { path, remove: () => rmSync(path, { recursive: true, force: true }) };
}

/** Polls `cond` until true, for at most `ms` (then throws, saying what was awaited). */
export async function waitFor(cond: () => boolean, what = "a condition", ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await delay(10);
  }
}

async function main(argv: string[]): Promise<void> {
  const args = [...argv];
  const at = args.indexOf("--registration-error");
  let registrationError: string | undefined;
  if (at >= 0) {
    registrationError = args[at + 1];
    args.splice(at, 2);
  }
  const agent = new FakeAgent(args[0] ?? "/tmp/dstack-p2p-fake.sock");
  if (registrationError !== undefined) {
    agent.status.node["registered"] = false;
    agent.status.node["registrationError"] = registrationError;
  }
  await agent.start();
  console.log(`serving on ${agent.api}`);
  const stop = () => void agent.stop().then(() => process.exit(0));
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  await main(process.argv.slice(2));
}

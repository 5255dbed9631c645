/**
 * Where the agent's API is: a unix socket, or loopback TCP, found from the argument, the environment or the
 * defaults, and how to say that it cannot be reached.
 */

import { existsSync } from "node:fs";
import { isIPv4 } from "node:net";

import { show } from "./show.js";

/** The variable naming the API: a socket path or a loopback URL. */
export const ENV_VAR = "DSTACK_MESH_API";
/** Where the agent serves its API unless told otherwise. */
export const DEFAULT_SOCKET = "/run/p2p-agent/api.sock";
/** Where the compose sidecar's agent serves it, to the containers sharing its network namespace. */
export const DEFAULT_URL = "http://127.0.0.1:8000";

/** Where an address came from, as the messages name it. */
export type ApiSource = "argument" | "DSTACK_MESH_API" | "default socket" | "default URL";

/** The API's address: `socket` (a path) or `url` (loopback HTTP), and where that choice came from. */
export class ApiEndpoint {
  constructor(
    readonly socket: string | null,
    readonly url: string | null,
    readonly source: ApiSource,
  ) {}

  /** The socket path or the URL, as the messages name it. */
  get address(): string {
    return this.socket ?? String(this.url);
  }

  /** The base of request URLs; over a socket the host is only the Host header, which the agent ignores. */
  get baseUrl(): string {
    return this.url ?? "http://localhost";
  }

  describe(): string {
    const kind = this.socket !== null ? "unix socket" : "URL";
    return `${kind} ${this.address} (from ${this.source})`;
  }
}

/** A socket path, or an `http://` URL on a loopback address; anything else throws a `TypeError`. */
export function parseApi(api: string, source: ApiSource = "argument"): ApiEndpoint {
  if (typeof api !== "string") {
    throw new TypeError(
      `the agent API address from ${source} must be a string (a socket path or a loopback URL), not ${show(api)}`,
    );
  }
  const raw = api;
  if (!raw) {
    throw new TypeError(
      `the agent API address from ${source} is empty: give its socket path ` +
        `(e.g. ${DEFAULT_SOCKET}) or its loopback URL (e.g. ${DEFAULT_URL})`,
    );
  }
  if (raw.startsWith("unix:")) {
    // The form some tools write (unix:/path, unix:///path); the path is what matters.
    let path = raw.slice("unix:".length);
    if (path.startsWith("//")) path = "/" + path.replace(/^\/+/, "");
    if (!path) {
      throw new TypeError(`${show(raw)} (from ${source}) names no socket path, e.g. unix:${DEFAULT_SOCKET}`);
    }
    return new ApiEndpoint(path, null, source);
  }
  if (!raw.includes("://")) return new ApiEndpoint(raw, null, source);

  const scheme = raw.slice(0, raw.indexOf("://")).toLowerCase();
  if (scheme !== "http") {
    throw new TypeError(
      `${show(raw)} (from ${source}): the agent's API is plain HTTP on loopback or a unix socket, ` +
        `so give a socket path or http://127.0.0.1:<port>`,
    );
  }
  let parts: URL;
  try {
    parts = new URL(raw);
  } catch {
    throw new TypeError(
      `${show(raw)} (from ${source}) is not a valid URL: give a socket path or http://127.0.0.1:<port>, ` +
        `with a port from 1 to 65535`,
    );
  }
  if (!isLoopback(parts.hostname)) {
    throw new TypeError(
      `${show(raw)} (from ${source}) is not a loopback address: the agent's API is local only, served on ` +
        `its unix socket or on 127.0.0.1 to containers sharing its network namespace. Give the socket ` +
        `path or ${DEFAULT_URL}; to reach another node, use the addresses getPeers() returns`,
    );
  }
  if (parts.pathname !== "/" || parts.search || parts.hash || parts.username || parts.password) {
    throw new TypeError(
      `${show(raw)} (from ${source}): give the API's base URL, like ${DEFAULT_URL}, without a path`,
    );
  }
  // URL keeps IPv6 hosts in brackets and leaves out the port when it is 80, which is still right.
  const url = `http://${parts.hostname}` + (parts.port ? `:${parts.port}` : "");
  return new ApiEndpoint(null, url, source);
}

function isLoopback(hostname: string): boolean {
  if (hostname === "localhost") return true;
  // WHATWG URL parsing has already turned 127.1, 0x7f.0.0.1 and 0:0::1 into their canonical forms.
  if (hostname === "[::1]") return true;
  // A name other than localhost could resolve anywhere.
  return isIPv4(hostname) && hostname.startsWith("127.");
}

/**
 * The argument if given; else `DSTACK_MESH_API`; else the default socket if it exists; else the compose
 * sidecar's loopback URL.
 */
export function resolveApi(
  api: string | null | undefined,
  env: Readonly<Record<string, string | undefined>> = process.env,
  defaultSocket: string = DEFAULT_SOCKET,
): ApiEndpoint {
  if (api !== null && api !== undefined) return parseApi(api, "argument");
  const fromEnv = (env[ENV_VAR] ?? "").trim();
  if (fromEnv) return parseApi(fromEnv, ENV_VAR);
  if (existsSync(defaultSocket)) return new ApiEndpoint(defaultSocket, null, "default socket");
  return new ApiEndpoint(null, DEFAULT_URL, "default URL");
}

/** Thrown by the transports when a request took longer than the SDK's `timeout`. */
export class RequestTimeout extends Error {
  constructor(seconds: number) {
    super(`no answer within ${seconds} s`);
    this.name = "RequestTimeout";
  }
}

/** Why the agent cannot be reached, and what to check, from the error behind it. */
export function unreachableMessage(endpoint: ApiEndpoint, cause: unknown, timeout: number): string {
  const where = endpoint.describe();
  const hintApi =
    `Set ${ENV_VAR} to the agent's socket path, or to ${DEFAULT_URL} when the agent serves loopback TCP ` +
    `in this network namespace (the compose sidecar).`;
  if (isTimeout(cause)) {
    return `the dstack-mesh agent at ${where} did not answer within ${timeout} s: is it stuck?`;
  }
  const system = systemError(cause);
  const code = system?.code;
  if (endpoint.socket !== null) {
    if (code === "ENOENT") {
      return (
        `cannot reach the dstack-mesh agent: no socket at ${where}. Is the agent running, and is its ` +
        `socket's directory mounted into this container? ${hintApi}`
      );
    }
    if (code === "EACCES" || code === "EPERM") {
      return (
        `cannot open the dstack-mesh agent's ${where}: permission denied. The socket is mode 0660 ` +
        `by default: run as its owner or in its group (the agent's --api-socket-group), or read ` +
        `the API over loopback TCP instead. ${hintApi}`
      );
    }
    if (code === "ECONNREFUSED") {
      return (
        `cannot reach the dstack-mesh agent: its ${where} exists but nothing accepts on it. Is the ` +
        `agent running (or restarting)?`
      );
    }
    if (code === "ENOTSOCK") {
      return `cannot reach the dstack-mesh agent: ${where} is not a socket. ${hintApi}`;
    }
  } else if (code === "ECONNREFUSED") {
    return (
      `cannot connect to the dstack-mesh agent at ${where}: connection refused. Is the agent running ` +
      `and serving its API there (DSTACK_MESH_API_LISTEN), and does this container share its network ` +
      `namespace (network_mode: service:<the agent's>)? ${hintApi}`
    );
  }
  const text = system?.message ?? (cause instanceof Error ? cause.message : cause ? String(cause) : "");
  const detail = text ? ` (${text})` : "";
  return `cannot reach the dstack-mesh agent at ${where}${detail}. Is the agent running? ${hintApi}`;
}

/** The errors behind `error`: its `cause` chain, and the attempts an `AggregateError` gathers. */
function causes(error: unknown): unknown[] {
  const seen: unknown[] = [];
  const todo: unknown[] = [error];
  while (todo.length > 0 && seen.length < 32) {
    const e = todo.shift();
    if (e === undefined || e === null || seen.includes(e)) continue;
    seen.push(e);
    if (typeof e === "object") {
      const { cause, errors } = e as { cause?: unknown; errors?: unknown };
      if (cause !== undefined) todo.push(cause);
      if (Array.isArray(errors)) todo.push(...errors);
    }
  }
  return seen;
}

/** The first error with an errno-style `code` (ECONNREFUSED…), as Node's and Bun's sockets report them. */
export function systemError(error: unknown): { code: string; message: string } | undefined {
  for (const e of causes(error)) {
    if (typeof e === "object" && e !== null) {
      const code = (e as { code?: unknown }).code;
      if (typeof code === "string" && /^E[A-Z]+$/.test(code)) {
        const message = (e as { message?: unknown }).message;
        return { code, message: typeof message === "string" ? message : code };
      }
    }
  }
  return undefined;
}

function isTimeout(error: unknown): boolean {
  return causes(error).some(
    (e) =>
      e instanceof RequestTimeout ||
      (typeof e === "object" && e !== null && (e as { name?: unknown }).name === "TimeoutError") ||
      (typeof e === "object" && e !== null && (e as { code?: unknown }).code === "ETIMEDOUT"),
  );
}

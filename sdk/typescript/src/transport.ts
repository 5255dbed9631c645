/**
 * HTTP to the agent, over loopback TCP or a unix socket, behind one small interface: a status, headers and
 * a byte stream, so that the client and the event-stream parser do not care which.
 *
 * Loopback TCP goes through the global `fetch`. A unix socket goes through `node:http` (`socketPath`), since
 * Node's `fetch` cannot reach one without the undici package; Bun implements `node:http` too.
 */

import { request as httpRequest, type IncomingMessage } from "node:http";

import { RequestTimeout } from "./endpoint.js";

export interface TransportRequest {
  readonly method: "GET" | "POST";
  /** The path and query, from `/`. */
  readonly path: string;
  readonly headers: Readonly<Record<string, string>>;
  readonly body?: Uint8Array;
  /** Seconds until the answer must have come. */
  readonly timeout: number;
  /**
   * Whether the timeout covers reading the body too (a JSON reply), or only the status and headers (an
   * event stream, which is quiet until something changes).
   */
  readonly timeoutCoversBody: boolean;
  /** Aborting it ends the request, or the body being read, with `signal.reason`. */
  readonly signal?: AbortSignal;
}

export interface TransportResponse {
  readonly status: number;
  readonly statusText: string;
  /** Header names in lower case. */
  readonly headers: ReadonlyMap<string, string>;
  /** The body as it arrives; it throws what broke the connection, or the timeout, or the abort reason. */
  readonly body: AsyncIterable<Uint8Array>;
  /** Stops reading and closes the connection; harmless once the body has been read. */
  close(): void;
}

export interface Transport {
  request(req: TransportRequest): Promise<TransportResponse>;
}

/**
 * The timer and the caller's signal, as one signal for the request, and what ended it: a timeout is told
 * apart from the caller's abort, which is passed through untouched.
 */
class Deadline {
  readonly controller = new AbortController();
  private timer: ReturnType<typeof setTimeout> | undefined;
  private readonly onAbort: () => void;

  constructor(
    seconds: number,
    private readonly signal: AbortSignal | undefined,
  ) {
    this.timer = setTimeout(() => this.controller.abort(new RequestTimeout(seconds)), seconds * 1000);
    this.onAbort = () => this.controller.abort(signal?.reason);
    if (signal?.aborted) this.onAbort();
    else signal?.addEventListener("abort", this.onAbort, { once: true });
  }

  get aborted(): boolean {
    return this.controller.signal.aborted;
  }

  /** What ended the request: the timeout or the caller's reason. */
  get reason(): unknown {
    return this.controller.signal.reason;
  }

  clearTimer(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
  }

  dispose(): void {
    this.clearTimer();
    this.signal?.removeEventListener("abort", this.onAbort);
  }
}

/** HTTP over loopback TCP with the global `fetch`. */
export class FetchTransport implements Transport {
  constructor(private readonly baseUrl: string) {}

  async request(req: TransportRequest): Promise<TransportResponse> {
    const deadline = new Deadline(req.timeout, req.signal);
    let response: Response;
    try {
      response = await fetch(this.baseUrl + req.path, {
        method: req.method,
        headers: req.headers,
        // The agent never redirects: something that does is not the agent, and its target is not local.
        redirect: "manual",
        signal: deadline.controller.signal,
        ...(req.body !== undefined ? { body: req.body } : {}),
        // A local API is never reached through a proxy. Bun's fetch follows HTTP_PROXY unless told not to
        // (its `proxy: false`); Node's takes no such option and uses no proxy unless NODE_USE_ENV_PROXY.
        ...({ proxy: false } as object),
      });
    } catch (e) {
      deadline.dispose();
      throw deadline.aborted ? deadline.reason : e;
    }
    if (!req.timeoutCoversBody) deadline.clearTimer();
    const headers = new Map<string, string>();
    response.headers.forEach((value, key) => headers.set(key.toLowerCase(), value));
    const stream = response.body;
    async function* body(): AsyncGenerator<Uint8Array> {
      if (stream === null) return;
      const reader = stream.getReader();
      try {
        for (;;) {
          let next: Awaited<ReturnType<typeof reader.read>>;
          try {
            next = await reader.read();
          } catch (e) {
            throw deadline.aborted ? deadline.reason : e;
          }
          if (next.done) return;
          yield next.value;
        }
      } finally {
        deadline.dispose();
        reader.releaseLock();
      }
    }
    return {
      status: response.status,
      statusText: response.statusText,
      headers,
      body: body(),
      close() {
        deadline.dispose();
        if (!deadline.aborted) deadline.controller.abort(new Error("closed by the client"));
      },
    };
  }
}

/** HTTP over a unix socket with `node:http`. */
export class SocketTransport implements Transport {
  constructor(private readonly socketPath: string) {}

  request(req: TransportRequest): Promise<TransportResponse> {
    const deadline = new Deadline(req.timeout, req.signal);
    return new Promise<TransportResponse>((resolve, reject) => {
      const headers: Record<string, string> = { host: "localhost", ...req.headers };
      if (req.body !== undefined) headers["content-length"] = String(req.body.length);
      const outgoing = httpRequest({
        socketPath: this.socketPath,
        method: req.method,
        path: req.path,
        headers,
        // One connection per request: no pool to hold a connection that a restarted agent has closed.
        agent: false,
      });
      const stop = () =>
        outgoing.destroy(deadline.reason instanceof Error ? deadline.reason : new Error("aborted"));
      if (deadline.aborted) queueMicrotask(stop);
      else deadline.controller.signal.addEventListener("abort", stop, { once: true });
      // `on`, not `once`: a second error (the connection reset after a timeout, say) must not go unhandled.
      outgoing.on("error", (e) => {
        deadline.dispose();
        reject(deadline.aborted ? deadline.reason : e);
      });
      outgoing.once("response", (res: IncomingMessage) => {
        if (!req.timeoutCoversBody) deadline.clearTimer();
        // The body's reader sees a broken connection through its iterator; this only keeps an error that
        // comes before reading starts from being an uncaught exception.
        res.on("error", () => {});
        const responseHeaders = new Map<string, string>();
        for (const [key, value] of Object.entries(res.headers)) {
          if (value !== undefined) responseHeaders.set(key, Array.isArray(value) ? value.join(", ") : value);
        }
        async function* body(): AsyncGenerator<Uint8Array> {
          try {
            for await (const chunk of res) yield chunk as Uint8Array;
          } catch (e) {
            throw deadline.aborted ? deadline.reason : e;
          } finally {
            deadline.dispose();
            deadline.controller.signal.removeEventListener("abort", stop);
            res.destroy();
          }
        }
        resolve({
          status: res.statusCode ?? 0,
          statusText: res.statusMessage ?? "",
          headers: responseHeaders,
          body: body(),
          close() {
            deadline.dispose();
            deadline.controller.signal.removeEventListener("abort", stop);
            res.destroy();
            outgoing.destroy();
          },
        });
      });
      outgoing.end(req.body);
    });
  }
}

/** Reads a whole body. */
export async function readAll(body: AsyncIterable<Uint8Array>): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  let size = 0;
  for await (const chunk of body) {
    chunks.push(chunk);
    size += chunk.length;
  }
  const out = new Uint8Array(size);
  let at = 0;
  for (const chunk of chunks) {
    out.set(chunk, at);
    at += chunk.length;
  }
  return out;
}

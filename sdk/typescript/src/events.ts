/**
 * Server-sent events: `text/event-stream` parsed as the HTML standard's rules say.
 *
 * The agent sends one event per change on `GET /v1/events`. This parser is the generic one, not a reader of
 * the agent's exact bytes, so a proxy or a later agent that adds comments, ids, CRLF line ends or multi-line
 * data does not break it.
 */

/** One dispatched event: `event` is its type (`"message"` when the stream names none). */
export interface ServerSentEvent {
  readonly event: string;
  readonly data: string;
  readonly id: string | null;
  readonly retry: number | null;
}

const LINE_END = /\r\n|\r|\n/g;

/**
 * Turns the stream's text, in chunks of any size, into events.
 *
 * Lines end with CRLF, LF or CR; a CR at the end of one chunk and an LF at the start of the next are one
 * line end. An event is dispatched at a blank line, and only if it had a `data` field; comment lines
 * (starting with `:`) and unknown fields are ignored; an incomplete event at the end of the stream is
 * dropped, since the stream may have been cut in its middle.
 */
export class SSEDecoder {
  private partial = "";
  private skipLf = false;
  private started = false;
  private eventType = "";
  private data: string[] = [];
  private lastId: string | null = null;
  private retry: number | null = null;

  /** Takes the next piece of the stream and returns the events it completes. */
  feed(chunk: string): ServerSentEvent[] {
    const events: ServerSentEvent[] = [];
    for (const line of this.lines(chunk)) {
      const event = this.feedLine(line);
      if (event !== null) events.push(event);
    }
    return events;
  }

  private lines(chunk: string): string[] {
    if (!chunk) return [];
    if (!this.started) {
      this.started = true;
      if (chunk.startsWith("\ufeff")) chunk = chunk.slice(1);
    }
    if (this.skipLf) {
      this.skipLf = false;
      if (chunk.startsWith("\n")) chunk = chunk.slice(1);
    }
    const text = this.partial + chunk;
    const lines: string[] = [];
    let start = 0;
    for (const m of text.matchAll(LINE_END)) {
      const at = m.index ?? 0;
      lines.push(text.slice(start, at));
      start = at + m[0].length;
      if (m[0] === "\r" && start === text.length) {
        // The LF that may follow this CR is in the next chunk.
        this.skipLf = true;
      }
    }
    this.partial = text.slice(start);
    return lines;
  }

  /** Takes one line without its line end; returns the event a blank line dispatches. */
  feedLine(line: string): ServerSentEvent | null {
    if (!line) return this.dispatch();
    if (line.startsWith(":")) return null;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") {
      this.eventType = value;
    } else if (field === "data") {
      this.data.push(value);
    } else if (field === "id" && !value.includes("\0")) {
      this.lastId = value;
    } else if (field === "retry" && /^[0-9]+$/.test(value)) {
      this.retry = Number(value);
    }
    return null;
  }

  private dispatch(): ServerSentEvent | null {
    const eventType = this.eventType;
    const data = this.data;
    this.eventType = "";
    this.data = [];
    if (data.length === 0) return null;
    return { event: eventType || "message", data: data.join("\n"), id: this.lastId, retry: this.retry };
  }
}

/** The events of a byte stream, which the standard says is always UTF-8. */
export async function* iterEvents(chunks: AsyncIterable<Uint8Array>): AsyncGenerator<ServerSentEvent> {
  const decoder = new SSEDecoder();
  // Streaming, because a multi-byte character can be split between two reads; the BOM is the parser's to
  // drop, at the start only.
  const text = new TextDecoder("utf-8", { ignoreBOM: true });
  for await (const chunk of chunks) {
    yield* decoder.feed(text.decode(chunk, { stream: true }));
  }
  yield* decoder.feed(text.decode());
}

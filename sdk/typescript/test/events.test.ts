/** The event-stream parser, against the standard's rules. */

import assert from "node:assert/strict";
import { test } from "node:test";

import { SSEDecoder, type ServerSentEvent, iterEvents } from "../dist/index.js";

function parse(...chunks: string[]): ServerSentEvent[] {
  const decoder = new SSEDecoder();
  return chunks.flatMap((c) => decoder.feed(c));
}

const ev = (
  event: string,
  data: string,
  id: string | null = null,
  retry: number | null = null,
): ServerSentEvent => ({
  event,
  data,
  id,
  retry,
});

test("one event", () => {
  assert.deepEqual(parse('event: peers\ndata: ["10.0.1.2"]\n\n'), [ev("peers", '["10.0.1.2"]')]);
});

test("multi-line data is joined with newlines", () => {
  const [e] = parse("event: x\ndata: first\ndata:second\ndata\ndata:  two spaces\n\n");
  // One space after the colon is dropped, no more; a bare "data" line is an empty line of data.
  assert.equal(e?.data, "first\nsecond\n\n two spaces");
});

test("comments and unknown fields are ignored", () => {
  assert.deepEqual(
    parse(": keep-alive\n\n:comment\nevent: leader\nfoo: bar\ndata: {}\n: in the middle\n\n"),
    [ev("leader", "{}")],
  );
});

test("unknown event names are delivered for the caller to skip", () => {
  assert.deepEqual(
    parse("event: future\ndata: 1\n\nevent: peers\ndata: []\n\n").map((e) => e.event),
    ["future", "peers"],
  );
});

test("no event name means message, and no data means no event", () => {
  assert.deepEqual(parse("data: a\n\nevent: empty\n\n"), [ev("message", "a")]);
  // The type of an event without data does not carry over to the next one.
  assert.deepEqual(parse("event: lost\n\ndata: b\n\n"), [ev("message", "b")]);
});

test("CRLF, CR and mixed line ends", () => {
  const expected = [ev("peers", "[]"), ev("leader", "{}")];
  assert.deepEqual(parse("event: peers\r\ndata: []\r\n\r\nevent: leader\r\ndata: {}\r\n\r\n"), expected);
  assert.deepEqual(parse("event: peers\rdata: []\r\revent: leader\rdata: {}\r\r"), expected);
  assert.deepEqual(parse("event: peers\r\ndata: []\n\revent: leader\ndata: {}\r\n\n"), expected);
});

test("every split gives the same events", () => {
  const stream =
    '\ufeff: hello\r\nevent: peers\r\ndata: ["10.0.1.2",\r\ndata: "10.0.1.3"]\r\n\r\n' +
    'event: leader\rdata: {"tokenId": 2}\r\rid: 7\nretry: 100\nevent: peers\ndata: []\n\n';
  const whole = parse(stream);
  assert.deepEqual(
    whole.map((e) => e.event),
    ["peers", "leader", "peers"],
  );
  assert.equal(whole[0]?.data, '["10.0.1.2",\n"10.0.1.3"]');
  assert.equal(whole[2]?.id, "7");
  assert.equal(whole[2]?.retry, 100);
  for (let i = 0; i <= stream.length; i++) {
    assert.deepEqual(parse(stream.slice(0, i), stream.slice(i)), whole, `split at ${i}`);
  }
  assert.deepEqual(parse(...stream), whole);
});

test("a CR at the end of a chunk and an LF at the start of the next are one line end", () => {
  // Were they two, the blank line would dispatch "data: a" early and the event name would be lost.
  assert.deepEqual(parse("event: x\r", "\ndata: a\r", "\n\r", "\n"), [ev("x", "a")]);
});

test("a BOM only at the start, a bad retry and an id with NUL ignored", () => {
  assert.deepEqual(parse("\ufeffdata: a\nretry: 1s\n\n"), [ev("message", "a")]);
  assert.equal(parse("data: \ufeffa\n\n")[0]?.data, "\ufeffa");
  assert.deepEqual(parse("id: 1\ndata: a\n\nid: 2\0\ndata: b\n\n"), [
    ev("message", "a", "1"),
    ev("message", "b", "1"),
  ]);
});

test("bytes split inside a character, and an unfinished event dropped", async () => {
  const raw = new TextEncoder().encode('event: peers\ndata: ["café"]\n\nevent: peers\ndata: ["cut"]\n');
  const cut = raw.indexOf(0xc3) + 1;
  async function* chunks() {
    yield raw.slice(0, cut);
    yield raw.slice(cut);
  }
  const events: ServerSentEvent[] = [];
  for await (const e of iterEvents(chunks())) events.push(e);
  // The second event has no closing blank line: the stream ended in its middle.
  assert.deepEqual(events, [ev("peers", '["café"]')]);
});

/**
 * This node as a peer relay, as the agent shows it: `status.peerRelay`, read from the shared fixture
 * (sdk/fixtures/snapshot.json). A peer reached through one (`path` `"peer-relay"`, `relaySeat`) is in
 * models.test.
 */

import assert from "node:assert/strict";
import { test } from "node:test";

import { PeerRelayStatus, ProtocolError, Status } from "../dist/index.js";
import { type JsonObject, statusJson } from "./fake-agent.js";

/** The fixture's status, with `peerRelay` changed by `change`. */
function withPeerRelay(change: JsonObject): JsonObject {
  const raw = statusJson();
  raw["peerRelay"] = { ...(raw["peerRelay"] as JsonObject), ...change };
  return raw;
}

test("the status shows this node as a peer relay", () => {
  const relay = Status.fromJSON(statusJson()).peerRelay;
  assert.deepEqual(
    relay,
    new PeerRelayStatus({
      offering: true,
      why: "--relay-for-peers always",
      allocations: 1,
      granted: 3,
      forwardedBytes: 9437184,
      forwardedDatagrams: 6912,
      refused: { "peer-not-on-udp": 2 },
      dropped: { stranger: 1 },
      malformed: 0,
    }),
  );
  assert.ok(relay instanceof PeerRelayStatus);
  assert.equal(relay.refused["peer-not-on-udp"], 2);
  assert.equal(relay.dropped["stranger"], 1);
  assert.equal(relay.refused["full"] ?? 0, 0);
  assert.ok(Object.isFrozen(relay) && Object.isFrozen(relay.refused) && Object.isFrozen(relay.dropped));
});

test("no peer relay on the kernel backend, in TLS mode, or from an older agent", () => {
  const raw = statusJson();
  delete raw["peerRelay"];
  assert.equal(Status.fromJSON(raw).peerRelay, null);
  raw["peerRelay"] = null;
  assert.equal(Status.fromJSON(raw).peerRelay, null);
  // Construction as code written before the field does it still compiles, and has no peer relay.
  const { peerRelay: _, ...before } = Status.fromJSON(raw);
  assert.equal(new Status(before).peerRelay, null);
});

test("fields a later agent may leave out fall back", () => {
  const raw = statusJson();
  const relay = raw["peerRelay"] as JsonObject;
  for (const field of ["refused", "dropped", "malformed"]) delete relay[field];
  const parsed = Status.fromJSON(raw).peerRelay;
  assert.deepEqual(
    parsed,
    new PeerRelayStatus({
      offering: true,
      why: "--relay-for-peers always",
      allocations: 1,
      granted: 3,
      forwardedBytes: 9437184,
      forwardedDatagrams: 6912,
    }),
  );
  assert.deepEqual(parsed!.refused, {});
  assert.deepEqual(parsed!.dropped, {});
  assert.equal(parsed!.malformed, 0);
});

test("reasons it does not know yet are kept", () => {
  const raw = withPeerRelay({ refused: { full: 1, "some-later-reason": 4 } });
  assert.deepEqual(Status.fromJSON(raw).peerRelay!.refused, { full: 1, "some-later-reason": 4 });
});

test("the counts by reason are a frozen copy of what it was given", () => {
  const counts: Record<string, number> = { full: 1 };
  const relay = new PeerRelayStatus({
    offering: true,
    why: "--relay-for-peers always",
    allocations: 1,
    granted: 1,
    forwardedBytes: 0,
    forwardedDatagrams: 0,
    refused: counts,
  });
  counts["full"] = 2;
  assert.deepEqual(relay.refused, { full: 1 });
  assert.ok(Object.isFrozen(relay.refused) && Object.isFrozen(relay.dropped));
  assert.throws(() => {
    (relay.dropped as Record<string, number>)["stranger"] = 1;
  }, TypeError);
});

/** A `ProtocolError` whose message matches `message`. */
function names(message: RegExp): (e: unknown) => boolean {
  return (e) => e instanceof ProtocolError && message.test(e.message);
}

test("a bad peer relay names the field", () => {
  const cases: [JsonObject, RegExp][] = [
    [{ offering: "yes" }, /status\.peerRelay has "offering" = "yes", of the wrong type/],
    [{ why: null }, /status\.peerRelay has "why" = null/],
    [{ allocations: true }, /status\.peerRelay has "allocations" = true/],
    [{ forwardedBytes: 1.5 }, /status\.peerRelay has "forwardedBytes" = 1\.5/],
    [{ refused: { full: "2" } }, /status\.peerRelay has "refused" = .*not a map of counts/],
    [{ dropped: [] }, /status\.peerRelay has "dropped" = \[\], of the wrong type/],
    [{ malformed: null }, /status\.peerRelay has "malformed" = null/],
  ];
  for (const [change, message] of cases) {
    assert.throws(() => Status.fromJSON(withPeerRelay(change)), names(message));
  }
  const raw = statusJson();
  raw["peerRelay"] = "on";
  assert.throws(() => Status.fromJSON(raw), names(/status has "peerRelay" = "on"/));
});

test("a field it needs is missing", () => {
  for (const field of ["offering", "why", "allocations", "granted", "forwardedBytes", "forwardedDatagrams"]) {
    const raw = statusJson();
    delete (raw["peerRelay"] as JsonObject)[field];
    assert.throws(
      () => Status.fromJSON(raw),
      names(new RegExp(`status\\.peerRelay has no field "${field}"`)),
      field,
    );
  }
});

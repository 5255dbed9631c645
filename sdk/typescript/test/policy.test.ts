/**
 * The grants between seats as the agent shows them: `status.policy`, each peer's `policy`, and
 * `Peer.mayReach`, read from the shared fixture (sdk/fixtures/snapshot.json).
 */

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  PROTOCOLS,
  type Peer,
  PeerPolicy,
  PolicyDrops,
  PolicyStatus,
  Ports,
  type Protocol,
  ProtocolError,
  Status,
  peersFromJSON,
} from "../dist/index.js";
import { type JsonObject, peerJson, snapshot, statusJson } from "./fake-agent.js";

function fixturePeers(): [Peer, Peer] {
  const [seat2, seat3] = peersFromJSON(snapshot("peers"));
  return [seat2!, seat3!];
}

/** Seat 2 as an agent with no policy in force (or older than grants) serves it. */
function peerWithoutPolicy(): Peer {
  const raw = peerJson(2);
  delete raw["policy"];
  return peersFromJSON([raw])[0]!;
}

test("the status shows the policy in force", () => {
  const policy = Status.fromJSON(statusJson()).policy;
  assert.deepEqual(
    policy,
    new PolicyStatus({
      enforced: true,
      version: 3,
      grants: 2,
      ownTags: ["web"],
      dropped: new PolicyDrops({ noGrant: 7 }),
    }),
  );
  assert.ok(Object.isFrozen(policy) && Object.isFrozen(policy!.ownTags) && Object.isFrozen(policy!.dropped));
});

test("each peer shows what the grants let pass", () => {
  const [seat2, seat3] = fixturePeers();
  assert.deepEqual(
    seat2.policy,
    new PeerPolicy({
      reachesHere: new Ports({ tcp: ["8080"] }),
      reachableThere: new Ports({ tcp: ["5432", "6000-6010"], udp: ["53"] }),
      dropped: new PolicyDrops({ noGrant: 7 }),
    }),
  );
  // No grant names seat 3: it reaches nothing here, and nothing there is reachable.
  assert.deepEqual(seat3.policy, new PeerPolicy({ reachesHere: new Ports(), reachableThere: new Ports() }));
  assert.ok(Object.isFrozen(seat2.policy!.reachableThere.tcp));
});

test("mayReach: a port, a range, by protocol", () => {
  const [seat2, seat3] = fixturePeers();
  assert.ok(seat2.mayReach(5432) && seat2.mayReach(5432, "tcp"));
  assert.ok(seat2.mayReach(6000) && seat2.mayReach(6005) && seat2.mayReach(6010));
  assert.ok(!seat2.mayReach(5999) && !seat2.mayReach(6011) && !seat2.mayReach(8080));
  assert.ok(seat2.mayReach(53, "udp") && !seat2.mayReach(53) && !seat2.mayReach(5432, "udp"));
  for (const port of [53, 5432, 6000, 8080]) {
    for (const protocol of PROTOCOLS) {
      assert.equal(seat3.mayReach(port, protocol), false, `${protocol} ${port}`);
    }
  }
  // What the peer reaches here is the other way round.
  assert.ok(seat2.policy!.reachesHere.allows(8080) && !seat2.policy!.reachesHere.allows(5432));
});

test("without a policy in force every port is reachable", () => {
  const peer = peerWithoutPolicy();
  assert.equal(peer.policy, null);
  assert.ok(peer.mayReach(1) && peer.mayReach(65535, "udp") && peer.mayReach(0));
});

test("mayReach refuses what is no port", () => {
  const cases: [unknown, unknown, typeof TypeError | typeof RangeError][] = [
    [65536, "tcp", RangeError],
    [-1, "tcp", RangeError],
    [5432, "icmp", RangeError],
    [5432, "TCP", RangeError],
    [1.5, "tcp", TypeError],
    ["5432", "tcp", TypeError],
    [true, "tcp", TypeError],
  ];
  for (const peer of [fixturePeers()[0], peerWithoutPolicy()]) {
    for (const [port, protocol, error] of cases) {
      assert.throws(() => peer.mayReach(port as number, protocol as Protocol), error, `${port} ${protocol}`);
    }
  }
});

test("ports skip entries that are neither a port nor a range", () => {
  const ports = new Ports({ tcp: ["nonsense", "80-", "22", " 8000 - 8080 "] });
  assert.ok(ports.allows(22) && ports.allows(8000) && ports.allows(8080));
  assert.ok(!ports.allows(80) && !ports.allows(23));
});

test("an agent older than grants, or that has not read them", () => {
  const raw = statusJson();
  delete raw["policy"];
  assert.equal(Status.fromJSON(raw).policy, null);
  raw["policy"] = null;
  assert.equal(Status.fromJSON(raw).policy, null);
  // Construction as code written before the field does it still compiles, and has no policy.
  const s = Status.fromJSON(raw);
  const { policy: _, ...before } = s;
  assert.equal(new Status(before).policy, null);
});

test("a version read but not yet on the interface is pending", () => {
  const raw = statusJson();
  assert.equal(Status.fromJSON(raw).policy!.pending, null);
  (raw["policy"] as JsonObject)["pending"] = 4;
  const policy = Status.fromJSON(raw).policy!;
  assert.deepEqual([policy.version, policy.pending], [3, 4]);
});

test("fields a later agent may leave out fall back", () => {
  const raw = statusJson();
  const policy = raw["policy"] as JsonObject;
  delete policy["ownTags"];
  delete policy["dropped"];
  assert.deepEqual(Status.fromJSON(raw).policy, new PolicyStatus({ enforced: true, version: 3, grants: 2 }));
  const peer = peerJson(2);
  const pp = peer["policy"] as JsonObject;
  delete pp["dropped"];
  delete (pp["reachesHere"] as JsonObject)["udp"];
  delete (pp["reachableThere"] as JsonObject)["tcp"];
  assert.deepEqual(
    peersFromJSON([peer])[0]!.policy,
    new PeerPolicy({
      reachesHere: new Ports({ tcp: ["8080"] }),
      reachableThere: new Ports({ udp: ["53"] }),
      dropped: new PolicyDrops(),
    }),
  );
});

/** A `ProtocolError` whose message matches `message`. */
function names(message: RegExp): (e: unknown) => boolean {
  return (e) => e instanceof ProtocolError && message.test(e.message);
}

test("a bad status policy names the field", () => {
  const cases: [JsonObject, RegExp][] = [
    [{ enforced: "yes" }, /status\.policy has "enforced" = "yes", of the wrong type/],
    [{ version: null }, /status\.policy has "version" = null/],
    [{ grants: 1.5 }, /status\.policy has "grants" = 1\.5/],
    [{ pending: "4" }, /status\.policy has "pending" = "4"/],
    [{ ownTags: ["web", 3] }, /status\.policy has "ownTags" = .*not a list of strings/],
    [{ dropped: { noGrant: "7" } }, /status\.policy\.dropped has "noGrant" = "7"/],
  ];
  for (const [change, message] of cases) {
    const raw = statusJson();
    raw["policy"] = { ...(raw["policy"] as JsonObject), ...change };
    assert.throws(() => Status.fromJSON(raw), names(message));
  }
});

test("a bad peer policy names the field", () => {
  const cases: [JsonObject, RegExp][] = [
    [{ reachesHere: null }, /peer\.policy has "reachesHere" = null/],
    [{ reachableThere: { tcp: [5432] } }, /peer\.policy\.reachableThere has "tcp" = \[5432\]/],
    [{ dropped: [] }, /peer\.policy has "dropped" = \[\]/],
  ];
  for (const [change, message] of cases) {
    const raw = peerJson(2);
    raw["policy"] = { ...(raw["policy"] as JsonObject), ...change };
    assert.throws(() => peersFromJSON([raw]), names(message));
  }
});

test("the policy is no change of the peer", () => {
  const raw = peerJson(2);
  (raw["policy"] as { reachableThere: JsonObject }).reachableThere["tcp"] = [];
  assert.equal(peersFromJSON([raw])[0]!.changeKey(), peersFromJSON([peerJson(2)])[0]!.changeKey());
});

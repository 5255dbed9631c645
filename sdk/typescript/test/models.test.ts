/** The replies as typed objects: every field, the nulls, older agents, and what is refused. */

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  AppHealth,
  ChainInfo,
  Health,
  HealthCheck,
  Leader,
  Peer,
  PeerPolicy,
  PolicyDrops,
  Ports,
  ProtocolError,
  Status,
  addresses,
  leaderKey,
  peersFromJSON,
} from "../dist/index.js";
import {
  type JsonObject,
  LEADER_LEASE_FIELDS,
  leaderJson,
  peerJson,
  snapshot,
  statusJson,
} from "./fake-agent.js";

function without(obj: JsonObject, ...keys: string[]): JsonObject {
  const copy = { ...obj };
  for (const k of keys) delete copy[k];
  return copy;
}

test("a peer's every field, and unknown ones ignored", () => {
  const raw = peerJson(2, { leader: true, futureField: { x: 1 }, path: "relay", relayUrl: "https://r" });
  assert.deepEqual(
    Peer.fromJSON(raw),
    new Peer({
      tokenId: 2,
      instanceId: "inst2",
      overlayIp: "10.0.1.2",
      wgPublicKey: "Ii".repeat(21) + "I=",
      endpoint: "192.0.2.2:51820",
      gatewayUrl: null,
      connection: "wireguard",
      path: "relay",
      relayUrl: "https://r",
      address: "10.0.1.2",
      healthy: true,
      latestHandshake: 1763856000,
      lastHeard: 1763856001,
      rxBytes: 123,
      txBytes: 456,
      leader: true,
      policy: new PeerPolicy({
        reachesHere: new Ports({ tcp: ["8080"] }),
        reachableThere: new Ports({ tcp: ["5432", "6000-6010"], udp: ["53"] }),
        dropped: new PolicyDrops({ noGrant: 7 }),
      }),
    }),
  );
  assert.ok(Object.isFrozen(Peer.fromJSON(raw)));
});

test("a punched peer, and a relayed one with its reason, which is no change", () => {
  const punched = Peer.fromJSON(peerJson(2, { path: "punched" }));
  assert.equal(punched.path, "punched");
  assert.equal(punched.pathReason, null);
  const why = "no UDP address is known for the peer; the peer has published no address to try";
  const relayed = Peer.fromJSON(peerJson(3, { path: "relay", pathReason: why }));
  assert.equal(relayed.pathReason, why);
  assert.equal(
    relayed.changeKey(),
    Peer.fromJSON(peerJson(3, { path: "relay", pathReason: "other" })).changeKey(),
  );
});

test("a peer on a peer relay names the seat relaying", () => {
  const raw: JsonObject = {
    tokenId: 2,
    instanceId: "inst2",
    overlayIp: "10.0.1.2",
    wgPublicKey: null,
    endpoint: null,
    gatewayUrl: null,
    connection: "wireguard",
    path: "peer-relay",
    relaySeat: 3,
    address: "10.0.1.2",
    healthy: true,
    latestHandshake: null,
    rxBytes: 0,
    txBytes: 0,
  };
  const p = Peer.fromJSON(raw);
  assert.equal(p.path, "peer-relay");
  assert.equal(p.relaySeat, 3);
  assert.equal(Peer.fromJSON(peerJson(2)).relaySeat, null, "absent while not on a peer relay");
  assert.throws(() => Peer.fromJSON({ ...raw, relaySeat: "3" }), ProtocolError);
});

test("when a peer was last heard from, which is no change", () => {
  assert.equal(Peer.fromJSON(peerJson(2, { lastHeard: 1763856001 })).lastHeard, 1763856001);
  assert.equal(Peer.fromJSON(peerJson(2, { lastHeard: null })).lastHeard, null);
  assert.equal(
    Peer.fromJSON(peerJson(2, { lastHeard: 1 })).changeKey(),
    Peer.fromJSON(peerJson(2, { lastHeard: 2 })).changeKey(),
  );
});

test("a peer's nulls, and the fields older agents leave out", () => {
  const raw = without(
    peerJson(5, { address: null, wgPublicKey: null, endpoint: null, path: null, latestHandshake: null }),
    "leader",
    "path",
    "relayUrl",
    "pathReason",
    "lastHeard",
  );
  const p = Peer.fromJSON(raw);
  assert.deepEqual(
    [p.address, p.wgPublicKey, p.endpoint, p.path, p.relayUrl, p.latestHandshake],
    Array(6).fill(null),
  );
  assert.equal(p.leader, false);
  assert.equal(p.healthy, false);
  assert.equal(p.connection, "unreachable");
  assert.equal(p.lastHeard, null);
});

test("peers in token order, and addresses without nulls", () => {
  const peers = peersFromJSON([
    peerJson(4),
    peerJson(2, { address: null }),
    peerJson(3, { address: "https://gw.example" }),
  ]);
  assert.deepEqual(
    peers.map((p) => p.tokenId),
    [2, 3, 4],
  );
  assert.deepEqual(addresses(peers), ["https://gw.example", "10.0.1.4"]);
});

for (const [raw, message] of [
  [
    without(peerJson(2), "tokenId"),
    `the agent's peer has no field "tokenId": is the agent older than this SDK?`,
  ],
  [{ ...peerJson(2), tokenId: "2" }, `"tokenId" = "2", of the wrong type`],
  [{ ...peerJson(2), tokenId: 2.5 }, `"tokenId" = 2.5, of the wrong type`],
  [{ ...peerJson(2), rxBytes: true }, `"rxBytes" = true`],
  [{ ...peerJson(2), overlayIp: null }, `"overlayIp" = null`],
  [[1], "not a JSON object"],
  [null, "the agent's peer is not a JSON object: null"],
] as const) {
  test(`a bad peer names what is wrong: ${message}`, () => {
    assert.throws(
      () => Peer.fromJSON(raw),
      (e: unknown) => e instanceof ProtocolError && e.message.includes(message),
    );
  });
}

test("the peer list must be an array", () => {
  assert.throws(() => peersFromJSON({ peers: [] }), { name: "ProtocolError", message: /not a JSON array/ });
});

test("the status, nested, with its nulls", () => {
  const raw = statusJson();
  Object.assign(raw.node, {
    tokenId: null,
    overlayIp: null,
    registered: false,
    registrationError: "no seat\n  meshctl mint",
  });
  Object.assign(raw.chain, {
    head: null,
    lastProcessedBlock: null,
    lag: null,
    lastError: "connection refused",
    new: 1,
  });
  raw["newTopLevel"] = [1, 2];
  const s = Status.fromJSON(raw);
  assert.equal(s.mode, "wireguard");
  assert.equal(s.backend, "userspace");
  assert.equal(s.uptimeSecs, 12);
  assert.equal(s.node.tokenId, null);
  assert.equal(s.node.overlayIp, null);
  assert.equal(s.node.registered, false);
  assert.equal(s.node.registrationError, "no seat\n  meshctl mint");
  assert.equal(s.node.listenPort, 51820);
  assert.equal(s.node.interface, "dsm0");
  assert.equal(s.chain.contract, "0x5fbdb2315678afecb367f032d93f642f64180aa3");
  assert.equal(s.chain.head, null);
  assert.equal(s.chain.lastError, "connection refused");
  assert.equal(s.chain.chainId, 31337);
});

test("the chain's prefix, and an agent that has not read it", () => {
  const raw = statusJson();
  raw.chain["prefix"] = "10.1.0.0/16";
  assert.equal(Status.fromJSON(raw).chain.prefix, "10.1.0.0/16");
  delete raw.chain["prefix"];
  assert.equal(Status.fromJSON(raw).chain.prefix, null);
  raw.chain["prefix"] = null;
  assert.equal(Status.fromJSON(raw).chain.prefix, null);
  raw.chain["prefix"] = 24;
  assert.throws(() => Status.fromJSON(raw), {
    name: "ProtocolError",
    message: /the agent's status\.chain has "prefix" = 24, of the wrong type/,
  });
  // Built without it, as code written before the field does, it is null.
  const { prefix: _, ...older } = ChainInfo.fromJSON(statusJson().chain);
  assert.equal(new ChainInfo(older).prefix, null);
});

test("whether the agent follows new heads by subscription, and an agent older than the field", () => {
  const raw = statusJson();
  raw.chain["subscribed"] = true;
  assert.equal(Status.fromJSON(raw).chain.subscribed, true);
  raw.chain["subscribed"] = false;
  assert.equal(Status.fromJSON(raw).chain.subscribed, false);
  delete raw.chain["subscribed"];
  assert.equal(Status.fromJSON(raw).chain.subscribed, false);
  raw.chain["subscribed"] = "yes";
  assert.throws(() => Status.fromJSON(raw), {
    name: "ProtocolError",
    message: /the agent's status\.chain has "subscribed" = "yes", of the wrong type/,
  });
  const { subscribed: _, ...older } = ChainInfo.fromJSON(statusJson().chain);
  assert.equal(new ChainInfo(older).subscribed, false);
});

test("the status of an agent without registrationError", () => {
  const raw = statusJson();
  delete raw.node["registrationError"];
  raw["backend"] = null;
  const s = Status.fromJSON(raw);
  assert.equal(s.node.registrationError, null);
  assert.equal(s.backend, null);
});

test("a status without its chain names it", () => {
  assert.throws(() => Status.fromJSON(without(statusJson(), "chain")), {
    message: /status has no field "chain"/,
  });
  const raw = statusJson();
  raw.chain = { ...raw.chain, contract: 5 };
  assert.throws(() => Status.fromJSON(raw), { message: /the agent's status.chain has "contract" = 5/ });
});

test("the leader", () => {
  assert.deepEqual(
    Leader.fromJSON({ ...leaderJson(2, { term: 7 }), extra: 1 }),
    new Leader({
      tokenId: 2,
      instanceId: "inst2",
      overlayIp: "10.0.1.2",
      address: "10.0.1.2",
      isSelf: false,
      reachable: true,
      term: 7,
      state: "current",
      ageMs: 412,
      leaseMs: null,
      healthy: true,
      reason: null,
      termReason: "elected",
    }),
  );
  const me = Leader.fromJSON(leaderJson(1, { isSelf: true }));
  assert.ok(me.isSelf && me.elected);
  assert.equal(me.reachable, null);
  assert.equal(me.leaseMs, 2100);
  assert.equal(me.term, 1);
  const none = Leader.fromJSON(leaderJson(null));
  assert.equal(none.tokenId, null);
  assert.equal(none.elected, false);
  assert.equal(none.isSelf, false);
  assert.equal(none.term, 0);
});

test("a leader named but not leading says why", () => {
  const lead = Leader.fromJSON(
    leaderJson(1, {
      reachable: null,
      state: "stale",
      ageMs: 7200,
      healthy: false,
      reason: "the chain view is 7.2 s old, older than the 2.5 s lease",
    }),
  );
  assert.deepEqual(
    [lead.isSelf, lead.state, lead.ageMs, lead.leaseMs, lead.healthy],
    [false, "stale", 7200, null, false],
  );
  assert.equal(lead.reason, "the chain view is 7.2 s old, older than the 2.5 s lease");
  assert.equal(Leader.fromJSON(leaderJson(1, { state: "unknown", ageMs: null })).ageMs, null);
});

test("a refused leader is no leader, and named apart", () => {
  const why =
    "the contract names seat 1 leader, but this node refuses its evidence, and votes it out (os-not-allowed)";
  const lead = Leader.fromJSON(leaderJson(null, { refusedSeat: 1, reason: why, term: 4 }));
  assert.deepEqual([lead.tokenId, lead.elected, lead.refusedSeat, lead.term], [null, false, 1, 4]);
  assert.equal(lead.reason, why);
  assert.equal(Leader.fromJSON(leaderJson(2)).refusedSeat, null);
});

test("a leader handing off, and how its term began", () => {
  // Seat 2, draining, hands term 2 off to seat 3.
  const raw = snapshot("leaderHandingOff");
  const lead = Leader.fromJSON(raw);
  assert.deepEqual([lead.termReason, lead.draining, lead.handingOffTo], ["elected", [2], 3]);
  const after = Leader.fromJSON(leaderJson(3, { isSelf: true, term: 3, termReason: "handoff" }));
  assert.deepEqual([after.termReason, after.draining, after.handingOffTo], ["handoff", [], null]);
  const older = Leader.fromJSON(without(raw, "termReason", "draining", "handingOff"));
  assert.deepEqual([older.termReason, older.draining, older.handingOffTo], [null, [], null]);
  assert.throws(() => Leader.fromJSON(leaderJson(1, { draining: ["3"] })), /draining/);
});

test("the leader of an agent without leases", () => {
  const lead = Leader.fromJSON(without(leaderJson(1, { isSelf: true }), ...LEADER_LEASE_FIELDS));
  assert.ok(lead.isSelf);
  assert.equal(lead.tokenId, 1);
  // Not confirmed, since that agent does not say so; healthy, since it has no health signal.
  assert.deepEqual(
    [lead.term, lead.state, lead.ageMs, lead.leaseMs, lead.healthy, lead.reason],
    [null, "unknown", null, null, true, null],
  );
  // Built without the lease fields, as code written before them does, it has the same defaults.
  const old = new Leader({
    tokenId: null,
    instanceId: null,
    overlayIp: null,
    address: null,
    isSelf: false,
    reachable: null,
  });
  assert.equal(old.state, "unknown");
  assert.equal(old.healthy, true);
});

test("the leader's nulls where allowed", () => {
  const lead = Leader.fromJSON({
    ...leaderJson(null, { ageMs: null, leaseMs: null, reason: null, state: "unknown" }),
    term: null,
  });
  assert.deepEqual(
    [lead.term, lead.ageMs, lead.leaseMs, lead.reason, lead.state],
    [null, null, null, null, "unknown"],
  );
});

for (const [changes, message] of [
  [{ term: "3" }, `"term" = "3", of the wrong type`],
  [{ term: true }, `"term" = true, of the wrong type`],
  [{ term: 3.5 }, `"term" = 3.5, of the wrong type`],
  [{ ageMs: "412" }, `"ageMs" = "412"`],
  [{ leaseMs: false }, `"leaseMs" = false`],
  [{ healthy: null }, `"healthy" = null`],
  [{ healthy: "yes" }, `"healthy" = "yes"`],
  [{ reason: 5 }, `"reason" = 5`],
  [{ state: null }, `"state" = null`],
  [{ state: 1 }, `"state" = 1`],
  [{ state: "fresh" }, `"state" = "fresh", not one of current, stale, unknown`],
  [{ state: "Current" }, `"state" = "Current", not one of`],
  [{ isSelf: "true" }, `"isSelf" = "true"`],
] as const) {
  test(`a bad leader names the field: ${message}`, () => {
    assert.throws(
      () => Leader.fromJSON(leaderJson(2, changes as JsonObject)),
      (e: unknown) =>
        e instanceof ProtocolError &&
        e.message.startsWith("the agent's leader") &&
        e.message.includes(message),
    );
  });
}

test("the leader key leaves out only the clock", () => {
  const base = leaderKey(Leader.fromJSON(leaderJson(1, { isSelf: true, term: 3 })));
  assert.equal(
    leaderKey(Leader.fromJSON(leaderJson(1, { isSelf: true, term: 3, ageMs: 1, leaseMs: 5 }))),
    base,
  );
  for (const change of [
    { term: 4 },
    { state: "stale" },
    { healthy: false },
    { reason: "x" },
    { reachable: false },
    { address: "h" },
    { refusedSeat: 2 },
  ]) {
    assert.notEqual(
      leaderKey(Leader.fromJSON({ ...leaderJson(1, { isSelf: true, term: 3 }), ...change })),
      base,
      JSON.stringify(change),
    );
  }
});

test("health's every field", () => {
  const raw = {
    healthy: false,
    reasons: ["the application reports itself unhealthy: postgres is down", "the check fails: 503"],
    app: { healthy: false, reason: "postgres is down", expiresInMs: 9500 },
    check: { kind: "url", healthy: false, reason: "503" },
    future: 1,
  };
  assert.deepEqual(
    Health.fromJSON(raw),
    new Health({
      healthy: false,
      reasons: raw.reasons,
      app: new AppHealth({ healthy: false, reason: "postgres is down", expiresInMs: 9500 }),
      check: new HealthCheck({ kind: "url", healthy: false, reason: "503" }),
    }),
  );
});

test("health before any report and without a check", () => {
  assert.deepEqual(
    Health.fromJSON({ healthy: true, reasons: [], app: null, check: null }),
    new Health({ healthy: true, reasons: [], app: null, check: null }),
  );
  const report = { healthy: true, reason: null, expiresInMs: null };
  assert.deepEqual(Health.fromJSON({ healthy: true, reasons: [], app: report }).app, new AppHealth(report));
});

for (const [raw, message] of [
  [{ reasons: [] }, /health has no field "healthy"/],
  [{ healthy: true }, /health has no field "reasons"/],
  [{ healthy: 1, reasons: [] }, /"healthy" = 1/],
  [{ healthy: false, reasons: "down" }, /"reasons" = "down", of the wrong type/],
  [{ healthy: false, reasons: ["down", 3] }, /"reasons" = \["down",3\], not a list of strings/],
  [{ healthy: true, reasons: [], app: [] }, /"app" = \[\], of the wrong type/],
  [{ healthy: true, reasons: [], app: { reason: null } }, /health\.app has no field "healthy"/],
  [
    { healthy: true, reasons: [], app: { healthy: true, reason: null, expiresInMs: "1" } },
    /health\.app has "expiresInMs" = "1"/,
  ],
  [{ healthy: true, reasons: [], check: { kind: "url", healthy: "no" } }, /health\.check has/],
  ["healthy", /health is not a JSON object/],
] as const) {
  test(`bad health names what is wrong: ${message.source}`, () => {
    assert.throws(
      () => Health.fromJSON(raw),
      (e: unknown) => e instanceof ProtocolError && message.test(e.message),
    );
  });
}

test("a change is what the agent calls one", () => {
  // Counters and handshake times are no change; a path flip, a health change, a roam or leadership is,
  // even with the same address.
  const base = Peer.fromJSON(peerJson(2));
  const same = Peer.fromJSON({ ...peerJson(2), rxBytes: 10_000, latestHandshake: 1 });
  assert.equal(same.changeKey(), base.changeKey());
  for (const [field, value] of [
    ["path", "relay"],
    ["healthy", false],
    ["endpoint", "192.0.2.9:51820"],
    ["leader", true],
    ["wgPublicKey", "c".repeat(43) + "="],
  ] as const) {
    const changed = Peer.fromJSON({ ...peerJson(2), [field]: value });
    assert.equal(changed.address, base.address);
    assert.notEqual(changed.changeKey(), base.changeKey(), field);
  }
});

/** monitorPeers and monitorLeader: what they deliver, how they fail, and how they stop. */

import assert from "node:assert/strict";
import { join } from "node:path";
import { describe, test } from "node:test";

import { AgentUnreachable, type Leader, Peer } from "../dist/index.js";
import { CONTRACT, delay, leaderJson, peerJson, sockDir, waitFor } from "./fake-agent.js";
import { Recorder, running, withAgent, withSdk, within } from "./helpers.js";

describe("monitorPeers", () => {
  test("delivers the current list, then only the changes that matter", () =>
    withAgent("unix socket", async (agent) => {
      await withSdk({ contract: CONTRACT, api: agent.api }, async (sdk) => {
        const rec = new Recorder();
        await running(
          (signal) => sdk.monitorPeers(rec.peers, { onLeader: rec.leader, signal }),
          async () => {
            await rec.wait(2);
            assert.deepEqual(rec.calls, [
              ["peers", ["10.0.1.2", "10.0.1.3"]],
              ["leader", 2],
            ]);
            agent.setPeers([peerJson(2), peerJson(3), peerJson(4)]);
            await rec.wait(3);
            assert.deepEqual(rec.calls[2], ["peers", ["10.0.1.2", "10.0.1.3", "10.0.1.4"]]);
            // A change the address list does not show (traffic counters) is not a change of it,
            agent.setPeers([peerJson(2, { rxBytes: 999 }), peerJson(3), peerJson(4)]);
            // nor is a leader event that only moves the confirmation's age;
            agent.setLeader(leaderJson(2, { ageMs: 1500 }));
            // whether this node hears the leader is one, and so is another leader.
            agent.setLeader(leaderJson(2, { reachable: false }));
            agent.setLeader(leaderJson(4));
            await rec.wait(5);
            assert.deepEqual(rec.calls.slice(3), [
              ["leader", 2],
              ["leader", 4],
            ]);
            agent.setPeers([peerJson(4)]);
            await rec.wait(6);
            assert.deepEqual(rec.calls.slice(5), [["peers", ["10.0.1.4"]]]);
          },
        );
      });
      assert.equal(agent.requests[0], "/v1/status");
    }));

  for (const detailed of [false, true]) {
    test(`does not repeat the same address list when only health changes (detailed: ${detailed})`, () =>
      withAgent("unix socket", (agent) =>
        withSdk({ api: agent.api }, async (sdk) => {
          // Issue 41: a peer's health changing leaves the address list as it was, so the address-list
          // callback is not called with the same list again; a detailed callback is, as the peer changed.
          const rec = new Recorder();
          await running(
            (signal) =>
              detailed
                ? sdk.monitorPeers(rec.peers, { detailed: true, signal })
                : sdk.monitorPeers(rec.peers, { signal }),
            async () => {
              await rec.wait(1);
              // Same addresses, one peer now unhealthy; then an address changes. Events arrive in order,
              // so once the third is delivered the second has been handled.
              agent.setPeers([peerJson(2), peerJson(3, { healthy: false })]);
              agent.setPeers([peerJson(2, { address: "https://gw/2" }), peerJson(3, { healthy: false })]);
              if (detailed) {
                await rec.wait(3);
                assert.deepEqual(
                  rec.calls.map(([, value]) => (value as Peer[]).map((p) => p.healthy)),
                  [
                    [true, true],
                    [true, false],
                    [true, false],
                  ],
                );
                assert.deepEqual(
                  (rec.calls[2]?.[1] as Peer[]).map((p) => p.address),
                  ["https://gw/2", "10.0.1.3"],
                );
              } else {
                await rec.wait(2);
                assert.deepEqual(rec.calls, [
                  ["peers", ["10.0.1.2", "10.0.1.3"]],
                  ["peers", ["https://gw/2", "10.0.1.3"]],
                ]);
              }
              await delay(100);
              assert.equal(rec.calls.length, detailed ? 3 : 2);
            },
          );
        }),
      ));
  }

  test("delivers a change made while disconnected, detailed", () =>
    withAgent("unix socket", (agent) =>
      withSdk({ api: agent.api }, async (sdk) => {
        const rec = new Recorder();
        await running(
          (signal) => sdk.monitorPeers(rec.peers, { detailed: true, signal }),
          async () => {
            await rec.wait(1);
            const first = rec.calls[0]?.[1] as Peer[];
            assert.ok(first.every((p) => p instanceof Peer));
            assert.deepEqual(
              first.map((p) => p.tokenId),
              [2, 3],
            );
            await agent.stop();
            agent.peers = [peerJson(2, { address: "https://gw/2" }), peerJson(3)];
            await delay(200);
            await agent.start();
            await rec.wait(2);
            const second = rec.calls[1]?.[1] as Peer[];
            assert.deepEqual(
              second.map((p) => p.address),
              ["https://gw/2", "10.0.1.3"],
            );
            assert.equal(second[0]?.connection, "tls-gateway");
          },
        );
      }),
    ));

  test("ignores unknown events and comments, and takes events split across chunks and CRLF", () =>
    withAgent("loopback TCP", (agent) => {
      agent.splitEvents = true;
      return withSdk({ api: agent.api }, async (sdk) => {
        const rec = new Recorder();
        await running(
          (signal) => sdk.monitorPeers(rec.peers, { signal }),
          async () => {
            await rec.wait(1);
            agent.push(': keep-alive\n\nevent: metrics\r\ndata: {"x": 1}\r\n\r\n');
            agent.push("event: peers\r\ndata: [\r\ndata: ]\r\n\r\n");
            await rec.wait(2);
            assert.deepEqual(rec.calls, [
              ["peers", ["10.0.1.2", "10.0.1.3"]],
              ["peers", []],
            ]);
          },
        );
      });
    }));

  test("monitorLeader takes an async callback and hears no peer change", () =>
    withAgent("unix socket", (agent) =>
      withSdk({ api: agent.api }, async (sdk) => {
        const got: (number | null)[] = [];
        const onLeader = async (leader: Leader) => {
          await delay(10);
          got.push(leader.tokenId);
        };
        await running(
          (signal) => sdk.monitorLeader(onLeader, { signal }),
          async () => {
            await waitFor(() => got.length === 1, "the first leader");
            assert.deepEqual(got, [2]);
            agent.setPeers([]);
            agent.setLeader(leaderJson(null));
            await waitFor(() => got.length === 2, "the leader change");
            assert.deepEqual(got, [2, null]);
          },
        );
      }),
    ));

  test("an error thrown by a callback rejects the monitor and closes the stream", () =>
    withAgent("unix socket", async (agent) => {
      class Boom extends Error {}
      const calls: string[][] = [];
      await withSdk({ api: agent.api }, async (sdk) => {
        const monitor = sdk.monitorPeers((peers) => {
          calls.push(peers);
          if (calls.length === 2) throw new Boom("a bug in the app");
        });
        await waitFor(() => calls.length === 1, "the first list");
        agent.setPeers([peerJson(9)]);
        await assert.rejects(
          within(5000, monitor),
          (e: unknown) => e instanceof Boom && e.message === "a bug in the app",
        );
      });
      await waitFor(() => agent.watcherCount === 0, "the stream to close");
    }));

  test("an SDK error thrown by a callback is not taken for a lost stream", () =>
    withAgent("unix socket", async (agent) => {
      await withSdk({ api: agent.api }, async (sdk) => {
        const monitor = sdk.monitorPeers(async () => {
          throw new AgentUnreachable("from the app's own call", { address: "elsewhere" });
        });
        await assert.rejects(within(5000, monitor), { message: "from the app's own call" });
      });
      assert.equal(agent.eventsConnections, 1);
    }));

  test("fails at once when the agent is not there", async () => {
    const dir = sockDir();
    try {
      await withSdk({ api: join(dir.path, "none.sock") }, async (sdk) => {
        await assert.rejects(
          within(
            5000,
            sdk.monitorPeers(() => {}),
          ),
          {
            name: "AgentUnreachable",
            message: /no socket at/,
          },
        );
      });
    } finally {
      dir.remove();
    }
  });

  test("throws the agent's error when it has no event stream", () =>
    withAgent("unix socket", (agent) => {
      agent.errors.set("/v1/events", [404, "no such path /v1/events"]);
      return withSdk({ api: agent.api }, async (sdk) => {
        await assert.rejects(
          within(
            5000,
            sdk.monitorPeers(() => {}),
          ),
          {
            name: "AgentError",
            message: /404 to GET \/v1\/events: no such path \/v1\/events/,
          },
        );
      });
    }));

  test("rechecks the contract after a restart", () =>
    withAgent("unix socket", (agent) =>
      withSdk({ contract: CONTRACT, api: agent.api }, async (sdk) => {
        const rec = new Recorder();
        const monitor = sdk.monitorPeers(rec.peers);
        await rec.wait(1);
        await agent.stop();
        agent.status.chain["contract"] = "0x" + "99".repeat(20);
        await agent.start();
        await assert.rejects(within(5000, monitor), { name: "ConfigMismatch", message: /another cluster/ });
      }),
    ));

  test("a bad event is a ProtocolError, not a lost stream", () =>
    withAgent("unix socket", (agent) =>
      withSdk({ api: agent.api }, async (sdk) => {
        const rec = new Recorder();
        const monitor = sdk.monitorPeers(rec.peers);
        await rec.wait(1);
        agent.push("event: peers\ndata: [{\n\n");
        await assert.rejects(within(5000, monitor), {
          name: "ProtocolError",
          message: `the agent's "peers" event is not JSON: "[{"`,
        });
      }),
    ));

  test("stops with the abort reason while waiting to reconnect or connected, and close() ends it too", () =>
    withAgent("unix socket", (agent) =>
      withSdk({ api: agent.api }, async (sdk, logged) => {
        const rec = new Recorder();
        const controller = new AbortController();
        const monitor = sdk.monitorPeers(rec.peers, { signal: controller.signal });
        await rec.wait(1);
        await agent.stop();
        await delay(100);
        const reason = new Error("done");
        controller.abort(reason);
        await assert.rejects(within(2000, monitor), (e: unknown) => e === reason);

        // Stopped while connected: the stream ends without being taken for lost.
        await agent.start();
        const warnings = () => logged.filter((m) => m.startsWith("WARNING")).length;
        const before = warnings();
        const connected = new AbortController();
        const following = sdk.monitorPeers(rec.peers, { signal: connected.signal });
        await waitFor(() => agent.watcherCount === 1, "the stream");
        connected.abort(reason);
        await assert.rejects(within(2000, following), (e: unknown) => e === reason);
        assert.equal(warnings(), before, logged.join("\n"));
        await waitFor(() => agent.watcherCount === 0, "the stream to close");

        const closing = sdk.monitorPeers(rec.peers);
        await waitFor(() => agent.watcherCount === 1, "the stream");
        sdk.close();
        await assert.rejects(within(2000, closing), /this DStackP2PSDK is closed/);
        await waitFor(() => agent.watcherCount === 0, "the stream to close");
      }),
    ));

  test("an already aborted signal stops it before any request", () =>
    withAgent("unix socket", async (agent) => {
      await withSdk({ api: agent.api }, async (sdk) => {
        const reason = new Error("never mind");
        await assert.rejects(
          sdk.monitorPeers(() => {}, { signal: AbortSignal.abort(reason) }),
          (e) => e === reason,
        );
      });
      assert.deepEqual(agent.requests, []);
    }));
});

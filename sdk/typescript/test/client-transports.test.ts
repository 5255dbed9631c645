/**
 * The client against a real HTTP server (test/fake-agent.ts), the same over a unix socket and over loopback
 * TCP: the reads, register, timeouts, and the event stream across the agent's restarts.
 */

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { AgentUnreachable, Leader, Peer, Reconnected, VERSION } from "../dist/index.js";
import { CONTRACT, delay, peerJson, waitFor } from "./fake-agent.js";
import { KINDS, Recorder, node, running, withAgent, withSdk, within } from "./helpers.js";

for (const kind of KINDS) {
  describe(`over a ${kind}`, () => {
    test("status, peers and leader are read and typed", () =>
      withAgent(kind, (agent) =>
        withSdk({ api: agent.api }, async (sdk) => {
          const status = await sdk.status();
          assert.equal(status.node.overlayIp, "10.0.1.1");
          assert.equal(status.chain.lag, 2);
          assert.deepEqual(await sdk.getPeers(), ["10.0.1.2", "10.0.1.3"]);
          const peers = await sdk.peers();
          assert.deepEqual(
            peers.map((p) => p.tokenId),
            [2, 3],
          );
          assert.ok(peers[0] instanceof Peer);
          assert.equal(peers[0]?.rxBytes, 123);
          const leader = await sdk.leader();
          assert.ok(leader instanceof Leader);
          assert.equal(leader.tokenId, 2);
          assert.equal(leader.address, "10.0.1.2");
          assert.equal(leader.reachable, true);
          assert.equal(agent.userAgent, `dstack-p2p-typescript/${VERSION}`);
        }),
      ));

    test("getPeers gives the overlay IP, else the gateway URL, and leaves out the unreachable", () =>
      withAgent(kind, (agent) => {
        agent.peers = [peerJson(2, { address: null }), peerJson(3, { address: "https://gw/3" }), peerJson(4)];
        return withSdk({ api: agent.api }, async (sdk) => {
          assert.deepEqual(await sdk.getPeers(), ["https://gw/3", "10.0.1.4"]);
        });
      }));

    test("register waits until the node is registered", () =>
      withAgent(kind, (agent) => {
        node(agent)["registered"] = false;
        agent.onStatus = (n) => {
          if (n >= 3) node(agent)["registered"] = true;
        };
        return withSdk({ contract: CONTRACT, api: agent.api }, async (sdk) => {
          assert.equal(await within(5000, sdk.register({ timeout: 5, poll: 0.05 })), true);
          assert.equal(agent.requests.filter((r) => r === "/v1/status").length, 3);
        });
      }));

    test("register waits out an agent restart", () =>
      withAgent(kind, async (agent) => {
        node(agent)["registered"] = false;
        const restart = (async () => {
          await waitFor(() => agent.requests.includes("/v1/status"), "the first status read");
          await agent.stop();
          await delay(300);
          node(agent)["registered"] = true;
          await agent.start();
        })();
        await withSdk({ api: agent.api }, async (sdk) => {
          assert.equal(await within(5000, sdk.register({ timeout: 5, poll: 0.05 })), true);
        });
        await restart;
      }));

    test("an agent that does not answer in time is unreachable, saying so", () =>
      withAgent(kind, (agent) => {
        agent.hang.add("/v1/peers");
        return withSdk({ api: agent.api, timeout: 0.2 }, async (sdk) => {
          const started = performance.now();
          await assert.rejects(within(5000, sdk.getPeers()), (e: unknown) => {
            assert.ok(e instanceof AgentUnreachable);
            assert.match(e.message, /did not answer within 0\.2 s: is it stuck\?/);
            assert.equal(e.address, agent.api);
            return true;
          });
          assert.ok(performance.now() - started < 2000);
        });
      }));

    test("a reply that stops halfway is cut at the timeout", () =>
      withAgent(kind, (agent) => {
        agent.stall.add("/v1/peers");
        return withSdk({ api: agent.api, timeout: 0.3 }, async (sdk) => {
          await assert.rejects(within(5000, sdk.getPeers()), {
            name: "AgentUnreachable",
            message: /did not answer within 0\.3 s/,
          });
        });
      }));

    test("a quiet event stream is not timed out", () =>
      withAgent(kind, (agent) =>
        withSdk({ api: agent.api, timeout: 0.2 }, async (sdk, logged) => {
          const rec = new Recorder();
          await running(
            (signal) => sdk.monitorPeers(rec.peers, { onReconnect: rec.reconnect, signal }),
            async () => {
              await rec.wait(1);
              await delay(700);
              agent.setPeers([peerJson(5)]);
              await rec.wait(2);
              assert.deepEqual(rec.calls, [
                ["peers", ["10.0.1.2", "10.0.1.3"]],
                ["peers", ["10.0.1.5"]],
              ]);
              assert.equal(agent.eventsConnections, 1);
            },
          );
          assert.deepEqual(logged, []);
        }),
      ));

    test("monitorPeers reconnects after a graceful and a cut restart, with no spurious call", () =>
      withAgent(kind, (agent) =>
        withSdk({ api: agent.api }, async (sdk, logged) => {
          const rec = new Recorder();
          await running(
            (signal) =>
              sdk.monitorPeers(rec.peers, { onLeader: rec.leader, onReconnect: rec.reconnect, signal }),
            async () => {
              await rec.wait(2);
              for (const graceful of [true, false]) {
                const before = rec.calls.length;
                await agent.restart({ down: 0.3, graceful });
                await rec.wait(before + 1);
                const [what, info] = rec.calls[before] ?? [];
                assert.equal(what, "reconnected");
                assert.ok(info instanceof Reconnected);
                assert.ok(info.attempts >= 1);
                assert.ok(info.downSecs >= 0.25, `down ${info.downSecs} s`);
                // Same peers and leader after the restart: no call.
                await waitFor(() => agent.watcherCount === 1, "the stream to be back");
                await delay(100);
                assert.equal(rec.calls.length, before + 1, JSON.stringify(rec.calls));
              }
              // Then a real change is delivered once.
              agent.setPeers([peerJson(3)]);
              await rec.wait(5);
              assert.deepEqual(rec.calls.slice(4), [["peers", ["10.0.1.3"]]]);
              assert.equal(agent.eventsConnections, 3);
            },
          );
          assert.ok(
            logged.some((m) => m.startsWith("WARNING lost the event stream of the dstack-mesh agent at")),
          );
          assert.ok(logged.some((m) => m.startsWith("INFO reconnected to the dstack-mesh agent")));
        }),
      ));
  });
}

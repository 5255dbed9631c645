/** The client against a real HTTP server (test/fake-agent.ts), on a unix socket and on loopback TCP. */

import assert from "node:assert/strict";
import { renameSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { describe, test } from "node:test";

import {
  AgentError,
  AgentUnreachable,
  ConfigMismatch,
  DStackP2PSDK,
  Leader,
  Peer,
  ProtocolError,
  Reconnected,
  RegistrationError,
  VERSION,
} from "../dist/index.js";
import {
  CONTRACT,
  FakeAgent,
  type JsonObject,
  delay,
  leaderJson,
  peerJson,
  sockDir,
  waitFor,
} from "./fake-agent.js";
import { KINDS, Recorder, running, withAgent, withSdk, within } from "./helpers.js";

const NO_SEAT =
  `no seat of cluster ${CONTRACT} is bound to this instance (ab12cd34). The cluster owner mints one ` +
  `bound to it:\n    meshctl mint --contract ${CONTRACT} --to 0xHOLDER --instance ab12cd34`;

function node(agent: FakeAgent): JsonObject {
  return agent.status.node;
}

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

// --- register() -----------------------------------------------------------------------------------

describe("register", () => {
  test("is true at once for a registered node", () =>
    withAgent("unix socket", (agent) =>
      withSdk({ contract: CONTRACT, mode: "wireguard", api: agent.api }, async (sdk) => {
        assert.equal(await within(5000, sdk.register({ timeout: 5 })), true);
      }),
    ));

  test("is false after its timeout while the agent is still at it", () =>
    withAgent("unix socket", (agent) => {
      node(agent)["registered"] = false;
      return withSdk({ contract: CONTRACT, api: agent.api }, async (sdk) => {
        const started = performance.now();
        assert.equal(await within(5000, sdk.register({ timeout: 0.4, poll: 0.1 })), false);
        const took = (performance.now() - started) / 1000;
        assert.ok(took > 0.35 && took < 2, `took ${took} s`);
      });
    }));

  test("throws the agent's reason, verbatim with the meshctl command, at once", () =>
    withAgent("unix socket", (agent) => {
      Object.assign(node(agent), {
        registered: false,
        tokenId: null,
        overlayIp: null,
        registrationError: NO_SEAT,
      });
      return withSdk({ contract: CONTRACT, api: agent.api }, async (sdk) => {
        const started = performance.now();
        await assert.rejects(within(5000, sdk.register({ timeout: 30 })), (e: unknown) => {
          assert.ok(e instanceof RegistrationError);
          assert.equal(e.reason, NO_SEAT);
          assert.equal(e.message, NO_SEAT);
          assert.equal(e.source, "registration");
          assert.equal(e.name, "RegistrationError");
          assert.ok(e.message.includes("meshctl mint"));
          return true;
        });
        assert.ok(performance.now() - started < 2000);
      });
    }));

  test("throws once the error appears", () =>
    withAgent("unix socket", (agent) => {
      node(agent)["registered"] = false;
      agent.onStatus = (n) => {
        if (n === 2) node(agent)["registrationError"] = "no funded sender: fund 0xabc on chain 31337";
      };
      return withSdk({ api: agent.api }, async (sdk) => {
        await assert.rejects(within(5000, sdk.register({ timeout: 30, poll: 0.05 })), {
          name: "RegistrationError",
          message: /^no funded sender: fund 0xabc/,
        });
      });
    }));

  test("throws a chain error when the RPC fails", () =>
    withAgent("unix socket", (agent) => {
      node(agent)["registered"] = false;
      agent.status.chain["lastError"] = "error sending request for url (http://rpc/): connection refused";
      return withSdk({ api: agent.api }, async (sdk) => {
        await assert.rejects(within(5000, sdk.register({ timeout: 30 })), (e: unknown) => {
          assert.ok(e instanceof RegistrationError);
          assert.match(e.message, /cannot read the chain.*connection refused/);
          assert.equal(e.source, "chain");
          assert.ok(e.reason.startsWith("error sending request"));
          return true;
        });
      });
    }));

  test("is true even while the RPC fails", () =>
    withAgent("unix socket", (agent) => {
      agent.status.chain["lastError"] = "timeout";
      return withSdk({ api: agent.api }, async (sdk) => {
        assert.equal(await within(5000, sdk.register({ timeout: 5 })), true);
      });
    }));

  test("stops when its signal aborts", () =>
    withAgent("unix socket", (agent) => {
      node(agent)["registered"] = false;
      return withSdk({ api: agent.api }, async (sdk) => {
        const reason = new Error("the app is shutting down");
        const registering = sdk.register({ timeout: 30, poll: 0.05, signal: AbortSignal.timeout(10_000) });
        const controller = new AbortController();
        const stopped = sdk.register({ timeout: 30, poll: 0.05, signal: controller.signal });
        setTimeout(() => controller.abort(reason), 200);
        await assert.rejects(within(5000, stopped), (e: unknown) => e === reason);
        node(agent)["registered"] = true;
        assert.equal(await within(5000, registering), true);
      });
    }));
});

// --- checks and errors ----------------------------------------------------------------------------

describe("checks and errors", () => {
  test("a contract mismatch names both contracts and what to fix", () =>
    withAgent("unix socket", (agent) => {
      const wrong = "0x" + "12".repeat(20);
      return withSdk({ contract: wrong, api: agent.api }, async (sdk) => {
        for (const call of [
          () => sdk.register(),
          () => sdk.getPeers(),
          () => sdk.leader(),
        ] as (() => Promise<unknown>)[]) {
          await assert.rejects(within(5000, call()), (e: unknown) => {
            assert.ok(e instanceof ConfigMismatch);
            assert.ok(e.message.includes(CONTRACT) && e.message.includes(wrong));
            assert.ok(e.message.includes("another cluster") && e.message.includes("DSTACK_MESH_CONTRACT"));
            assert.deepEqual([e.field, e.expected, e.actual], ["contract", wrong, CONTRACT]);
            return true;
          });
        }
      });
    }));

  test("the contract is compared case-insensitively, and checked once", () =>
    withAgent("unix socket", async (agent) => {
      await withSdk({ contract: CONTRACT.toLowerCase(), mode: "wireguard", api: agent.api }, async (sdk) => {
        await sdk.getPeers();
        await sdk.leader();
        await sdk.getPeers();
      });
      assert.deepEqual(agent.requests, ["/v1/status", "/v1/peers", "/v1/leader", "/v1/peers"]);
    }));

  test("the positional form checks as the options form does", () =>
    withAgent("unix socket", async (agent) => {
      const sdk = new DStackP2PSDK(CONTRACT, "tls", { api: agent.api });
      try {
        await assert.rejects(sdk.getPeers(), { name: "ConfigMismatch" });
      } finally {
        sdk.close();
      }
    }));

  test("no status read without checks", () =>
    withAgent("unix socket", async (agent) => {
      await withSdk({ api: agent.api }, (sdk) => sdk.getPeers());
      assert.deepEqual(agent.requests, ["/v1/peers"]);
    }));

  test("a mode mismatch says both modes", () =>
    withAgent("unix socket", (agent) =>
      withSdk({ contract: CONTRACT, mode: "tls", api: agent.api }, async (sdk) => {
        await assert.rejects(sdk.getPeers(), (e: unknown) => {
          assert.ok(e instanceof ConfigMismatch);
          assert.match(e.message, /runs in mode "wireguard", but this SDK was given mode "tls"/);
          assert.deepEqual([e.field, e.expected, e.actual], ["mode", "tls", "wireguard"]);
          return true;
        });
      }),
    ));

  test("a missing socket says so, and what to check", async () => {
    const dir = sockDir();
    try {
      const path = join(dir.path, "nothing.sock");
      await withSdk({ api: path }, async (sdk) => {
        for (const call of [
          () => sdk.getPeers(),
          () => sdk.register(),
          () => sdk.status(),
        ] as (() => Promise<unknown>)[]) {
          await assert.rejects(within(5000, call()), (e: unknown) => {
            assert.ok(e instanceof AgentUnreachable);
            assert.ok(e.message.includes(`no socket at unix socket ${path} (from argument)`), e.message);
            for (const hint of ["agent running", "mounted", "DSTACK_MESH_API"])
              assert.ok(e.message.includes(hint));
            assert.equal(e.address, path);
            return true;
          });
        }
      });
    } finally {
      dir.remove();
    }
  });

  test("a socket nobody accepts on says so", async () => {
    // What a crashed agent's leftover file gives: a socket file with no listener. A server removes its
    // file when it closes, so the file is moved away first and closing leaves it behind.
    const dir = sockDir();
    try {
      const live = join(dir.path, "live.sock");
      const stale = join(dir.path, "stale.sock");
      const server = createServer();
      await new Promise<void>((resolve) => server.listen(live, resolve));
      renameSync(live, stale);
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await withSdk({ api: stale }, async (sdk) => {
        await assert.rejects(within(5000, sdk.getPeers()), {
          name: "AgentUnreachable",
          message: /exists but nothing accepts on it/,
        });
      });
    } finally {
      dir.remove();
    }
  });

  test("a refused TCP port says so, naming DSTACK_MESH_API as the source", async () => {
    // A port just freed: nothing listens there.
    const agent = await new FakeAgent().start();
    const url = agent.api;
    await agent.stop();
    const saved = process.env["DSTACK_MESH_API"];
    process.env["DSTACK_MESH_API"] = url;
    try {
      await withSdk({}, async (sdk) => {
        await assert.rejects(within(5000, sdk.getPeers()), (e: unknown) => {
          assert.ok(e instanceof AgentUnreachable);
          assert.ok(e.message.includes(`${url} (from DSTACK_MESH_API): connection refused`), e.message);
          return true;
        });
      });
    } finally {
      if (saved === undefined) delete process.env["DSTACK_MESH_API"];
      else process.env["DSTACK_MESH_API"] = saved;
    }
  });

  test("an HTTP error carries the agent's text", () =>
    withAgent("unix socket", (agent) => {
      agent.errors.set("/v1/leader", [404, "no such path /v1/leader: try /v1/status"]);
      return withSdk({ api: agent.api }, async (sdk) => {
        await assert.rejects(sdk.leader(), (e: unknown) => {
          assert.ok(e instanceof AgentError);
          assert.equal(e.status, 404);
          assert.equal(e.error, "no such path /v1/leader: try /v1/status");
          assert.equal(
            e.message,
            "the agent answered 404 to GET /v1/leader: no such path /v1/leader: try /v1/status",
          );
          return true;
        });
      });
    }));

  test("a reply that is not JSON, or not the right shape, is a ProtocolError", () =>
    withAgent("loopback TCP", (agent) =>
      withSdk({ api: agent.api }, async (sdk) => {
        agent.bodies.set("/v1/peers", "<html>a proxy's page</html>");
        await assert.rejects(sdk.getPeers(), {
          name: "ProtocolError",
          message:
            /the reply to GET \/v1\/peers from URL http:\/\/127\.0\.0\.1:\d+ \(from argument\) is not JSON/,
        });
        agent.bodies.set("/v1/peers", JSON.stringify([{ ...peerJson(2), tokenId: "2" }]));
        await assert.rejects(sdk.getPeers(), (e: unknown) => {
          assert.ok(e instanceof ProtocolError);
          assert.equal(e.message, `the agent's peer has "tokenId" = "2", of the wrong type`);
          return true;
        });
        agent.bodies.set("/v1/leader", JSON.stringify({ ...leaderJson(2), state: "fresh" }));
        await assert.rejects(sdk.leader(), {
          message: /"state" = "fresh", not one of current, stale, unknown/,
        });
      }),
    ));

  test("a logger that is a class instance keeps its this", () =>
    withAgent("unix socket", async (agent) => {
      class Collector {
        readonly lines: string[] = [];
        warn(m: string): void {
          this.lines.push(m);
        }
      }
      const collector = new Collector();
      const sdk = new DStackP2PSDK({ api: agent.api, logger: collector });
      const rec = new Recorder();
      try {
        await running(
          (signal) => sdk.monitorPeers(rec.peers, { signal }),
          async () => {
            await rec.wait(1);
            await agent.restart({ down: 0.1 });
            await waitFor(() => collector.lines.length === 1, "the warning");
          },
        );
      } finally {
        sdk.close();
      }
      assert.match(collector.lines[0] ?? "", /^lost the event stream of the dstack-mesh agent at unix socket/);
    }));

  test("a closed SDK refuses", () =>
    withAgent("unix socket", async (agent) => {
      const sdk = new DStackP2PSDK({ api: agent.api });
      await sdk.getPeers();
      sdk.close();
      await assert.rejects(sdk.getPeers(), /this DStackP2PSDK is closed: make a new one/);
    }));
});

// --- monitorPeers ---------------------------------------------------------------------------------

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

// --- the leader's lease and term ------------------------------------------------------------------

/** Watches the leader of a node that leads as seat 1 in term 3: `body` gets what the monitor is called with. */
function leaderCalls(body: (agent: FakeAgent, got: Leader[]) => Promise<void>): Promise<void> {
  return withAgent("unix socket", (agent) => {
    agent.leader = leaderJson(1, { isSelf: true, term: 3 });
    return withSdk({ api: agent.api }, async (sdk) => {
      const got: Leader[] = [];
      await running(
        (signal) => sdk.monitorLeader((l) => got.push(l), { signal }),
        async () => {
          await waitFor(() => got.length === 1, "the first leader");
          await body(agent, got);
        },
      );
    });
  });
}

describe("the leader's lease and term", () => {
  test("onLeader hears the lease end and every new term, but not the clock", () =>
    leaderCalls(async (agent, got) => {
      assert.ok(got[0]?.isSelf);
      assert.equal(got[0]?.term, 3);
      assert.equal(got[0]?.leaseMs, 2100);
      const then = async (change: JsonObject, count: number) => {
        agent.setLeader({ ...agent.leader, ...change });
        await waitFor(() => got.length === count, `call ${count}`);
      };
      // The age and what is left of the lease move all the time: no call.
      agent.setLeader({ ...agent.leader, ageMs: 900, leaseMs: 1600 });
      agent.setLeader({ ...agent.leader, ageMs: 1300, leaseMs: 1200 });
      // The lease runs out: the same seat, no longer this node's to act on.
      const reason = "the chain view is 2.6 s old, older than the 2.5 s lease";
      await then({ isSelf: false, leaseMs: null, state: "stale", reason }, 2);
      assert.equal(got[1]?.isSelf, false);
      assert.equal(got[1]?.state, "stale");
      assert.equal(got[1]?.reason, reason);
      assert.equal(got[1]?.tokenId, 1);
      assert.equal(got[1]?.term, 3);
      // Confirmed again, as a follower would be, but still not leading: the state alone is a change.
      await then({ state: "current", ageMs: 20 }, 3);
      // Leading again under the same term.
      await then({ isSelf: true, leaseMs: 2400, reason: null }, 4);
      assert.equal(got[3]?.isSelf, true);
      assert.equal(got[3]?.term, 3);
      // Unhealthy: it steps down.
      await then({ isSelf: false, healthy: false, leaseMs: null, reason: "unhealthy: redis" }, 5);
      assert.equal(got[4]?.healthy, false);
      // A new term with the same seat (cleared, then elected again).
      await then({ term: 5, isSelf: true, healthy: true, reason: null, leaseMs: 2000 }, 6);
      assert.equal(got[5]?.term, 5);
      await delay(100);
      assert.equal(got.length, 6);
    }));

  test("after a reconnection, onLeader hears only what changed", () =>
    leaderCalls(async (agent, got) => {
      // Back with only the clock moved: nothing to report.
      await agent.stop();
      agent.leader = { ...agent.leader, ageMs: 5, leaseMs: 2490 };
      await agent.start();
      await waitFor(() => agent.eventsConnections === 2, "the second stream");
      await delay(100);
      assert.equal(got.length, 1);
      // Back with the lease lost meanwhile: one call.
      await agent.stop();
      agent.leader = { ...agent.leader, isSelf: false, leaseMs: null, state: "unknown" };
      await agent.start();
      await waitFor(() => got.length === 2, "the lease lost");
      assert.equal(got[1]?.isSelf, false);
      assert.equal(got[1]?.state, "unknown");
    }));
});

// --- health ---------------------------------------------------------------------------------------

describe("health", () => {
  test("setHealthy and health round-trip", () =>
    withAgent("unix socket", async (agent) => {
      await withSdk({ contract: CONTRACT, api: agent.api }, async (sdk) => {
        const before = await sdk.health();
        assert.equal(before.healthy, true);
        assert.deepEqual(before.reasons, []);
        assert.equal(before.app, null);
        assert.equal(before.check, null);

        let h = await sdk.setHealthy(false, { reason: "postgres is down", ttl: 10 });
        assert.deepEqual(agent.healthPosts, [{ healthy: false, reason: "postgres is down", ttlSecs: 10 }]);
        assert.equal(h.healthy, false);
        assert.deepEqual(h.reasons, ["the application reports itself unhealthy: postgres is down"]);
        assert.equal(h.app?.reason, "postgres is down");
        assert.equal(h.app?.expiresInMs, 10000);
        assert.deepEqual(await sdk.health(), h);

        // No reason and no ttl: neither is sent (the agent refuses fields it does not know, not absent ones).
        h = await sdk.setHealthy(true);
        assert.deepEqual(agent.healthPosts.at(-1), { healthy: true });
        assert.equal(h.healthy, true);
        assert.equal(h.app?.expiresInMs, null);

        agent.check = { kind: "command", healthy: false, reason: "exit status 1" };
        h = await sdk.health();
        assert.equal(h.healthy, false);
        assert.equal(h.check?.kind, "command");
        assert.deepEqual(h.reasons, ["the agent's check fails: exit status 1"]);
      });
      assert.equal(agent.requests[0], "/v1/status");
      assert.equal(agent.requests.filter((r) => r === "POST /v1/health").length, 2);
    }));

  const refused: [string, unknown[], RegExp][] = [
    ["null", [null], /healthy must be true or false, not null/],
    ["1", [1], /healthy must be true or false, not 1/],
    [
      "a long reason",
      [false, { reason: "x".repeat(201) }],
      /reason has 201 characters; the agent takes at most 200/,
    ],
    ["a newline", [false, { reason: "db down\nTraceback ..." }], /contains control characters/],
    ["bytes", [false, { reason: new TextEncoder().encode("db down") }], /reason must be a string or null/],
    ["ttl 0", [true, { ttl: 0 }], /ttl must be a number of seconds above 0, not 0/],
    ["ttl -1.5", [true, { ttl: -1.5 }], /not -1\.5/],
    ["ttl NaN", [true, { ttl: Number.NaN }], /not NaN/],
    ["ttl Infinity", [true, { ttl: Number.POSITIVE_INFINITY }], /not Infinity/],
    ["ttl true", [true, { ttl: true }], /not true/],
    ["ttl '10'", [true, { ttl: "10" }], /not "10"/],
  ];
  for (const [what, args, message] of refused) {
    test(`setHealthy refuses ${what} before sending`, () =>
      withAgent("unix socket", async (agent) => {
        await withSdk({ api: agent.api }, async (sdk) => {
          const setHealthy = sdk.setHealthy.bind(sdk) as (...a: unknown[]) => Promise<unknown>;
          await assert.rejects(
            setHealthy(...args),
            (e: unknown) => e instanceof TypeError && message.test(e.message),
          );
          // The longest reason, in characters rather than UTF-16 units, is taken.
          const h = await sdk.setHealthy(false, { reason: "é".repeat(199) + "😀", ttl: 0.5 });
          assert.notEqual(h.app, null);
        });
        assert.deepEqual(agent.requests, ["POST /v1/health"]);
      }));
  }

  test("setHealthy surfaces the agent's refusal", () =>
    withAgent("unix socket", (agent) =>
      withSdk({ api: agent.api }, async (sdk) => {
        const text = '"ttlSecs" is 100000: give a number of seconds above 0 and at most 86400';
        agent.errors.set("/v1/health", [400, text]);
        await assert.rejects(sdk.setHealthy(true, { ttl: 100000 }), (e: unknown) => {
          assert.ok(e instanceof AgentError);
          assert.equal(e.status, 400);
          assert.equal(e.error, text);
          assert.equal(e.method, "POST");
          assert.equal(e.path, "/v1/health");
          assert.equal(e.message, `the agent answered 400 to POST /v1/health: ${text}`);
          return true;
        });
        agent.errors.set("/v1/health", [
          403,
          "POST /v1/health is taken on the API socket and on loopback only",
        ]);
        await assert.rejects(sdk.setHealthy(false), {
          message: /403 to POST \/v1\/health: POST \/v1\/health is taken on the API/,
        });
        agent.errors.delete("/v1/health");
        // An agent from before health reports.
        agent.readOnly = true;
        await assert.rejects(sdk.setHealthy(true), {
          message: /405 to POST \/v1\/health: the agent API is read-only/,
        });
        await assert.rejects(sdk.health(), { message: /404 to GET \/v1\/health/ });
      }),
    ));

  test("health's protocol errors, and an absent agent", () =>
    withAgent("unix socket", async (agent, dir) => {
      await withSdk({ api: agent.api }, async (sdk) => {
        agent.bodies.set("/v1/health", JSON.stringify({ healthy: "yes", reasons: [] }));
        for (const call of [() => sdk.health(), () => sdk.setHealthy(true)]) {
          await assert.rejects(call(), {
            name: "ProtocolError",
            message: /the agent's health has "healthy" = "yes"/,
          });
        }
      });
      await withSdk({ api: join(dir, "none.sock") }, async (sdk) => {
        await assert.rejects(sdk.setHealthy(false, { reason: "down" }), {
          name: "AgentUnreachable",
          message: /no socket at/,
        });
      });
    }));
});

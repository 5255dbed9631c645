/**
 * The checks of the agent's contract and mode, and what each failure says: a missing or dead socket, a
 * refused port, an HTTP error, a reply of the wrong shape, a closed SDK.
 */

import assert from "node:assert/strict";
import { renameSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { describe, test } from "node:test";

import { AgentError, AgentUnreachable, ConfigMismatch, DStackP2PSDK, ProtocolError } from "../dist/index.js";
import { CONTRACT, FakeAgent, leaderJson, peerJson, sockDir, waitFor } from "./fake-agent.js";
import { Recorder, running, withAgent, withSdk, within } from "./helpers.js";

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
            const served = agent.status.chain["contract"];
            assert.ok(typeof served === "string" && e.message.includes(served) && e.message.includes(wrong));
            assert.ok(e.message.includes("another cluster") && e.message.includes("DSTACK_MESH_CONTRACT"));
            assert.deepEqual([e.field, e.expected, e.actual], ["contract", wrong, served]);
            return true;
          });
        }
      });
    }));

  test("the contract is compared case-insensitively, and checked once", () =>
    withAgent("unix socket", async (agent) => {
      // Checksummed, as users give it; the agent serves it in lower case.
      assert.equal(agent.status.chain["contract"], CONTRACT.toLowerCase());
      assert.notEqual(CONTRACT, CONTRACT.toLowerCase());
      await withSdk({ contract: CONTRACT, mode: "wireguard", api: agent.api }, async (sdk) => {
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

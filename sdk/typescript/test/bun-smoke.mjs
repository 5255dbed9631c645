// The SDK under Bun: the built package (dist/) against the stand-in agent (dist-test/fake-agent.js), over
// loopback TCP (Bun's fetch) and over a unix socket (Bun's node:http). Run by `npm run test:bun`, which
// builds both first. Node's test runner is not used here: this is Bun running the SDK, not the test suite.
//
// A proxy in the environment must not be used for the loopback API: the script sets a dead one.

import assert from "node:assert/strict";
import { join } from "node:path";

import { AgentUnreachable, DStackP2PSDK, Leader } from "../dist/index.js";
import { CONTRACT, FakeAgent, peerJson, sockDir, waitFor } from "../dist-test/fake-agent.js";

if (typeof Bun === "undefined") {
  console.error("bun-smoke.mjs is for Bun: run it with `npm run test:bun`");
  process.exit(2);
}
process.env.HTTP_PROXY = process.env.http_proxy = "http://127.0.0.1:9";

let passed = 0;
let failed = 0;

async function check(name, body) {
  try {
    await body();
    passed += 1;
    console.log(`ok - ${name}`);
  } catch (e) {
    failed += 1;
    console.log(`not ok - ${name}\n${e?.stack ?? e}`);
  }
}

const dir = sockDir();
try {
  for (const socket of [null, join(dir.path, "api.sock")]) {
    const kind = socket === null ? "loopback TCP" : "a unix socket";
    const agent = await new FakeAgent(socket).start();
    try {
      await check(`Bun ${Bun.version}: the API over ${kind}`, async () => {
        const sdk = new DStackP2PSDK(CONTRACT, "wireguard", { api: agent.api, logger: null });
        try {
          assert.equal(await sdk.register({ timeout: 5 }), true);
          assert.deepEqual(await sdk.getPeers(), ["10.0.1.2", "10.0.1.3"]);
          const leader = await sdk.leader();
          assert.ok(leader instanceof Leader);
          assert.equal(leader.term, 2);
          const health = await sdk.setHealthy(false, { reason: "redis is down", ttl: 5 });
          assert.equal(health.healthy, false);
          assert.deepEqual(agent.healthPosts, [{ healthy: false, reason: "redis is down", ttlSecs: 5 }]);
        } finally {
          sdk.close();
        }
      });

      await check(
        `Bun: monitorPeers over ${kind}, through an ended and a cut stream, stopped by its signal`,
        async () => {
          const sdk = new DStackP2PSDK({ api: agent.api, logger: null });
          const lists = [];
          const reconnects = [];
          const controller = new AbortController();
          const monitor = sdk.monitorPeers((peers) => lists.push(peers), {
            onReconnect: (info) => reconnects.push(info),
            signal: controller.signal,
          });
          const ended = monitor.catch((e) => e);
          try {
            await waitFor(() => lists.length === 1, "the first list");
            agent.setPeers([peerJson(2), peerJson(4)]);
            await waitFor(() => lists.length === 2, "the change");
            await agent.restart({ down: 0.3 });
            await waitFor(() => reconnects.length === 1, "the reconnection");
            agent.setPeers([peerJson(4)]);
            await waitFor(() => lists.length === 3, "the change after the restart");
            // Cut rather than ended: the connection is reset under the stream.
            await agent.restart({ down: 0.3, graceful: false });
            await waitFor(() => reconnects.length === 2, "the reconnection after the cut");
            agent.setPeers([peerJson(5)]);
            await waitFor(() => lists.length === 4, "the change after the cut");
            assert.deepEqual(lists, [
              ["10.0.1.2", "10.0.1.3"],
              ["10.0.1.2", "10.0.1.4"],
              ["10.0.1.4"],
              ["10.0.1.5"],
            ]);
          } finally {
            const stop = new Error("stop");
            controller.abort(stop);
            assert.equal(await ended, stop);
            sdk.close();
          }
        },
      );
    } finally {
      await agent.stop();
    }
  }

  await check("Bun: a missing socket is AgentUnreachable, saying so", async () => {
    const path = join(dir.path, "none.sock");
    const sdk = new DStackP2PSDK({ api: path });
    await assert.rejects(sdk.getPeers(), (e) => {
      assert.ok(e instanceof AgentUnreachable, String(e));
      assert.ok(e.message.includes(`no socket at unix socket ${path}`), e.message);
      return true;
    });
  });

  await check("Bun: a refused port is AgentUnreachable, saying so", async () => {
    const agent = await new FakeAgent().start();
    const url = agent.api;
    await agent.stop();
    const sdk = new DStackP2PSDK({ api: url });
    await assert.rejects(sdk.getPeers(), (e) => {
      assert.ok(e instanceof AgentUnreachable, String(e));
      assert.ok(e.message.includes(`${url} (from argument): connection refused`), e.message);
      return true;
    });
  });
} finally {
  dir.remove();
}

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed === 0 ? 0 : 1);

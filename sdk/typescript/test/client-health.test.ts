/** setHealthy and health: the round trip, what is refused before it is sent, and the agent's refusals. */

import assert from "node:assert/strict";
import { join } from "node:path";
import { describe, test } from "node:test";

import { AgentError } from "../dist/index.js";
import { CONTRACT } from "./fake-agent.js";
import { withAgent, withSdk } from "./helpers.js";

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

/** The leader's lease and term: which of the agent's changes reach onLeader, reconnections included. */

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import type { Leader } from "../dist/index.js";
import { type FakeAgent, type JsonObject, delay, leaderJson, waitFor } from "./fake-agent.js";
import { running, withAgent, withSdk } from "./helpers.js";

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

/**
 * followLeader: the decisions (a pure function, case by case and over random histories), then the loop
 * against the stand-in agent: events, restarts, renewing the lease and standing down when it runs out. The
 * port of sdk/python/tests/test_follow.py.
 */

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import {
  AgentUnreachable,
  Backoff,
  DEMOTE,
  DStackP2PSDK,
  FOLLOW,
  type FollowAction,
  type FollowState,
  INITIAL_FOLLOW_STATE,
  LEASE_LAPSED,
  Leader,
  type LeaderSource,
  PROMOTE,
  ProtocolError,
  decideFollow,
  followLeader,
  whyNotLeading,
} from "../dist/index.js";
import { type FakeAgent, delay, leaderJson, waitFor } from "./fake-agent.js";
import { running, withAgent, within } from "./helpers.js";

const ME = 1;

type LeaderFields = ConstructorParameters<typeof Leader>[0];

/**
 * What node ME's agent says: seat `token` leads under `term`, this node under its lease if it is ME; `fields`
 * overrides any field.
 */
function view(token: number | null, term: number | null = 1, fields: Partial<LeaderFields> = {}): Leader {
  const base: LeaderFields =
    token === null
      ? { tokenId: null, instanceId: null, overlayIp: null, address: null, isSelf: false, reachable: null }
      : {
          tokenId: token,
          instanceId: `inst${token}`,
          overlayIp: `10.0.1.${token}`,
          address: `10.0.1.${token}`,
          isSelf: token === ME,
          reachable: token === ME ? null : true,
          leaseMs: token === ME ? 2000 : null,
        };
  return new Leader({ ...base, term, state: "current", ...fields });
}

/** Decides `views` in order: the state after, and every action as [kind, term]. */
function run(
  views: Leader[],
  state: FollowState = INITIAL_FOLLOW_STATE,
): [FollowState, [string, number | null][]] {
  const made: [string, number | null][] = [];
  for (const v of views) {
    const [next, actions] = decideFollow(state, v);
    state = next;
    made.push(...actions.map((a): [string, number | null] => [a.kind, a.term]));
  }
  return [state, made];
}

describe("decideFollow", () => {
  test("the first view always calls back", () => {
    assert.deepEqual(run([view(ME, 3)])[1], [[PROMOTE, 3]]);
    // Not leading: demoted, so that a service left leading by an earlier run stands down.
    assert.deepEqual(run([view(null, 0)])[1], [[DEMOTE, 0]]);
    assert.deepEqual(run([view(2, 4)])[1], [
      [DEMOTE, 4],
      [FOLLOW, 4],
    ]);
    assert.deepEqual(run([view(2, 4, { state: "unknown" })])[1], [[DEMOTE, 4]]);
  });

  test("repeated views call nothing", () => {
    for (const v of [view(ME, 3), view(null, 0), view(2, 4), view(2, 4, { state: "stale" })]) {
      const [state] = run([v]);
      assert.deepEqual(decideFollow(state, v), [state, []]);
      // Nor does what moves all the time without anything to act on.
      const moved = new Leader({ ...v, ageMs: 9, leaseMs: v.leaseMs === null ? null : 10 });
      assert.deepEqual(decideFollow(state, moved)[1], []);
    }
  });

  test("a leader is demoted once, whatever ends its leadership", () => {
    const endings: Record<string, Leader> = {
      "another seat leads": view(2, 4),
      "the lease ended": view(ME, 3, { isSelf: false, leaseMs: null, reason: "the lease ran out" }),
      "no leader": view(null, 4),
      "the seat elected is refused": view(null, 4, { refusedSeat: 2, reason: "signature" }),
      "its view went stale": view(ME, 3, { isSelf: false, state: "stale", leaseMs: null, reason: "stale" }),
      "the helper's lease ran out": view(ME, 3, { isSelf: false, leaseMs: null, reason: LEASE_LAPSED }),
    };
    for (const [what, ending] of Object.entries(endings)) {
      const [state, made] = run([view(ME, 3), ending]);
      assert.deepEqual(made.slice(0, 2), [
        [PROMOTE, 3],
        [DEMOTE, 3],
      ], what);
      assert.equal(state.leading, null, what);
      // And not again while it does not lead.
      assert.deepEqual(run([ending, view(null, 5), view(2, 4, { state: "stale" })], state)[1], [], what);
    }
  });

  test("the demotion carries the view that ended it", () => {
    const [state] = run([view(ME, 3)]);
    assert.deepEqual(decideFollow(state, view(2, 4))[1], [
      { kind: DEMOTE, leader: view(2, 4), term: 3 },
      { kind: FOLLOW, leader: view(2, 4), term: 4 },
    ]);
  });

  test("re-elected under a newer term: demoted, then promoted", () => {
    assert.deepEqual(run([view(ME, 3), view(ME, 5)])[1], [
      [PROMOTE, 3],
      [DEMOTE, 3],
      [PROMOTE, 5],
    ]);
  });

  test("back under the same term after a lapse: promoted again", () => {
    const lapsed = view(ME, 3, { isSelf: false, leaseMs: null, reason: "the lease ran out" });
    assert.deepEqual(run([view(ME, 3), lapsed, view(ME, 3)])[1], [
      [PROMOTE, 3],
      [DEMOTE, 3],
      [PROMOTE, 3],
    ]);
  });

  test("no promotion under an older term, or without one", () => {
    let [state, made] = run([view(2, 5), view(ME, 4)]);
    assert.deepEqual(made, [
      [DEMOTE, 5],
      [FOLLOW, 5],
    ]);
    assert.equal(
      state.refused,
      "the agent says this node leads under term 4, older than term 5 already seen: not promoting",
    );
    [state, made] = run([view(ME, null)], state);
    assert.deepEqual(made, []);
    assert.match(state.refused ?? "", /gives no term/);
    [state, made] = run([view(ME, 6)], state);
    assert.deepEqual(made, [[PROMOTE, 6]]);
    assert.equal(state.refused, null);
  });

  test("a leader told it leads under an older term stands down, told why", () => {
    const [led] = run([view(ME, 3)]);
    const [state, actions] = decideFollow(led, view(ME, 2));
    assert.deepEqual(
      actions.map((a) => [a.kind, a.term]),
      [[DEMOTE, 3]],
    );
    assert.equal(actions[0]?.leader.isSelf, false);
    assert.equal(actions[0]?.leader.reason, state.refused);
    assert.match(whyNotLeading(actions[0]!.leader), /older than term 3 already seen/);
  });

  test("following follows a current view of another seat, under no older term", () => {
    const [state] = run([view(2, 4)]);
    assert.deepEqual(run([view(2, 4, { state: "stale" })], state)[1], []);
    assert.deepEqual(run([view(3, 5)], state)[1], [[FOLLOW, 5]]);
    assert.deepEqual(run([view(3, 3)], state)[1], [], "an older term than one seen");
    // The leader moved (its gateway URL while its tunnel is down): followed there.
    assert.deepEqual(run([view(2, 4, { address: "https://gw/2" })], state)[1], [[FOLLOW, 4]]);
    assert.deepEqual(run([view(2, 4, { state: "stale" }), view(2, 4)], state)[1], []);
  });

  test("this node's own seat is never followed", () => {
    let [state, made] = run([view(ME, 3, { isSelf: false, leaseMs: null, reason: "unhealthy: redis" })]);
    assert.deepEqual(made, [[DEMOTE, 3]]);
    assert.equal(state.following, null);
    const known = { ...INITIAL_FOLLOW_STATE, seat: ME };
    [state, made] = run([view(ME, 3, { isSelf: false, leaseMs: null })], known);
    assert.deepEqual(made, [[DEMOTE, 3]]);
    assert.equal(state.following, null);
  });

  test("following after leading follows again", () => {
    assert.deepEqual(run([view(2, 4), view(ME, 5), view(2, 6)])[1], [
      [DEMOTE, 4],
      [FOLLOW, 4],
      [PROMOTE, 5],
      [DEMOTE, 5],
      [FOLLOW, 6],
    ]);
  });

  test("why a node does not lead, in a sentence", () => {
    assert.equal(whyNotLeading(view(null, 4)), "the cluster has no leader");
    assert.equal(
      whyNotLeading(view(null, 4, { refusedSeat: 2, reason: "signature" })),
      "this node refuses seat 2, elected leader (signature)",
    );
    assert.equal(
      whyNotLeading(view(ME, 3, { isSelf: false, reason: "the lease ran out" })),
      "this node is the seat named leader but does not lead (the lease ran out)",
    );
    assert.equal(
      whyNotLeading(view(2, 4, { state: "stale" })),
      "node 2 leads, but this node's view of it is stale",
    );
  });

  test("the rules hold over random histories", () => {
    // mulberry32: the same histories on every run.
    let seed = 7;
    const rand = () => {
      seed = (seed + 0x6d2b79f5) | 0;
      let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
    const pick = <T>(items: readonly T[]): T => items[Math.floor(rand() * items.length)] as T;
    const randomView = (): Leader => {
      const token = pick([null, ME, 2, 3]);
      const term = rand() < 0.1 ? pick([null, 1, 2, 3, 4, 5, 6]) : 1 + Math.floor(rand() * 6);
      const fields: Partial<LeaderFields> = {};
      if (token === ME && rand() < 0.3) {
        const reason = pick(["the lease ran out", LEASE_LAPSED]);
        Object.assign(fields, { isSelf: false, leaseMs: null, reason });
      }
      if (rand() < 0.2) Object.assign(fields, { state: pick(["stale", "unknown"] as const) });
      if (token !== null && token !== ME && rand() < 0.2) {
        Object.assign(fields, { address: `https://gw/${token}` });
      }
      if (token === null && rand() < 0.3) Object.assign(fields, { refusedSeat: 2, reason: "signature" });
      return view(token, term, fields);
    };
    for (let n = 0; n < 2000; n++) {
      let state: FollowState = { ...INITIAL_FOLLOW_STATE, seat: pick([null, ME]) };
      const views = Array.from({ length: 1 + Math.floor(rand() * 12) }, randomView);
      const made: FollowAction[] = [];
      let seen: number | null = null;
      views.forEach((v, i) => {
        const before = state;
        const [next, actions] = decideFollow(state, v);
        state = next;
        assert.deepEqual(decideFollow(state, v), [state, []], "a repeated view called back");
        if (i === 0) assert.ok(actions[0]?.kind === PROMOTE || actions[0]?.kind === DEMOTE);
        for (const a of actions) {
          if (a.kind === PROMOTE) {
            assert.ok(v.isSelf && a.term === v.term && a.term !== null);
            assert.ok(seen === null || a.term >= seen, "promoted under an older term than seen");
          }
          if (a.kind === FOLLOW) {
            assert.ok(!a.leader.isSelf && a.leader.state === "current" && a.leader.tokenId !== ME);
          }
        }
        made.push(...actions);
        if (v.term !== null) seen = seen === null ? v.term : Math.max(seen, v.term);
        assert.equal(state.term, seen);
        assert.equal(state.leading !== null, v.isSelf && state.refused === null);
        if (before.leading !== null && state.leading !== before.leading) {
          assert.deepEqual([actions[0]?.kind, actions[0]?.term], [DEMOTE, before.leading]);
        }
      });
      const terms = made.flatMap((a) => (a.term === null ? [] : [a.term]));
      const sorted = [...terms].sort((a, b) => a - b);
      assert.deepEqual(terms, sorted, "a callback for an older term than one acted on");
      // A promotion is followed by exactly one demotion before the next promotion.
      const kinds = made.filter((a) => a.kind !== FOLLOW).map((a) => a.kind);
      kinds.forEach((kind, j) => {
        if (kind !== PROMOTE) return;
        const rest = kinds.slice(j + 1);
        const upto = rest.includes(PROMOTE) ? rest.indexOf(PROMOTE) : rest.length;
        const demotions = rest.slice(0, upto).filter((k) => k === DEMOTE).length;
        assert.ok(demotions === 1 || (demotions === 0 && upto === rest.length), JSON.stringify(kinds));
      });
    }
  });
});

/** What the callbacks got, as [kind, seat, term, isSelf]. */
class Calls {
  got: [string, number | null, number | null, boolean][] = [];
  leaders: Leader[] = [];

  make(kind: string): (leader: Leader) => Promise<void> {
    return async (leader) => {
      await Promise.resolve();
      this.got.push([kind, leader.tokenId, leader.term, leader.isSelf]);
      this.leaders.push(leader);
    };
  }

  async wait(count: number, ms = 5000): Promise<void> {
    await waitFor(() => this.got.length >= count, `${count} calls (got ${JSON.stringify(this.got)})`, ms);
  }
}

function following(
  calls: Calls,
  options: { api?: string; sdk?: LeaderSource; logged?: string[]; backoff?: Backoff },
) {
  const logged = options.logged ?? [];
  return (signal: AbortSignal) =>
    followLeader(calls.make(PROMOTE), calls.make(DEMOTE), {
      onFollow: calls.make(FOLLOW),
      ...(options.sdk !== undefined ? { sdk: options.sdk } : { api: options.api ?? null }),
      signal,
      logger: { warn: (m) => logged.push(`WARNING ${m}`), info: () => {}, debug: () => {} },
      ...(options.backoff !== undefined ? { backoff: options.backoff } : {}),
    });
}

describe("followLeader", () => {
  test("follows, promotes and demotes with the agent", () =>
    withAgent("unix socket", async (agent) => {
      const calls = new Calls();
      const sdk = new DStackP2PSDK({ api: agent.api, logger: null });
      try {
        await running(following(calls, { sdk }), async () => {
          await calls.wait(2);
          assert.deepEqual(calls.got, [
            [DEMOTE, 2, 2, false],
            [FOLLOW, 2, 2, false],
          ]);
          agent.setLeader(leaderJson(1, { isSelf: true, term: 3 }));
          await calls.wait(3);
          assert.deepEqual(calls.got[2], [PROMOTE, 1, 3, true]);
          // Its lease ends while the contract still names it.
          agent.setLeader(leaderJson(1, { term: 3, reason: "the lease ran out" }));
          await calls.wait(4);
          assert.deepEqual(calls.got[3], [DEMOTE, 1, 3, false]);
          agent.setLeader(leaderJson(3, { term: 4 }));
          await calls.wait(5);
          assert.deepEqual(calls.got[4], [FOLLOW, 3, 4, false]);
          await delay(200);
          assert.equal(calls.got.length, 5);
        });
      } finally {
        sdk.close();
      }
    }));

  test("an agent restart with nothing changed calls nothing", () =>
    withAgent("loopback TCP", async (agent) => {
      const calls = new Calls();
      await running(following(calls, { api: agent.api }), async () => {
        await calls.wait(2);
        await agent.restart({ down: 0.3 });
        await waitFor(() => agent.eventsConnections === 2, "the stream followed again");
        await delay(200);
        assert.equal(calls.got.length, 2);
        agent.setLeader(leaderJson(3, { term: 3 }));
        await calls.wait(3);
        assert.deepEqual(calls.got[2], [FOLLOW, 3, 3, false]);
      });
    }));

  test("a leader renews its lease, and stands down when the agent is gone", () =>
    withAgent("unix socket", async (agent: FakeAgent) => {
      agent.leader = leaderJson(1, { isSelf: true, term: 2, leaseMs: 600 });
      const calls = new Calls();
      const logged: string[] = [];
      await running(following(calls, { api: agent.api, logged }), async () => {
        await calls.wait(1);
        assert.deepEqual(calls.got, [[PROMOTE, 1, 2, true]]);
        // Renewed well within each lease, though no event comes.
        await delay(1500);
        const renewals = agent.requests.filter((r) => r === "/v1/leader").length;
        assert.ok(renewals >= 4, JSON.stringify(agent.requests));
        assert.equal(calls.got.length, 1);
        // The agent stops: no renewal, no event. Standing down as the lease runs out.
        await agent.stop();
        await calls.wait(2, 2000);
        assert.deepEqual(calls.got[1], [DEMOTE, 1, 2, false]);
        assert.equal(calls.leaders[1]?.reason, LEASE_LAPSED);
        // Back, leading under the same term: its stream repeats nothing, so the helper asks.
        await agent.start();
        await calls.wait(3, 5000);
        assert.deepEqual(calls.got[2], [PROMOTE, 1, 2, true]);
      });
      assert.ok(logged.some((m) => m.includes("lease ran out with no renewal")), JSON.stringify(logged));
    }));

  test("a renewal answered after an event is not taken", async () => {
    let hear: ((leader: Leader) => unknown) | null = null;
    let asked = false;
    let answer: (() => void) | null = null;
    const fake: LeaderSource = {
      monitorLeader: async (callback, { signal }) => {
        hear = callback;
        callback(view(ME, 2, { leaseMs: 300 }));
        await new Promise((_, reject) => signal?.addEventListener("abort", () => reject(signal.reason)));
      },
      leader: async () => {
        asked = true;
        await new Promise<void>((resolve) => (answer = resolve));
        return view(ME, 2, { leaseMs: 5000 });
      },
      status: async () => {
        throw new Error("not asked here");
      },
    };
    const calls = new Calls();
    await running(following(calls, { sdk: fake }), async () => {
      await waitFor(() => asked, "a renewal", 2000);
      hear!(view(ME, 2, { isSelf: false, leaseMs: null, reason: "unhealthy: x" }));
      answer!();
      await calls.wait(2);
      await delay(300);
    });
    assert.deepEqual(calls.got, [
      [PROMOTE, 1, 2, true],
      [DEMOTE, 1, 2, false],
    ]);
  });

  test("an agent not up yet is waited for", () =>
    withAgent("unix socket", async (agent) => {
      await agent.stop();
      const calls = new Calls();
      const logged: string[] = [];
      await running(following(calls, { api: agent.api, logged }), async () => {
        await delay(300);
        assert.deepEqual(calls.got, []);
        await agent.start();
        await calls.wait(2);
      });
      assert.deepEqual(calls.got, [
        [DEMOTE, 2, 2, false],
        [FOLLOW, 2, 2, false],
      ]);
      const retried = (m: string) => m.startsWith("WARNING following the leader at") && m.includes("retry");
      assert.ok(logged.some(retried), JSON.stringify(logged));
    }));

  test("retries back off, and start again once the agent was followed", async () => {
    // Cannot be followed twice; then followed (one view) until the stream fails; then never again.
    const attempts: number[] = [];
    const fake: LeaderSource = {
      monitorLeader: async (callback) => {
        attempts.push(performance.now() / 1000);
        if (attempts.length === 3) {
          callback(view(2, 2));
          throw new ProtocolError(`the agent's "leader" event is not JSON`);
        }
        throw new AgentUnreachable("connection refused", { address: "the agent" });
      },
      leader: async () => {
        throw new AgentUnreachable("connection refused", { address: "the agent" });
      },
      status: async () => {
        throw new AgentUnreachable("connection refused", { address: "the agent" });
      },
    };
    const given: (number | "reset")[] = [];
    // Without jitter, keeping every delay it gives and when it was reset.
    const backoff = new (class extends Backoff {
      override next(): number {
        const d = super.next();
        given.push(d);
        return d;
      }
      override reset(): void {
        super.reset();
        given.push("reset");
      }
    })(0.02, 0.08, () => 1);
    const calls = new Calls();
    await running(following(calls, { sdk: fake, backoff }), async () => {
      await waitFor(() => attempts.length >= 7, "7 attempts", 5000);
    });
    // Doubling while the agent cannot be followed, from the start again after it was: 2 failures, then the
    // stream that carried a view, then 4 failures up to the cap.
    assert.deepEqual(given.slice(0, 7), [0.02, 0.04, "reset", 0.02, 0.04, 0.08, 0.08]);
    // The loop waited those delays (a timer fires no earlier than asked, give or take the clock's grain).
    [0.02, 0.04, 0.02, 0.04, 0.08, 0.08].forEach((d, i) => {
      const gap = attempts[i + 1]! - attempts[i]!;
      assert.ok(gap >= d - 0.005, `attempt ${i + 2} came ${gap} s after the one before, not ${d}`);
    });
    assert.deepEqual(calls.got, [
      [DEMOTE, 2, 2, false],
      [FOLLOW, 2, 2, false],
    ]);
  });

  test("what a callback throws rejects it", () =>
    withAgent("unix socket", async (agent) => {
      const broken = () => {
        throw new Error("the service's own bug");
      };
      await assert.rejects(within(5000, followLeader(() => {}, broken, { api: agent.api })), /own bug/);
    }));

  test("sdk and api are not both given", () =>
    withAgent("unix socket", async (agent) => {
      const sdk = new DStackP2PSDK({ api: agent.api });
      try {
        await assert.rejects(followLeader(() => {}, () => {}, { sdk, api: agent.api }), /not both/);
        await assert.rejects(followLeader(() => {}, "nope" as never), TypeError);
      } finally {
        sdk.close();
      }
    }));

  test("a refused promotion is said once", () =>
    withAgent("unix socket", async (agent) => {
      agent.leader = leaderJson(2, { term: 5 });
      const calls = new Calls();
      const logged: string[] = [];
      await running(following(calls, { api: agent.api, logged }), async () => {
        await calls.wait(2);
        agent.setLeader(leaderJson(1, { isSelf: true, term: 4 }));
        await agent.restart({ down: 0.2 });
        await delay(800);
        assert.equal(calls.got.length, 2);
      });
      const said = logged.filter((m) => m.includes("older than term 5 already seen: not promoting"));
      assert.equal(said.length, 1, JSON.stringify(logged));
    }));
});

/**
 * The scripts the namespace scenario runs (test/live/*.mjs), against the stand-in agent: their arguments,
 * their JSON lines and their exit codes, so that the scenario's failures are the agents' and not theirs.
 */

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import { CONTRACT, type FakeAgent, leaderJson, peerJson, waitFor } from "./fake-agent.js";
import { withAgent } from "./helpers.js";

const LIVE = fileURLToPath(new URL("../test/live/", import.meta.url));

interface Run {
  code: number | null;
  lines: Record<string, unknown>[];
  stderr: string;
}

/** Runs a live script with the agent's API in DSTACK_MESH_API, as the harness does; `during` runs meanwhile. */
function run(
  script: string,
  args: string[],
  api: string,
  during?: (lines: Record<string, unknown>[]) => Promise<void>,
): Promise<Run> {
  const child = spawn(process.execPath, [join(LIVE, script), ...args], {
    env: { PATH: process.env["PATH"] ?? "", DSTACK_MESH_API: api },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  const lines: Record<string, unknown>[] = [];
  child.stdout.on("data", (d: Buffer) => {
    stdout += d.toString();
    let nl: number;
    while ((nl = stdout.indexOf("\n")) >= 0) {
      lines.push(JSON.parse(stdout.slice(0, nl)) as Record<string, unknown>);
      stdout = stdout.slice(nl + 1);
    }
  });
  child.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.on("close", resolve));
  const timer = setTimeout(() => child.kill(), 20_000);
  return (async () => {
    try {
      await during?.(lines);
      const code = await exited;
      assert.equal(stdout, "", "every line of stdout is JSON, newline-terminated");
      return { code, lines, stderr };
    } finally {
      clearTimeout(timer);
      child.kill();
    }
  })();
}

function registrationFails(agent: FakeAgent, reason: string): void {
  Object.assign(agent.status.node, { registered: false, tokenId: null, registrationError: reason });
}

test("register_and_list prints the registration, the peers and the leader", () =>
  withAgent("unix socket", async (agent) => {
    agent.peers = [peerJson(2), peerJson(3, { address: "https://gw/3" }), peerJson(4, { address: null })];
    agent.leader = leaderJson(2, { term: 7 });
    const r = await run(
      "register_and_list.mjs",
      ["--contract", CONTRACT, "--mode", "wireguard", "--timeout", "5"],
      agent.api,
    );
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.lines, [
      {
        registered: true,
        peers: ["10.0.1.2", "https://gw/3"],
        detailed: [
          { tokenId: 2, address: "10.0.1.2", connection: "wireguard", healthy: true, leader: false },
          { tokenId: 3, address: "https://gw/3", connection: "tls-gateway", healthy: true, leader: false },
          { tokenId: 4, address: null, connection: "unreachable", healthy: false, leader: false },
        ],
        leader: {
          tokenId: 2,
          isSelf: false,
          address: "10.0.1.2",
          term: 7,
          state: "current",
          healthy: true,
          reason: null,
        },
      },
    ]);
  }));

test("register_and_list --expect-error passes on the agent's reason, and fails when there is none", () =>
  withAgent("loopback TCP", async (agent) => {
    const reason = `no seat is bound to this instance: meshctl mint --contract ${CONTRACT} --instance ab12cd34`;
    registrationFails(agent, reason);
    let r = await run(
      "register_and_list.mjs",
      ["--contract", CONTRACT, "--timeout", "5", "--expect-error"],
      agent.api,
    );
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.lines, [{ error_type: "RegistrationError", message: reason }]);

    Object.assign(agent.status.node, { registered: true, registrationError: null });
    r = await run(
      "register_and_list.mjs",
      ["--contract", CONTRACT, "--timeout", "5", "--expect-error"],
      agent.api,
    );
    assert.equal(r.code, 1);
    assert.deepEqual(r.lines, [{ error_type: null, registered: true }]);
  }));

test("register_and_list prints an unreachable agent as an error and exits 1", () =>
  withAgent("unix socket", async (agent, dir) => {
    const r = await run("register_and_list.mjs", ["--contract", CONTRACT], join(dir, "none.sock"));
    assert.equal(r.code, 1);
    assert.equal(r.lines[0]?.["error_type"], "AgentUnreachable");
    assert.match(String(r.lines[0]?.["message"]), /no socket at/);
    assert.deepEqual(agent.requests, []);
  }));

test("mismatch prints ConfigMismatch naming both contracts, and fails when the contract is right", () =>
  withAgent("unix socket", async (agent) => {
    const other = "0x000000000000000000000000000000000000dEaD";
    let r = await run("mismatch.mjs", ["--contract", other], agent.api);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.lines.length, 1);
    assert.equal(r.lines[0]?.["error_type"], "ConfigMismatch");
    const message = String(r.lines[0]?.["message"]);
    // The agent's contract, as it serves it: in lower case.
    assert.ok(message.includes(other) && message.includes(CONTRACT.toLowerCase()), message);

    r = await run("mismatch.mjs", ["--contract", CONTRACT], agent.api);
    assert.equal(r.code, 1);
    assert.deepEqual(r.lines, [{ error_type: null, peers: ["10.0.1.2", "10.0.1.3"] }]);
  }));

test("monitor prints the peers and the leader, their changes, and a reconnection, then exits 0", () =>
  withAgent("unix socket", async (agent) => {
    const r = await run(
      "monitor.mjs",
      ["--seconds", "3", "--detailed", "--contract", CONTRACT],
      agent.api,
      async (lines) => {
        await waitFor(() => lines.length === 2, "the first peers and leader", 10_000);
        agent.setPeers([peerJson(2), peerJson(3), peerJson(4)]);
        await waitFor(() => lines.length === 3, "the join", 10_000);
        await agent.restart({ down: 0.3 });
        await waitFor(() => lines.length === 4, "the reconnection", 10_000);
        agent.setLeader(leaderJson(4, { term: 9 }));
        await waitFor(() => lines.length === 5, "the new leader", 10_000);
      },
    );
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(
      r.lines.map((l) => l["kind"]),
      ["peers", "leader", "peers", "reconnected", "leader"],
    );
    const [first, leader, joined, reconnected, next] = r.lines;
    assert.deepEqual(first?.["peers"], ["10.0.1.2", "10.0.1.3"]);
    assert.deepEqual((first?.["detailed"] as unknown[])[0], {
      tokenId: 2,
      address: "10.0.1.2",
      connection: "wireguard",
      healthy: true,
      leader: false,
    });
    assert.deepEqual(leader, {
      t: leader?.["t"],
      kind: "leader",
      tokenId: 2,
      isSelf: false,
      address: "10.0.1.2",
      term: 2,
      state: "current",
      healthy: true,
      reason: null,
    });
    assert.deepEqual(joined?.["peers"], ["10.0.1.2", "10.0.1.3", "10.0.1.4"]);
    assert.equal(typeof reconnected?.["t"], "number");
    assert.ok((reconnected?.["attempts"] as number) >= 1);
    assert.ok((reconnected?.["downSecs"] as number) >= 0.25);
    assert.match(String(reconnected?.["reason"]), /the agent ended the event stream/);
    assert.equal(next?.["term"], 9);
    assert.match(
      r.stderr,
      /WARNING lost the event stream of the dstack-mesh agent at unix socket .* \(from DSTACK_MESH_API\)/,
    );
    assert.match(r.stderr, /INFO reconnected to the dstack-mesh agent/);
  }));

test("monitor prints an error and exits 1 when the agent is not there", () =>
  withAgent("unix socket", async (_agent, dir) => {
    const r = await run("monitor.mjs", ["--seconds", "5"], join(dir, "none.sock"));
    assert.equal(r.code, 1);
    assert.deepEqual(
      r.lines.map((l) => [l["kind"], l["error_type"]]),
      [["error", "AgentUnreachable"]],
    );
  }));

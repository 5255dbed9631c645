/** register(): waiting for this node's record on-chain, and the agent's reason, verbatim, when it fails. */

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { RegistrationError } from "../dist/index.js";
import { CONTRACT } from "./fake-agent.js";
import { node, withAgent, withSdk, within } from "./helpers.js";

const NO_SEAT =
  `no seat of cluster ${CONTRACT} is bound to this instance (ab12cd34). The cluster owner mints one ` +
  `bound to it:\n    meshctl mint --contract ${CONTRACT} --to 0xHOLDER --instance ab12cd34`;
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

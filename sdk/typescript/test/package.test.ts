/** The package as its users import it: by name, through its exports map, with its version. */

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import * as sdk from "@dstack-mesh/sdk";

import { VERSION } from "../dist/index.js";

test("the package imports by its name, and its version is package.json's", () => {
  const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as {
    version: string;
    dependencies?: object;
  };
  assert.equal(VERSION, pkg.version);
  assert.equal(sdk.VERSION, pkg.version);
  assert.equal(pkg.dependencies, undefined, "the SDK has no runtime dependency");
  for (const name of [
    "DStackP2PSDK",
    "DStackP2PError",
    "AgentUnreachable",
    "AgentError",
    "ProtocolError",
    "ConfigMismatch",
    "RegistrationError",
    "Leader",
    "Peer",
    "overlayAddress",
    "seatOf",
    "followLeader",
    "decideFollow",
    "whyNotLeading",
  ]) {
    assert.equal(typeof (sdk as Record<string, unknown>)[name], "function", name);
  }
});

test("every error is a DStackP2PError and an Error, with its class's name", () => {
  const errors = [
    new sdk.AgentUnreachable("x", { address: "/a.sock" }),
    new sdk.AgentError(500, "x", { path: "/v1/peers" }),
    new sdk.ProtocolError("x"),
    new sdk.ConfigMismatch("x", { field: "mode", expected: "tls", actual: "wireguard" }),
    new sdk.RegistrationError("x"),
  ];
  for (const e of errors) {
    assert.ok(e instanceof sdk.DStackP2PError && e instanceof Error);
    assert.equal(e.name, e.constructor.name);
  }
});

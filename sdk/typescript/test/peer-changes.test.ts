/**
 * The one definition of "a peer changed", checked against the cases the agent's own test writes
 * (sdk/fixtures/peer_changes.json, from `Peer::change_key` in mesh-api): this SDK's `Peer.changeKey` must
 * agree with the agent's on every one.
 */

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { describe, test } from "node:test";

import { Peer } from "../dist/index.js";

// From test/ and from dist-test/ alike: both are in sdk/typescript.
const FIXTURE = fileURLToPath(new URL("../../fixtures/peer_changes.json", import.meta.url));

interface Case {
  readonly name: string;
  readonly old: unknown;
  readonly new: unknown;
  readonly changed: boolean;
}

function cases(): Case[] {
  const doc = JSON.parse(readFileSync(FIXTURE, "utf8")) as { cases?: unknown };
  assert.ok(Array.isArray(doc.cases), `${FIXTURE}: no list of cases`);
  return doc.cases as Case[];
}

describe("the peer changes the agent's test writes", () => {
  test("cover both answers", () => {
    const found = cases();
    assert.ok(found.length >= 10, `${FIXTURE} has ${found.length} cases; the agent's test writes at least 10`);
    assert.deepEqual(
      new Set(found.map((c) => c.changed)),
      new Set([true, false]),
      `${FIXTURE}: not both changed and unchanged cases`,
    );
  });

  for (const c of cases()) {
    test(`changeKey agrees: ${c.name}`, () => {
      const changed = Peer.fromJSON(c.old).changeKey() !== Peer.fromJSON(c.new).changeKey();
      assert.equal(
        changed,
        c.changed,
        `${c.name}: the agent says changed=${c.changed}, this SDK's changeKey says ${changed}`,
      );
    });
  }
});

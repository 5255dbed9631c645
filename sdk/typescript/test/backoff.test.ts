/**
 * Backoff: the SDK's one retry delay, which the event stream and followLeader wait with. The port of
 * sdk/python/tests/test_backoff.py.
 */

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { BACKOFF_MAX, BACKOFF_START, Backoff } from "../dist/index.js";

function delays(backoff: Backoff, n: number): number[] {
  return Array.from({ length: n }, () => backoff.next());
}

describe("Backoff", () => {
  test("doubles from its start up to its cap", () => {
    assert.deepEqual(delays(new Backoff(0.5, 10, () => 1), 7), [0.5, 1, 2, 4, 8, 10, 10]);
  });

  test("reset starts it again", () => {
    const backoff = new Backoff(1, 10, () => 1);
    assert.deepEqual(delays(backoff, 3), [1, 2, 4]);
    backoff.reset();
    assert.deepEqual(delays(backoff, 2), [1, 2]);
  });

  test("the jitter takes at most half of each delay", () => {
    assert.deepEqual(delays(new Backoff(1, 4, () => 0), 4), [0.5, 1, 2, 2]);
    const full = [1, 2, ...Array<number>(198).fill(4)];
    delays(new Backoff(1, 4), 200).forEach((d, i) => {
      assert.ok(full[i]! / 2 <= d && d <= full[i]!, `delay ${i} is ${d}`);
    });
  });

  test("a very long outage stays at the cap", () => {
    assert.equal(delays(new Backoff(0.2, 5, () => 1), 5000).at(-1), 5);
  });

  test("the event stream's defaults", () => {
    const want = [0, 1, 2, 3, 4].map((i) => BACKOFF_START * 2 ** i);
    assert.deepEqual(delays(new Backoff(undefined, undefined, () => 1), 6), [...want, BACKOFF_MAX]);
  });

  test("a cap below the start caps the first delay too", () => {
    assert.deepEqual(delays(new Backoff(0.5, 0.3, () => 1), 3), [0.3, 0.3, 0.3]);
  });

  test("a backoff that cannot back off is refused", () => {
    for (const [start, cap] of [
      [0, 1],
      [-1, 1],
      [1, 0],
    ] as const) {
      assert.throws(() => new Backoff(start, cap), /above 0/);
    }
  });
});

/**
 * The SDK's one retry delay: exponential, capped, with jitter. The event stream's reconnection,
 * {@link followLeader} and applications' own retries all wait with it.
 *
 *     const backoff = new Backoff(0.5, 10);
 *     for (;;) {
 *       try {
 *         await doIt();
 *       } catch {
 *         await sleep(backoff.next() * 1000);
 *         continue;
 *       }
 *       backoff.reset();
 *     }
 */

/** The event stream's reconnection delays: from BACKOFF_START seconds, doubling up to BACKOFF_MAX. */
export const BACKOFF_START = 0.2;
export const BACKOFF_MAX = 5.0;

/**
 * Exponential delays with "equal jitter": half the delay fixed, half random, so that many clients that
 * lost the same agent do not come back in step, and none retries at once.
 *
 * The n-th {@link Backoff.next} since the last {@link Backoff.reset} (from 0) is between half and all of
 * `min(cap, start * 2 ** n)` seconds (a cap below the start caps the first delay too). `rand`
 * (`Math.random` unless given) draws the jitter, in [0, 1): `() => 1` gives the plain doubling
 * `start, 2 * start, ...` up to `cap`.
 */
export class Backoff {
  private failures = 0;

  constructor(
    readonly start: number = BACKOFF_START,
    readonly cap: number = BACKOFF_MAX,
    private readonly rand: () => number = Math.random,
  ) {
    if (!(start > 0 && cap > 0)) {
      throw new RangeError(`a backoff needs a start and a cap above 0, not start ${start} and cap ${cap}`);
    }
  }

  /** The delay before the next attempt, in seconds; the one after is twice as long, up to the cap. */
  next(): number {
    const delay = Math.min(this.cap, this.start * 2 ** this.failures);
    // Bounded, so that 2 ** failures cannot overflow after a very long outage.
    this.failures = Math.min(this.failures + 1, 32);
    return delay / 2 + (this.rand() * delay) / 2;
  }

  /** After a success: the next delay is `start` again. */
  reset(): void {
    this.failures = 0;
  }
}

/**
 * Seats and overlay addresses: seat N of a cluster has the N-th host address of the cluster's mesh prefix.
 *
 *     overlayAddress("10.1.0.0/16", 300);      // "10.1.1.44"
 *     seatOf("10.1.0.0/16", "10.1.1.44");      // 300
 *
 * The prefix is the one the agent reports as `(await sdk.status()).chain.prefix`. The network and broadcast
 * addresses are never a seat's, so a prefix of length L holds 2^(32-L) - 2 seats, numbered from 1. The rules
 * and messages are the Python SDK's (`dstack_p2p.overlay`). A malformed argument throws a `TypeError`, a
 * well-formed one out of range (a length, a seat, an address) a `RangeError`, as Node's own APIs do.
 */

import { show } from "./show.js";

const SHORTEST = 8;
const LONGEST = 30;
const EXAMPLE = "such as 10.0.1.0/24";

// Exactly what Python's ipaddress takes for an IPv4 address (no leading zeros, no spaces), so both SDKs
// accept the same strings.
const OCTET = "(0|[1-9][0-9]{0,2})";
const ADDRESS = new RegExp(`^${OCTET}\\.${OCTET}\\.${OCTET}\\.${OCTET}$`);
const PREFIX = new RegExp(`^(${OCTET}\\.${OCTET}\\.${OCTET}\\.${OCTET})/(0|[1-9][0-9]?)$`);

interface Network {
  readonly base: number;
  readonly bits: number;
  /** How many addresses it spans, network and broadcast included. */
  readonly size: number;
}

/** The address as a number from 0 to 2^32 - 1, or `null` if it is not a dotted quad. */
function parseAddress(text: string): number | null {
  const m = ADDRESS.exec(text);
  if (m === null) return null;
  let value = 0;
  for (const octet of m.slice(1, 5)) {
    const n = Number(octet);
    if (n > 255) return null;
    // Multiplication, not <<: bitwise operators work on signed 32-bit numbers, and 128.0.0.0 is above them.
    value = value * 256 + n;
  }
  return value;
}

function formatAddress(value: number): string {
  const octets: number[] = [];
  for (let i = 0; i < 4; i++) {
    octets.unshift(value % 256);
    value = Math.floor(value / 256);
  }
  return octets.join(".");
}

function parseNetwork(prefix: unknown): Network {
  if (typeof prefix !== "string") {
    throw new TypeError(`prefix must be a string ${EXAMPLE}, not ${show(prefix)}`);
  }
  const m = PREFIX.exec(prefix);
  const base = m === null ? null : parseAddress(m[1] as string);
  if (m === null || base === null) {
    throw new TypeError(`prefix ${show(prefix)} is not an IPv4 prefix ${EXAMPLE}`);
  }
  const bits = Number(m[6]);
  if (bits < SHORTEST || bits > LONGEST) {
    throw new RangeError(`prefix ${prefix} is a /${bits}: a mesh prefix is from /${SHORTEST} to /${LONGEST}`);
  }
  const size = 2 ** (32 - bits);
  if (base % size !== 0) {
    const network = formatAddress(base - (base % size));
    throw new TypeError(`prefix ${prefix} has host bits set: its network is ${network}/${bits}`);
  }
  return { base, bits, size };
}

/**
 * The overlay address of seat `tokenId` in `prefix` (`"10.0.1.0/24"`, 1 → `"10.0.1.1"`).
 *
 * Throws a `TypeError` for a prefix that is not an IPv4 network address with its length, or a seat that is
 * not an integer; a `RangeError` for a length outside /8 to /30 (what the cluster contract takes), or a seat outside 1 to the capacity.
 */
export function overlayAddress(prefix: string, tokenId: number): string {
  const net = parseNetwork(prefix);
  if (typeof tokenId !== "number" || !Number.isInteger(tokenId)) {
    throw new TypeError(`tokenId must be an integer, not ${show(tokenId)}`);
  }
  const capacity = net.size - 2;
  if (tokenId < 1 || tokenId > capacity) {
    throw new RangeError(
      `seat ${tokenId} has no address in ${prefix}: a /${net.bits} holds seats 1 to ${capacity}`,
    );
  }
  return formatAddress(net.base + tokenId);
}

/**
 * The seat whose overlay address in `prefix` is `address` (`"10.0.1.0/24"`, `"10.0.1.1"` → 1).
 *
 * Throws as {@link overlayAddress} does for the prefix, a `TypeError` for an address that is not IPv4, and a
 * `RangeError` for one outside the prefix or its network or broadcast address, which no seat has.
 */
export function seatOf(prefix: string, address: string): number {
  const net = parseNetwork(prefix);
  if (typeof address !== "string") {
    throw new TypeError(`address must be a string such as 10.0.1.1, not ${show(address)}`);
  }
  const ip = parseAddress(address);
  if (ip === null) {
    throw new TypeError(`address ${show(address)} is not an IPv4 address such as 10.0.1.1`);
  }
  const seats = `${formatAddress(net.base + 1)} to ${formatAddress(net.base + net.size - 2)}`;
  const offset = ip - net.base;
  if (offset < 0 || offset >= net.size) {
    throw new RangeError(`address ${address} is outside ${prefix}, whose seats are ${seats}`);
  }
  if (offset === 0 || offset === net.size - 1) {
    const which = offset === 0 ? "network" : "broadcast";
    throw new RangeError(
      `address ${address} is the ${which} address of ${prefix}, which no seat has: its seats are ${seats}`,
    );
  }
  return offset;
}

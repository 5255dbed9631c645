/** Seats and overlay addresses: the edges of each prefix, and what is refused. The Python SDK's cases. */

import assert from "node:assert/strict";
import { test } from "node:test";

import { overlayAddress, seatOf } from "../dist/index.js";

type ErrorClass = typeof TypeError | typeof RangeError;

function throwsWith(f: () => unknown, kind: ErrorClass, message: string): void {
  assert.throws(f, (e: unknown) => {
    assert.ok(e instanceof kind, `${String(e)} is not a ${kind.name}`);
    assert.ok(e.message.includes(message), `${JSON.stringify(e.message)} lacks ${JSON.stringify(message)}`);
    return true;
  });
}

for (const [prefix, seat, address] of [
  ["10.0.1.0/24", 1, "10.0.1.1"],
  ["10.0.1.0/24", 254, "10.0.1.254"],
  ["10.1.0.0/16", 1, "10.1.0.1"],
  ["10.1.0.0/16", 255, "10.1.0.255"],
  ["10.1.0.0/16", 256, "10.1.1.0"],
  ["10.1.0.0/16", 300, "10.1.1.44"],
  ["10.1.0.0/16", 65534, "10.1.255.254"],
  ["192.168.4.0/22", 1022, "192.168.7.254"],
  // Above 2^31, where 32-bit bitwise arithmetic would go negative.
  ["200.1.0.0/16", 300, "200.1.1.44"],
  ["10.0.0.0/8", 16777214, "10.255.255.254"],
  ["10.0.1.8/30", 2, "10.0.1.10"],
] as const) {
  test(`seat ${seat} of ${prefix} is ${address}, and back`, () => {
    assert.equal(overlayAddress(prefix, seat), address);
    assert.equal(seatOf(prefix, address), seat);
  });
}

for (const [prefix, seat, message] of [
  ["10.0.1.0/24", 0, "seat 0 has no address in 10.0.1.0/24: a /24 holds seats 1 to 254"],
  ["10.0.1.0/24", 255, "seat 255 has no address in 10.0.1.0/24: a /24 holds seats 1 to 254"],
  ["10.0.1.0/24", -1, "seat -1 has no address in 10.0.1.0/24: a /24 holds seats 1 to 254"],
  ["10.1.0.0/16", 65535, "seat 65535 has no address in 10.1.0.0/16: a /16 holds seats 1 to 65534"],
  ["10.1.0.0/16", 2 ** 40, "a /16 holds seats 1 to 65534"],
  ["10.0.1.8/30", 3, "seat 3 has no address in 10.0.1.8/30: a /30 holds seats 1 to 2"],
] as const) {
  test(`a seat outside the prefix is refused with its capacity: ${seat} in ${prefix}`, () => {
    throwsWith(() => overlayAddress(prefix, seat), RangeError, message);
  });
}

for (const seat of [1.5, Number.NaN, Number.POSITIVE_INFINITY, "1", null, true, 1n]) {
  test(`a seat must be an integer: ${String(seat)}`, () => {
    throwsWith(() => overlayAddress("10.0.1.0/24", seat as number), TypeError, "tokenId must be an integer");
  });
}

for (const [prefix, kind, message] of [
  ["10.0.1.0/31", RangeError, "prefix 10.0.1.0/31 is a /31: a mesh prefix is from /8 to /30"],
  ["8.0.0.0/7", RangeError, "prefix 8.0.0.0/7 is a /7: a mesh prefix is from /8 to /30"],
  ["10.0.1.0/32", RangeError, "is a /32: a mesh prefix is from /8 to /30"],
  ["10.0.1.7/24", TypeError, "prefix 10.0.1.7/24 has host bits set: its network is 10.0.1.0/24"],
  ["10.1.1.0/16", TypeError, "prefix 10.1.1.0/16 has host bits set: its network is 10.1.0.0/16"],
  ["fd00::/64", TypeError, 'prefix "fd00::/64" is not an IPv4 prefix such as 10.0.1.0/24'],
  ["10.0.1.0", TypeError, 'prefix "10.0.1.0" is not an IPv4 prefix'],
  ["10.0.1.0/", TypeError, "is not an IPv4 prefix"],
  ["10.0.1.0/024", TypeError, "is not an IPv4 prefix"],
  ["10.0.1.0/255.255.255.0", TypeError, "is not an IPv4 prefix"],
  ["10.0.1/24", TypeError, "is not an IPv4 prefix"],
  ["10.0.256.0/24", TypeError, "is not an IPv4 prefix"],
  ["010.0.1.0/24", TypeError, "is not an IPv4 prefix"],
  [" 10.0.1.0/24", TypeError, "is not an IPv4 prefix"],
  ["", TypeError, 'prefix "" is not an IPv4 prefix'],
  [null, TypeError, "prefix must be a string such as 10.0.1.0/24, not null"],
] as const) {
  test(`a bad prefix is refused by both: ${String(prefix)}`, () => {
    throwsWith(() => overlayAddress(prefix as string, 1), kind, message);
    throwsWith(() => seatOf(prefix as string, "10.0.1.1"), kind, message);
  });
}

test("seatOf round-trips every seat of a /24 and a sample of a /16", () => {
  for (let seat = 1; seat <= 254; seat++) {
    assert.equal(seatOf("10.0.1.0/24", overlayAddress("10.0.1.0/24", seat)), seat);
  }
  const sample = [4096, 32767, 32768, 32769];
  for (let seat = 1; seat < 600; seat++) sample.push(seat);
  for (let seat = 65000; seat <= 65534; seat++) sample.push(seat);
  for (const seat of sample) {
    assert.equal(seatOf("10.1.0.0/16", overlayAddress("10.1.0.0/16", seat)), seat);
  }
});

for (const [prefix, address, kind, message] of [
  [
    "10.0.1.0/24",
    "10.0.1.0",
    RangeError,
    "address 10.0.1.0 is the network address of 10.0.1.0/24, which no seat has: " +
      "its seats are 10.0.1.1 to 10.0.1.254",
  ],
  ["10.0.1.0/24", "10.0.1.255", RangeError, "address 10.0.1.255 is the broadcast address of 10.0.1.0/24"],
  ["10.1.0.0/16", "10.1.0.0", RangeError, "the network address of 10.1.0.0/16"],
  [
    "10.1.0.0/16",
    "10.1.255.255",
    RangeError,
    "the broadcast address of 10.1.0.0/16, which no seat has: its seats are 10.1.0.1 to 10.1.255.254",
  ],
  [
    "10.0.1.0/24",
    "10.0.2.1",
    RangeError,
    "address 10.0.2.1 is outside 10.0.1.0/24, whose seats are 10.0.1.1 to 10.0.1.254",
  ],
  ["10.0.1.0/24", "10.0.0.255", RangeError, "address 10.0.0.255 is outside 10.0.1.0/24"],
  ["10.1.0.0/16", "10.2.0.1", RangeError, "address 10.2.0.1 is outside 10.1.0.0/16"],
  [
    "10.0.1.0/24",
    "10.0.1.1/32",
    TypeError,
    'address "10.0.1.1/32" is not an IPv4 address such as 10.0.1.1',
  ],
  ["10.0.1.0/24", "::1", TypeError, 'address "::1" is not an IPv4 address'],
  ["10.0.1.0/24", "10.0.1.01", TypeError, "is not an IPv4 address"],
  ["10.0.1.0/24", 1, TypeError, "address must be a string such as 10.0.1.1, not 1"],
] as const) {
  test(`seatOf refuses what no seat has: ${String(address)} in ${prefix}`, () => {
    throwsWith(() => seatOf(prefix, address as string), kind, message);
  });
}

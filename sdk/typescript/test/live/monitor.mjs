#!/usr/bin/env node
// Follows the peers and the leader, one JSON line per callback, for --seconds (default 120).
//
//     DSTACK_MESH_API=/path/api.sock node monitor.mjs [--seconds N] [--contract 0x...] [--detailed]
//
// Lines: {"t", "kind": "peers", "peers": [addresses]} on each change of the peer list (with --detailed,
// "detailed": [{tokenId, address, connection, healthy, leader}] too), {"t", "kind": "leader", "tokenId", "isSelf",
// "address", "term", "state", "healthy", "reason"} on each change of the leader (its lease and term
// included), and {"kind": "reconnected", "t", "attempts", "downSecs", "reason"} from the SDK's onReconnect
// hook. The SDK's log records (the stream lost, back) go to stderr. Exits 0 after N seconds; on an error,
// prints {"kind": "error", "error_type", "message"} and exits 1.

import { parseArgs } from "node:util";

import { DStackP2PError, DStackP2PSDK, addresses } from "../../dist/index.js";
import { emit, error, leaderJson, peerJson, seconds, stderrLogger } from "./_live.mjs";

const { values: args } = parseArgs({
  options: {
    seconds: { type: "string", default: "120" },
    contract: { type: "string" },
    detailed: { type: "boolean", default: false },
  },
});
const duration = seconds("seconds", args.seconds);
const now = () => Date.now() / 1000;

const onPeers = (peers) => emit({ t: now(), kind: "peers", peers });
const onDetailed = (peers) =>
  emit({ t: now(), kind: "peers", peers: addresses(peers), detailed: peers.map(peerJson) });
const onLeader = (leader) => emit({ t: now(), kind: "leader", ...leaderJson(leader) });
const onReconnect = (info) =>
  emit({
    kind: "reconnected",
    t: now(),
    attempts: info.attempts,
    downSecs: info.downSecs,
    reason: info.reason,
  });

async function main() {
  const sdk = new DStackP2PSDK(args.contract ?? null, null, { logger: stderrLogger });
  const controller = new AbortController();
  const finished = new Error(`ran for ${duration} s`);
  // A timer of our own rather than AbortSignal.timeout, whose timer does not keep the process alive.
  const timer = setTimeout(() => controller.abort(finished), duration * 1000);
  const signal = controller.signal;
  try {
    if (args.detailed) {
      await sdk.monitorPeers(onDetailed, { onLeader, detailed: true, onReconnect, signal });
    } else {
      await sdk.monitorPeers(onPeers, { onLeader, onReconnect, signal });
    }
  } catch (e) {
    // The monitor only ever ends with an error: this one is the normal end.
    if (e === finished) return 0;
    if (!(e instanceof DStackP2PError)) throw e;
    emit({ kind: "error", ...error(e) });
    return 1;
  } finally {
    clearTimeout(timer);
    sdk.close();
  }
}

process.exitCode = await main();

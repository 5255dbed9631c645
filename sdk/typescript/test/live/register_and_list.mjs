#!/usr/bin/env node
// Waits for registration, then prints the peers and the leader as one JSON line.
//
//     DSTACK_MESH_API=/path/api.sock node register_and_list.mjs --contract 0x... [--timeout S] [--expect-error]
//
// Prints {"registered", "peers", "detailed", "leader"}. With --expect-error, register() must throw
// RegistrationError: prints {"error_type": "RegistrationError", "message"} and exits 0, or exits 1 after
// printing {"error_type": null} (or the other error's type) when it did not.

import { parseArgs } from "node:util";

import { DStackP2PError, DStackP2PSDK, RegistrationError, addresses } from "../../dist/index.js";
import { emit, error, leaderJson, mode, peerJson, seconds, stderrLogger } from "./_live.mjs";

const { values: args } = parseArgs({
  options: {
    contract: { type: "string" },
    mode: { type: "string" },
    timeout: { type: "string", default: "120" },
    "expect-error": { type: "boolean", default: false },
  },
});
if (!args.contract) {
  console.error("--contract is required");
  process.exit(2);
}
const timeout = seconds("timeout", args.timeout);

async function main() {
  const sdk = new DStackP2PSDK(args.contract, mode(args.mode), { logger: stderrLogger });
  try {
    if (args["expect-error"]) {
      let registered;
      try {
        registered = await sdk.register({ timeout });
      } catch (e) {
        emit(error(e));
        if (e instanceof RegistrationError) return 0;
        if (e instanceof DStackP2PError) return 1;
        throw e;
      }
      emit({ error_type: null, registered });
      return 1;
    }

    let registered, detailed, peers, leader;
    try {
      registered = await sdk.register({ timeout });
      // Two reads: the list may change between them, so read again until they agree.
      for (let i = 0; i < 5; i++) {
        detailed = await sdk.peers();
        peers = await sdk.getPeers();
        if (JSON.stringify(peers) === JSON.stringify(addresses(detailed))) break;
        await new Promise((r) => setTimeout(r, 200));
      }
      leader = await sdk.leader();
    } catch (e) {
      if (!(e instanceof DStackP2PError)) throw e;
      emit(error(e));
      return 1;
    }
    emit({ registered, peers, detailed: detailed.map(peerJson), leader: leaderJson(leader) });
    return 0;
  } finally {
    sdk.close();
  }
}

process.exitCode = await main();

#!/usr/bin/env node
// Calls getPeers() with a contract the agent does not serve and prints the error as one JSON line.
//
//     DSTACK_MESH_API=/path/api.sock node mismatch.mjs --contract 0x...
//
// Prints {"error_type": "ConfigMismatch", "message"} and exits 0. Any other error is printed the same way
// with exit 1; so is {"error_type": null, "peers"} when getPeers() did not throw.

import { parseArgs } from "node:util";

import { ConfigMismatch, DStackP2PError, DStackP2PSDK } from "../../dist/index.js";
import { emit, error, mode } from "./_live.mjs";

const { values: args } = parseArgs({
  options: {
    contract: { type: "string" },
    mode: { type: "string" },
  },
});
if (!args.contract) {
  console.error("--contract is required");
  process.exit(2);
}

async function main() {
  const sdk = new DStackP2PSDK(args.contract, mode(args.mode));
  try {
    const peers = await sdk.getPeers();
    emit({ error_type: null, peers });
    return 1;
  } catch (e) {
    if (!(e instanceof DStackP2PError)) throw e;
    emit(error(e));
    return e instanceof ConfigMismatch ? 0 : 1;
  } finally {
    sdk.close();
  }
}

process.exitCode = await main();

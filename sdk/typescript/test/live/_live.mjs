// What the live scripts share: printing one JSON object per line, and the SDK's log on stderr.
//
// The namespace scenario (netns-tests/tests/scenarios/sdk_typescript.rs) runs these with `node`, with the agent's API in
// DSTACK_MESH_API, against the SDK built in ../../dist (`npm ci && npm run build` in sdk/typescript).

/** One JSON object on one line of stdout, at once, so the harness sees it as it happens. */
export function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

export function error(e) {
  return { error_type: e?.name ?? typeof e, message: e instanceof Error ? e.message : String(e) };
}

export function leaderJson(leader) {
  return {
    tokenId: leader.tokenId,
    isSelf: leader.isSelf,
    address: leader.address,
    term: leader.term,
    state: leader.state,
    healthy: leader.healthy,
    reason: leader.reason,
  };
}

export function peerJson(peer) {
  return {
    tokenId: peer.tokenId,
    address: peer.address,
    connection: peer.connection,
    healthy: peer.healthy,
    leader: peer.leader,
  };
}

/** The SDK's log records (lost stream, reconnected) on stderr, beside the harness's own logs. */
export const stderrLogger = {
  warn: (m) => console.error(`${new Date().toISOString()} dstack-mesh WARNING ${m}`),
  info: (m) => console.error(`${new Date().toISOString()} dstack-mesh INFO ${m}`),
  debug: () => {},
};

/** A number of seconds from an option, or exits 2 saying which option is wrong. */
export function seconds(name, value) {
  const n = Number(value);
  if (value === undefined || value === "" || !Number.isFinite(n) || n < 0) {
    console.error(`--${name} takes a number of seconds, not ${JSON.stringify(value)}`);
    process.exit(2);
  }
  return n;
}

export const MODES = ["wireguard", "tls"];

export function mode(value) {
  if (value !== undefined && !MODES.includes(value)) {
    console.error(`--mode takes one of ${MODES.join(", ")}, not ${JSON.stringify(value)}`);
    process.exit(2);
  }
  return value ?? null;
}

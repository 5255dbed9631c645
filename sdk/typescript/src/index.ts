/**
 * TypeScript SDK of the dstack-mesh agent's local API.
 *
 *     const sdk = new DStackP2PSDK(contract, "wireguard");
 *     await sdk.register();
 *     const peers = await sdk.getPeers();
 */

export { BACKOFF_MAX, BACKOFF_START, Backoff } from "./backoff.js";
export {
  DStackP2PSDK,
  MAX_HEALTH_REASON,
  MODES,
  type DStackP2PSDKOptions,
  type Mode,
  type MonitorLeaderOptions,
  type MonitorPeersOptions,
  type RegisterOptions,
  type SetHealthyOptions,
} from "./client.js";
export { ApiEndpoint, DEFAULT_SOCKET, DEFAULT_URL, ENV_VAR, parseApi, resolveApi } from "./endpoint.js";
export {
  AgentError,
  AgentUnreachable,
  ConfigMismatch,
  DStackP2PError,
  ProtocolError,
  RegistrationError,
} from "./errors.js";
export { SSEDecoder, iterEvents, type ServerSentEvent } from "./events.js";
export {
  DEMOTE,
  FOLLOW,
  INITIAL_FOLLOW_STATE,
  LEASE_LAPSED,
  PROMOTE,
  decideFollow,
  followKey,
  followLeader,
  whyNotLeading,
  type FollowAction,
  type FollowKind,
  type FollowLeaderOptions,
  type FollowState,
  type LeaderSource,
} from "./follow.js";
export {
  AppHealth,
  CONNECTION_TLS_GATEWAY,
  CONNECTION_UNREACHABLE,
  CONNECTION_WIREGUARD,
  ChainInfo,
  Health,
  HealthCheck,
  LEADER_CURRENT,
  LEADER_STALE,
  LEADER_STATES,
  LEADER_UNKNOWN,
  Leader,
  NodeInfo,
  Peer,
  PeerRelayStatus,
  Reconnected,
  Status,
  addresses,
  leaderKey,
  peersFromJSON,
  type LeaderState,
} from "./models.js";
export { PROTOCOLS, PeerPolicy, PolicyDrops, PolicyStatus, Ports, type Protocol } from "./policy.js";
export { type Logger } from "./monitor.js";
export { overlayAddress, seatOf } from "./overlay.js";
export { VERSION } from "./version.js";

//! The agent's local API, for applications inside the TEE and for `meshctl status`: HTTP/1.1 on a unix
//! socket (default [`DEFAULT_SOCKET`], mode 0660), JSON with camelCase fields, read-only.
//!
//! | path | what |
//! |---|---|
//! | `GET /v1/status` | this node, the chain head and the last processed block, the backend, uptime ([`Status`]) |
//! | `GET /v1/peers` | every peer with its connection kind, handshake and transfer ([`Peer`]) |
//! | `GET /v1/peers/watch` | server-sent events: one `peers` event with the full list per peer-set change |
//! | `GET /metrics` | Prometheus text |
//!
//! - [`types`]: what the API serves (serde types only);
//! - [`metrics`]: the Prometheus rendering;
//! - [`server`]: serving a [`Snapshot`] the agent publishes;
//! - [`client`]: reading it.

pub mod client;
pub mod metrics;
pub mod server;
pub mod types;

pub use client::{ClientError, get, get_text};
pub use metrics::metrics;
pub use server::serve;
pub use types::*;

//! The agent's local API, for applications inside the TEE and for `meshctl status`: HTTP/1.1 on a unix
//! socket (default [`DEFAULT_SOCKET`], mode 0660), JSON with camelCase fields, read-only.
//!
//! | path | what |
//! |---|---|
//! | `GET /v1/status` | this node, the chain head and the last processed block, the backend, uptime ([`Status`]) |
//! | `GET /v1/peers` | every peer with its connection kind, handshake and transfer ([`Peer`]) |
//! | `GET /v1/peers/watch` | server-sent events: one `peers` event with the full list per peer-set change |
//! | `GET /healthz` | 200 when registered and every peer is reachable somehow, else 503 with the reasons ([`Health`]) |
//! | `GET /metrics` | Prometheus text (also alone on `--metrics-listen`) |
//!
//! The same API is served on TCP with `--api-listen` (loopback, for applications in the agent's network
//! namespace).
//!
//! - [`types`]: what the API serves (serde types only);
//! - [`health`]: whether the node is a working member, for `/healthz` and `meshctl status --check`;
//! - [`metrics`]: the Prometheus rendering;
//! - [`server`]: serving a [`Snapshot`] the agent publishes;
//! - [`client`]: reading it.

pub mod client;
pub mod health;
pub mod metrics;
pub mod server;
pub mod types;

pub use client::{ApiAddr, ApiArgs, ClientError, get, get_text};
pub use health::{Health, assess};
pub use metrics::metrics;
pub use server::{Listener, Routes, serve};
pub use types::*;

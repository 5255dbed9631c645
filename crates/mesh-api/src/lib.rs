//! The agent's local API, for applications inside the TEE and for `meshctl status`: HTTP/1.1 on a unix
//! socket (default [`DEFAULT_SOCKET`], mode 0660), JSON with camelCase fields, read-only but for the
//! application's health report.
//!
//! | path | what |
//! |---|---|
//! | `GET /v1/status` | this node, the chain head and the last processed block, the backend, uptime ([`Status`]) |
//! | `GET /v1/peers` | every peer with its connection kind, handshake and transfer ([`Peer`]) |
//! | `GET /v1/leader` | the cluster's leader as this node sees it: seat, instance, address, whether this node leads under a lease that holds now, whether it is reachable, the fencing term, how fresh this is ([`Leader`]) |
//! | `GET /v1/health`, `POST /v1/health` | whether this node is fit to lead: the application's report and the agent's check ([`signal::HealthSignal`]); the application reports with POST ([`signal::AppReport`]) |
//! | `GET /v1/events` | server-sent events: a `peers` event (the full list) and a `leader` event first, then one of each kind whenever what applications act on changes (who is there, their address, connection, path, health; who leads) |
//! | `GET /v1/peers/watch` | server-sent events: a `peers` event on every change of the list, counters included |
//! | `GET /healthz` | 200 when registered and every peer is reachable somehow, else 503 with the reasons ([`Health`]) |
//! | `GET /metrics` | Prometheus text (also alone on `--metrics-listen`) |
//!
//! The same API is served on TCP with `--api-listen` (loopback, for applications in the agent's network
//! namespace).
//!
//! - [`types`]: what the API serves (serde types only);
//! - [`health`]: whether the node is a working member, for `/healthz` and `meshctl status --check`;
//! - [`metrics`]: the Prometheus rendering, with [`latency`]'s histograms;
//! - [`signal`]: the application's health signal, which leadership depends on;
//! - [`server`]: serving a [`Snapshot`] the agent publishes;
//! - [`client`]: reading it: [`Client`] for applications;
//! - [`events`]: the server-sent events as a client parses them.

pub mod client;
pub mod events;
pub mod forwarded;
pub mod health;
pub mod latency;
pub mod metrics;
pub mod page;
pub mod readers;
pub mod server;
pub mod signal;
pub mod types;

pub use client::{ApiAddr, ApiArgs, Client, ClientError, EventStream, get, get_text, post};
pub use events::Event;
pub use forwarded::{ForwardCounts, ForwardedPort, PortRole, RouteCounts};
pub use health::{Health, assess};
pub use metrics::metrics;
pub use readers::Readers;
pub use server::{Command, Listener, MAX_STREAMS, Routes, Source, serve};
pub use signal::{AppReport, CheckKind, CheckSignal, HealthSignal};
pub use types::*;

//! Forwarded ports: a TCP port on every node that reaches the current leader's service (or a replica's), so
//! that a client (an ORM, `psql`, a Redis client) needs no leader logic at all. A leader port is fenced by the
//! leader term:
//!
//! - [`gate`]: where a connection goes, and whether an open one may go on (pure);
//! - [`forward`]: the listeners, and the connections carried along their route until it stops holding.

pub mod forward;
pub mod gate;

pub use forward::{Port, Stats, accept, forward, serve};
pub use gate::{Member, Ports, Refusal, Route, View};

//! What a scenario imports: `use netns_tests::prelude::*;`.

pub use crate::net::netns::NetNs;
pub use crate::net::ping::*;
pub use crate::net::uplink::lan_ip;
pub use crate::run::process::{tail, workspace_bin};
pub use crate::run::steps::Steps;
pub use crate::run::wait::wait_until;
pub use crate::system::agent::*;
pub use crate::system::apps::{App, http, python, require_chromium, run_script};
pub use crate::system::cluster::*;
pub use crate::system::gateway::{Gateway, TEST_DOMAIN, UdpBlock, relay_routes};
pub use crate::system::lan::*;
pub use crate::system::leadership::{LeaderSampler, Samples};
pub use crate::system::liveness::{Health, HealthSampler};
pub use crate::system::term_echo::{LineClient, TermEcho, reaches};
pub use mesh_wg::Key;

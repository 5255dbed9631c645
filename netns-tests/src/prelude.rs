//! What a scenario imports: `use netns_tests::prelude::*;`.

pub use crate::agent::*;
pub use crate::apps::{App, http, python, run_script};
pub use crate::cluster::*;
pub use crate::gateway::{Gateway, TEST_DOMAIN, UdpBlock, relay_routes};
pub use crate::lan::*;
pub use crate::leadership::{LeaderSampler, Samples};
pub use crate::liveness::{Health, HealthSampler};
pub use crate::netns::NetNs;
pub use crate::ping::*;
pub use crate::process::{tail, workspace_bin};
pub use crate::steps::Steps;
pub use crate::wait::wait_until;
pub use mesh_wg::Key;

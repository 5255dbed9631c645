//! One module per subcommand.

pub(crate) mod app_auth;
pub(crate) mod config;
pub(crate) mod deploy;
pub(crate) mod fund;
pub(crate) mod leader;
pub(crate) mod peers;
pub(crate) mod relay;
pub(crate) mod seat;
pub(crate) mod status;

//! One module per subcommand.

pub(crate) mod app_auth;
pub(crate) mod config;
pub(crate) mod deploy;
pub(crate) mod dispute;
pub(crate) mod drain;
pub(crate) mod fund;
pub(crate) mod leader;
pub(crate) mod owner;
pub(crate) mod peers;
pub(crate) mod policy;
pub(crate) mod relay;
pub(crate) mod requests;
pub(crate) mod seat;
pub(crate) mod status;
pub(crate) mod tcb;

/// The text of `path`, or of stdin for `-`: what an agent printed for the operator to pass on.
pub(crate) fn read_input(path: &std::path::Path, what: &str) -> anyhow::Result<String> {
    use anyhow::Context as _;
    use std::io::Read as _;
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .with_context(|| format!("reading {what} from stdin"))?;
        Ok(s)
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {what} {}", path.display()))
    }
}

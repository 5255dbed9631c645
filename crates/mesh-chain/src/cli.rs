//! The provider flags that `p2p-agent` and `meshctl` share: which RPC providers the chain is reached
//! through, and how many of them must agree. Both build the one handle ([`Rpcs`]) from them.

use alloy::transports::http::reqwest::Url;

use crate::rpc::{Rpcs, RpcsError};

/// The heading the flags are listed under in every binary's `--help`.
const HEADING: &str = "Chain providers";

/// `--rpc-url` and `--rpc-quorum`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProviderArgs {
    /// The chain's JSON-RPC URL, http(s):// or ws(s)://. Give several providers (repeat the flag, or
    /// separate URLs with commas): every read that something is decided on (the view, votes, holders, the
    /// owner, seat requests, records, receipts) is taken only where --rpc-quorum of them answer alike, and
    /// every transaction is signed once and sent to all of them, so that one provider down, hanging,
    /// censoring or lying is outvoted and named in the status. With one, what it says is taken unverified.
    #[arg(
        long = "rpc-url",
        env = "DSTACK_MESH_RPC_URL",
        value_name = "URL",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8545",
        help_heading = HEADING
    )]
    pub rpc_urls: Vec<Url>,
    /// With several --rpc-url providers, how many must answer a read alike: more than half of them (the
    /// default), up to all.
    #[arg(long, env = "DSTACK_MESH_RPC_QUORUM", value_name = "N", help_heading = HEADING)]
    pub rpc_quorum: Option<usize>,
}

impl ProviderArgs {
    /// The one handle on the providers: connected once, shared by whatever reads or sends.
    ///
    /// # Errors
    /// [`RpcsError`]: a repeated URL, one of another scheme, or a quorum that is not more than half of them.
    pub fn rpcs(&self) -> Result<Rpcs, RpcsError> {
        Rpcs::new(self.rpc_urls.clone(), self.rpc_quorum)
    }

    /// Whether several providers are given: heads are then polled at what a quorum reached, not followed by
    /// one provider's subscription.
    pub fn several(&self) -> bool {
        self.rpc_urls.len() > 1
    }

    /// The provider's URL when one alone is given.
    pub fn single(&self) -> Option<&Url> {
        match self.rpc_urls.as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }

    /// The providers as messages show them, credentials hidden.
    pub fn shown(&self) -> String {
        match self.rpcs() {
            Ok(r) => r.shown(),
            Err(_) => self
                .rpc_urls
                .iter()
                .map(|u| crate::redact::RedactedUrl::new(u).to_string())
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

//! The key that pays for transactions: from a file (`--tx-key-file`, `--private-key-file`) or the
//! environment, never from the command line, where other users see it. Never printed, never in an error.

/// Why a transaction signer could not be loaded. Never contains the key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TxKeyError {
    #[error(
        "both {flag} and the {env} environment variable are set: use one, so it is clear which key signs"
    )]
    Conflict {
        flag: &'static str,
        env: &'static str,
    },
    #[error("cannot read the key file {}", path.display())]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{source_name} does not hold a hex secp256k1 private key")]
    Invalid { source_name: String },
}

/// The signer in `file` (given with `flag`), else `from_env` (the value of the environment variable `env`),
/// else none. Keys are taken from files or the environment only, never from the command line, where other
/// users see them.
///
/// # Errors
/// [`TxKeyError`] when both are set, the file cannot be read, or the text is not a key.
pub fn load(
    file: Option<&std::path::Path>,
    flag: &'static str,
    env: &'static str,
    from_env: Option<&str>,
) -> Result<Option<alloy::signers::local::PrivateKeySigner>, TxKeyError> {
    let from_env = from_env
        .filter(|k| !k.trim().is_empty())
        .map(|k| zeroize::Zeroizing::new(k.to_owned()));
    let (text, source_name) = match (file, from_env) {
        (Some(_), Some(_)) => return Err(TxKeyError::Conflict { flag, env }),
        (Some(path), None) => (
            zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
                TxKeyError::Read {
                    path: path.to_owned(),
                    source,
                }
            })?),
            format!("the key file {}", path.display()),
        ),
        (None, Some(key)) => (key, env.to_owned()),
        (None, None) => return Ok(None),
    };
    text.trim()
        .parse()
        .map(Some)
        .map_err(|_| TxKeyError::Invalid { source_name })
}

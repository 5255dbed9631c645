//! What the agent keeps in `--state-dir` between runs: the last processed block and the peer records it
//! applied (with their proofs), and the pins it trusts, so a restart with the RPC down still brings the mesh
//! up. Nothing in it is secret: keys come from dstack on every start. Written atomically, mode 0600, in a
//! versioned format.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::follow::ChainView;

/// The state file's name inside the state directory.
pub const FILE_NAME: &str = "chain-view.json";

/// The format this version writes. (Not a serde-tagged enum: its buffering cannot read the integer keys of
/// the records map back.)
const VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    view: ChainView,
}

#[derive(Debug, Deserialize)]
struct Header {
    version: u32,
}

/// Errors reading or writing the state.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a state file this version understands: {detail}; move it away to start afresh", path.display())]
    Format { path: PathBuf, detail: String },
}

/// Loads the saved view, if there is one.
///
/// # Errors
/// [`StateError`] when the file exists but cannot be read or parsed.
pub fn load(dir: &Path) -> Result<Option<ChainView>, StateError> {
    let path = dir.join(FILE_NAME);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Io {
                action: "read",
                path,
                source,
            });
        }
    };
    if let Ok(meta) = std::fs::metadata(&path)
        && meta.permissions().mode() & 0o077 != 0
    {
        warn!(path = %path.display(), "the state file is readable by others; it holds no secrets, but should be 0600");
    }
    let format = |detail: String| StateError::Format {
        path: path.clone(),
        detail,
    };
    let header: Header = serde_json::from_str(&text).map_err(|e| format(e.to_string()))?;
    if header.version != VERSION {
        return Err(format(format!(
            "version {} (this agent reads version {VERSION})",
            header.version
        )));
    }
    let file: StateFile = serde_json::from_str(&text).map_err(|e| format(e.to_string()))?;
    Ok(Some(file.view))
}

/// Saves the view atomically (write a temporary file, then rename it over the old one).
///
/// # Errors
/// [`StateError::Io`] naming the path.
pub fn save(dir: &Path, view: &ChainView) -> Result<(), StateError> {
    let io = |action, path: &Path, source| StateError::Io {
        action,
        path: path.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
    let path = dir.join(FILE_NAME);
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
    let text = serde_json::to_vec_pretty(&StateFile {
        version: VERSION,
        view: view.clone(),
    })
    .map_err(|e| StateError::Format {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    std::fs::write(&tmp, text).map_err(|e| io("write", &tmp, e))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io("chmod", &tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io("rename into", &path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::{Pins, Prefix};
    use alloy::primitives::{Address, B256};
    use std::collections::BTreeMap;

    fn view() -> ChainView {
        ChainView {
            contract: Address::repeat_byte(1),
            chain_id: 31337,
            prefix: Prefix {
                network: "10.0.1.0".parse().unwrap(),
                len: 24,
            },
            pins: Pins {
                kms_root: Address::repeat_byte(2),
                app_ids: vec![Address::repeat_byte(3)],
            },
            last_block: 42,
            last_block_hash: B256::repeat_byte(4),
            records: BTreeMap::new(),
        }
    }

    /// Seats are integer map keys; they must survive the round trip (a serde-tagged enum could not read them).
    #[test]
    fn records_keyed_by_seat_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let text = r#"{"version":1,"view":{"contract":"0x0101010101010101010101010101010101010101","chainId":1,"prefix":{"network":"10.0.1.0","len":24},"pins":{"kmsRoot":"0x0202020202020202020202020202020202020202","appIds":[]},"lastBlock":3,"lastBlockHash":"0x0404040404040404040404040404040404040404040404040404040404040404","records":{}}}"#;
        std::fs::write(dir.path().join(FILE_NAME), text).unwrap();
        let mut v = load(dir.path()).unwrap().unwrap();
        assert_eq!(v.last_block, 3);
        v.records
            .insert(7, serde_json::from_value(sample_registration()).unwrap());
        save(dir.path(), &v).unwrap();
        assert_eq!(
            load(dir.path())
                .unwrap()
                .unwrap()
                .records
                .keys()
                .copied()
                .collect::<Vec<_>>(),
            vec![7]
        );
    }

    fn sample_registration() -> serde_json::Value {
        let b = |n: usize| format!("0x{}", "11".repeat(n));
        serde_json::json!({
            "token_id": "0x7", "instance_id": "ab", "wg_public_key": b(32), "endpoint": "", "gateway_url": "",
            "nonce": 1, "record_signature": b(65), "chain_id": 1, "contract": b(20),
            "proof": {"derived_public_key": b(64), "app_public_key": b(64), "app_signature": b(65),
                      "kms_signature": b(65), "app_id": b(20), "purpose": "p"}
        })
    }

    /// A saved view loads back unchanged, from a 0600 file; a missing file is no state.
    #[test]
    fn saves_and_loads_the_view_privately() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), None);
        save(dir.path(), &view()).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(view()));
        let mode = std::fs::metadata(dir.path().join(FILE_NAME))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert!(text.contains("\"version\": 1"), "{text}");
    }

    /// A file of another format is an error that says how to recover, not a silent reset.
    #[test]
    fn an_unknown_format_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), r#"{"version":9}"#).unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("move it away to start afresh"), "{err}");
    }
}

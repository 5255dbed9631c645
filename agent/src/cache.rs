//! What the agent keeps in `--state-dir` between runs: the last processed block, the peer records it
//! believed (with their proofs) and each seat's nonce high-water mark, and the pins it trusts, so a restart
//! with the RPC down still brings the mesh up and a restart with a lying RPC cannot roll anything back.
//! Nothing in it is secret: keys come from dstack on every start. Written atomically and synced, mode
//! 0600, in a versioned format, keeping the file it replaces as the last good copy that a damaged file
//! falls back to; version 1 files (before the chain id, prefix and high-water marks were pinned) are
//! upgraded on load.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::attestation::Allowlisted;
use crate::tcb_stages::BelowSince;
use mesh_chain::membership::{Pins, Prefix};
use mesh_chain::pace::BlockPace;
use mesh_chain::policy::ClusterPolicy;
use mesh_chain::view::ChainView;

/// The state file's name inside the state directory.
pub const FILE_NAME: &str = "chain-view.json";

/// The format this version writes. (Not a serde-tagged enum: its buffering cannot read the integer keys of
/// the records map back.)
const VERSION: u32 = 2;

/// The state file as it is read (its version, by [`Header`], first).
#[derive(Debug, Deserialize)]
struct StateFile {
    view: ChainView,
    /// The cluster's allowlist answers for the compose hashes and OS images its peers run, so that a
    /// restart with the RPC down still admits the peers they admitted. (Absent from files of agents before
    /// attestation.)
    #[serde(default)]
    allowlists: Vec<Allowlisted>,
    /// Since when each seat below the cluster's TCB policy has been, so that a restart does not give it its
    /// grace again. (Absent from files of agents before the TCB policy.)
    #[serde(default)]
    tcb_below: Vec<BelowSince>,
    /// The chain's pace as last read, which the default leader timeout follows, so that a restart with the
    /// RPC down leads and follows with the timeout it had. (Absent from files of agents before it.)
    #[serde(default)]
    pace: Option<BlockPace>,
    /// The grants between seats as last read, so that a restart with the RPC down enforces what it
    /// enforced. (Absent from files of agents before the grants.)
    #[serde(default)]
    grants: Option<ClusterPolicy>,
}

/// The state file as it is written: what [`StateFile`] reads, borrowed from the chain task.
#[derive(Serialize)]
struct StateFileOut<'a> {
    version: u32,
    view: &'a ChainView,
    allowlists: &'a [Allowlisted],
    tcb_below: &'a [BelowSince],
    pace: Option<BlockPace>,
    grants: Option<&'a ClusterPolicy>,
}

#[derive(Debug, Deserialize)]
struct Header {
    version: u32,
}

/// Version 1: the chain id and prefix sat beside the pins, and there were no high-water marks.
#[derive(Debug, Deserialize)]
struct StateFileV1 {
    view: ViewV1,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ViewV1 {
    contract: alloy::primitives::Address,
    chain_id: u64,
    prefix: Prefix,
    pins: PinsV1,
    last_block: u64,
    last_block_hash: alloy::primitives::B256,
    records: std::collections::BTreeMap<u64, mesh_chain::record::SignedRegistration>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PinsV1 {
    kms_root: alloy::primitives::Address,
    app_ids: Vec<alloy::primitives::Address>,
}

impl From<ViewV1> for ChainView {
    fn from(v: ViewV1) -> Self {
        let high_water = v.records.iter().map(|(t, r)| (*t, r.nonce)).collect();
        ChainView {
            contract: v.contract,
            election: alloy::primitives::Address::ZERO,
            pins: Pins {
                kms_root: v.pins.kms_root,
                app_ids: v.pins.app_ids,
                chain_id: v.chain_id,
                prefix: v.prefix,
            },
            last_block: v.last_block,
            last_block_hash: v.last_block_hash,
            records: (v.records.into_iter())
                .map(|(t, r)| (t, std::sync::Arc::new(r)))
                .collect(),
            bindings: Default::default(),
            holders: Default::default(),
            high_water,
            leader: None,
            leader_term: 0,
            term_reason: None,
            draining: std::collections::BTreeSet::new(),
        }
    }
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
    #[error("{} is not a state file this version can read: {detail}", path.display())]
    Format { path: PathBuf, detail: String },
    #[error(
        "{}; nor can its last good copy be used: {}",
        crate::causes::chain(damaged.as_ref()),
        crate::causes::chain(last_good.as_ref())
    )]
    NoGoodCopy {
        damaged: Box<StateError>,
        last_good: Box<StateError>,
    },
}

/// What the state file keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct Saved {
    pub view: ChainView,
    /// The cluster's allowlist answers, so that a restart with the RPC down still admits the peers they
    /// admitted.
    pub allowlists: Vec<Allowlisted>,
    /// Since when each seat below the cluster's TCB policy has been.
    pub tcb_below: Vec<BelowSince>,
    /// The chain's pace as last read.
    pub pace: Option<BlockPace>,
    /// The grants between seats as last read.
    pub grants: Option<ClusterPolicy>,
}

/// What a save writes, borrowed from the chain task.
#[derive(Debug, Clone, Copy)]
pub struct Keep<'a> {
    pub view: &'a ChainView,
    pub allowlists: &'a [Allowlisted],
    pub tcb_below: &'a [BelowSince],
    pub pace: Option<BlockPace>,
    pub grants: Option<&'a ClusterPolicy>,
}

/// The copy that a save replaced: the file as it was one save before, to fall back to when the file itself
/// is damaged (a disk that lost a write, a hand edit).
pub fn last_good_path(dir: &Path) -> PathBuf {
    dir.join(format!("{FILE_NAME}.last-good"))
}

/// Where a damaged file is moved when its last good copy serves instead, for the operator to look at.
pub fn damaged_path(dir: &Path) -> PathBuf {
    dir.join(format!("{FILE_NAME}.damaged"))
}

/// Loads what was saved, if anything: the state file, else (the file damaged, or gone between the two
/// renames of a save) its last good copy. A damaged file is moved aside when the copy serves, so that the
/// next save does not keep it as the last good one.
///
/// # Errors
/// [`StateError`] when the file cannot be used and there is no usable copy: the caller decides whether to
/// start afresh, since that drops the pins and the nonces' high-water marks.
pub fn load(dir: &Path) -> Result<Option<Saved>, StateError> {
    let (path, copy) = (dir.join(FILE_NAME), last_good_path(dir));
    let damaged = match read(&path) {
        Ok(Some(saved)) => return Ok(Some(saved)),
        Ok(None) => {
            let saved = read(&copy)?;
            if saved.is_some() {
                warn!(path = %path.display(), last_good = %copy.display(), "the state file is missing but its last good copy is not (a save was cut short?); using the copy");
            }
            return Ok(saved);
        }
        Err(e) => e,
    };
    match read(&copy) {
        Ok(Some(saved)) => {
            let aside = damaged_path(dir);
            let kept = match std::fs::rename(&path, &aside) {
                Ok(()) => aside.display().to_string(),
                Err(e) => format!("not moved aside ({e})"),
            };
            warn!(error = %crate::causes::Causes(&damaged), last_good = %copy.display(), damaged = %kept, "the state file is damaged; using its last good copy");
            Ok(Some(saved))
        }
        Ok(None) => Err(damaged),
        Err(last_good) => Err(StateError::NoGoodCopy {
            damaged: Box::new(damaged),
            last_good: Box::new(last_good),
        }),
    }
}

/// One state file: none if it does not exist.
fn read(path: &Path) -> Result<Option<Saved>, StateError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Io {
                action: "read",
                path: path.to_owned(),
                source,
            });
        }
    };
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        warn!(path = %path.display(), "the state file is readable by others; it holds no secrets, but should be 0600");
    }
    let format = |detail: String| StateError::Format {
        path: path.to_owned(),
        detail,
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(format("it is empty".into()));
    }
    let header: Header = serde_json::from_slice(&bytes).map_err(|e| format(e.to_string()))?;
    match header.version {
        VERSION => {
            let file: StateFile =
                serde_json::from_slice(&bytes).map_err(|e| format(e.to_string()))?;
            Ok(Some(Saved {
                view: file.view,
                allowlists: file.allowlists,
                tcb_below: file.tcb_below,
                pace: file.pace,
                grants: file.grants,
            }))
        }
        1 => {
            let file: StateFileV1 =
                serde_json::from_slice(&bytes).map_err(|e| format(e.to_string()))?;
            Ok(Some(Saved {
                view: file.view.into(),
                allowlists: Vec::new(),
                tcb_below: Vec::new(),
                pace: None,
                grants: None,
            }))
        }
        other => Err(format(format!(
            "version {other} (this agent reads versions 1 and {VERSION}; was it written by a newer agent?)"
        ))),
    }
}

/// Saves the view, the allowlist answers, the TCB stages' starts, the chain's pace and the grants atomically:
/// the text is written whole and synced to a temporary file, the file it replaces becomes the last good
/// copy, and the new one is renamed into place.
///
/// # Errors
/// [`StateError::Io`] naming the path.
pub fn save(dir: &Path, keep: Keep<'_>) -> Result<(), StateError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |action, path: &Path, source| StateError::Io {
        action,
        path: path.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
    let path = dir.join(FILE_NAME);
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
    let text = serde_json::to_vec_pretty(&StateFileOut {
        version: VERSION,
        view: keep.view,
        allowlists: keep.allowlists,
        tcb_below: keep.tcb_below,
        pace: keep.pace,
        grants: keep.grants,
    })
    .map_err(|e| StateError::Format {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io("create", &tmp, e))?;
    // A file left over with wider permissions keeps them through `open`.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io("chmod", &tmp, e))?;
    file.write_all(&text)
        .and_then(|()| file.sync_all())
        .map_err(|e| io("write", &tmp, e))?;
    match std::fs::rename(&path, last_good_path(dir)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("keep the last good copy of", &path, e)),
    }
    std::fs::rename(&tmp, &path).map_err(|e| io("rename into", &path, e))?;
    // The renames are durable once the directory is.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("sync", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A save of `view` alone.
    fn keep(view: &ChainView) -> Keep<'_> {
        Keep {
            view,
            allowlists: &[],
            tcb_below: &[],
            pace: None,
            grants: None,
        }
    }

    /// The grants between seats come back with the view, so that a restart with the RPC down enforces
    /// them; a file written before them loads with none.
    #[test]
    fn the_grants_between_seats_are_kept() {
        use mesh_policy::{Grant, Policy, Protocol};
        let dir = tempfile::tempdir().unwrap();
        let grants = ClusterPolicy {
            rules: Policy {
                enforced: true,
                version: 4,
                tag_names: vec!["web".into(), "db".into()],
                grants: vec![Grant {
                    from: 1,
                    to: 2,
                    protocol: Some(Protocol::Tcp),
                    ports: 5432..=5432,
                }],
            },
            seat_tags: [(3, 2)].into(),
            app_tags: [(alloy::primitives::Address::repeat_byte(0xa1), 1)].into(),
        };
        let v = view();
        save(
            dir.path(),
            Keep {
                grants: Some(&grants),
                ..keep(&v)
            },
        )
        .unwrap();
        assert_eq!(load(dir.path()).unwrap().unwrap().grants, Some(grants));
        save(dir.path(), keep(&v)).unwrap();
        assert_eq!(load(dir.path()).unwrap().unwrap().grants, None);
    }
    use alloy::primitives::{Address, B256};

    fn view() -> ChainView {
        ChainView {
            contract: Address::repeat_byte(1),
            election: Address::repeat_byte(4),
            pins: Pins {
                kms_root: Address::repeat_byte(2),
                app_ids: vec![Address::repeat_byte(3)],
                chain_id: 31337,
                prefix: Prefix::new("10.0.1.0".parse().unwrap(), 24).unwrap(),
            },
            last_block: 42,
            last_block_hash: B256::repeat_byte(4),
            records: Default::default(),
            holders: Default::default(),
            bindings: [(
                3u64,
                std::sync::Arc::new(mesh_chain::view::Binding {
                    instance_id: format!("{:040x}", 3),
                    node: Address::repeat_byte(5),
                    evidence_hash: alloy::primitives::keccak256(b"quote"),
                    bound_block: 40,
                    evidence: alloy::primitives::Bytes::from_static(b"quote"),
                }),
            )]
            .into_iter()
            .collect(),
            high_water: [(3u64, 5u64)].into_iter().collect(),
            leader: Some(2),
            leader_term: 3,
            term_reason: Some(mesh_chain::view::TermReason::Handoff),
            draining: [1].into(),
        }
    }

    /// A version 1 file (the format before this one) loads, with its chain id and prefix pinned and each
    /// record's nonce as its seat's high-water mark; seats are integer map keys and survive the round trip
    /// (a serde-tagged enum could not read them).
    #[test]
    fn version_1_files_upgrade_and_records_keyed_by_seat_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let text = r#"{"version":1,"view":{"contract":"0x0101010101010101010101010101010101010101","chainId":1,"prefix":{"network":"10.0.1.0","len":24},"pins":{"kmsRoot":"0x0202020202020202020202020202020202020202","appIds":[]},"lastBlock":3,"lastBlockHash":"0x0404040404040404040404040404040404040404040404040404040404040404","records":{}}}"#;
        std::fs::write(dir.path().join(FILE_NAME), text).unwrap();
        let mut v = load(dir.path()).unwrap().unwrap().view;
        assert_eq!(v.last_block, 3);
        assert_eq!(
            (v.pins.chain_id, v.prefix().to_string()),
            (1, "10.0.1.0/24".into())
        );
        v.records
            .insert(7, serde_json::from_value(sample_registration()).unwrap());
        v.high_water.insert(7, 1);
        save(dir.path(), keep(&v)).unwrap();
        let back = load(dir.path()).unwrap().unwrap().view;
        assert_eq!(back.records.keys().copied().collect::<Vec<_>>(), vec![7]);
        assert_eq!(
            back.high_water,
            [(7u64, 1u64)].into_iter().collect(),
            "the high-water mark survives a restart"
        );

        let with_record = text.replace(
            r#""records":{}"#,
            &format!(
                r#""records":{{"9":{}}}"#,
                sample_registration().to_string().replace("0x7", "0x9")
            ),
        );
        std::fs::write(dir.path().join(FILE_NAME), with_record).unwrap();
        let upgraded = load(dir.path()).unwrap().unwrap().view;
        assert_eq!(
            upgraded.high_water,
            [(9u64, 1u64)].into_iter().collect(),
            "version 1 records become high-water marks"
        );
    }

    /// When each seat fell below the TCB policy comes back after a restart, so that its grace does not start
    /// over; a file without it (an older agent's) reads as none below.
    #[test]
    fn the_tcb_stages_starts_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let below = [crate::tcb_stages::BelowSince {
            seat: 3,
            evidence_hash: alloy::primitives::B256::repeat_byte(7),
            since: 1_760_000_000,
        }];
        save(
            dir.path(),
            Keep {
                tcb_below: &below,
                ..keep(&view())
            },
        )
        .unwrap();
        assert_eq!(load(dir.path()).unwrap().unwrap().tcb_below, below);
        save(dir.path(), keep(&view())).unwrap();
        let path = dir.path().join(FILE_NAME);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("\"tcbBelow\": []") || text.contains("\"tcb_below\": []"),
            "{text}"
        );
        let older: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut older = older.as_object().unwrap().clone();
        older.retain(|k, _| k != "tcbBelow" && k != "tcb_below");
        std::fs::write(&path, serde_json::to_vec(&older).unwrap()).unwrap();
        assert!(load(dir.path()).unwrap().unwrap().tcb_below.is_empty());
    }

    /// A state file cannot carry a prefix that no contract accepts.
    #[test]
    fn a_state_file_with_an_invalid_prefix_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), keep(&view())).unwrap();
        let path = dir.path().join(FILE_NAME);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("\"10.0.1.0\"", "\"10.0.1.9\"")).unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("10.0.1.9/24 is not a usable mesh prefix"),
            "{err}"
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
        save(dir.path(), keep(&view())).unwrap();
        assert_eq!(load(dir.path()).unwrap().map(|s| s.view), Some(view()));
        let mode = std::fs::metadata(dir.path().join(FILE_NAME))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert!(text.contains("\"version\": 2"), "{text}");
    }

    /// The chain's pace comes back with the view, and a file written before it loads with none.
    #[test]
    fn the_chains_pace_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let pace = BlockPace::Every { secs: 12 };
        save(
            dir.path(),
            Keep {
                pace: Some(pace),
                ..keep(&view())
            },
        )
        .unwrap();
        assert_eq!(load(dir.path()).unwrap().unwrap().pace, Some(pace));
        save(dir.path(), keep(&view())).unwrap();
        let path = dir.path().join(FILE_NAME);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("\"pace\": {"), "{text}");
        assert_eq!(load(dir.path()).unwrap().unwrap().pace, None);
    }

    /// A file of another format is an error that names the file and the version, not a silent reset.
    #[test]
    fn an_unknown_format_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), r#"{"version":9}"#).unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(FILE_NAME) && err.contains("version 9"),
            "{err}"
        );
    }

    fn damage(path: &Path, how: &[u8]) {
        std::fs::write(path, how).unwrap();
    }

    /// Each save keeps the file it replaces as the last good copy; a truncated, empty or garbage file falls
    /// back to that copy, with the damaged one moved aside for the operator (and so never kept as the last
    /// good copy by the next save).
    #[test]
    fn a_damaged_file_falls_back_to_the_last_good_copy() {
        let older = view();
        let mut newer = view();
        newer.last_block = 43;
        for damaged in [
            &b"{\"version\": 2, \"view\": {\"contr"[..],
            b"",
            b"\x8f\x00\xffrandom",
        ] {
            let dir = tempfile::tempdir().unwrap();
            save(dir.path(), keep(&older)).unwrap();
            save(dir.path(), keep(&newer)).unwrap();
            damage(&dir.path().join(FILE_NAME), damaged);
            let loaded = load(dir.path()).unwrap().expect("the last good copy");
            assert_eq!(loaded.view, older, "falls back to the copy one save back");
            assert_eq!(std::fs::read(damaged_path(dir.path())).unwrap(), damaged);
            assert!(!dir.path().join(FILE_NAME).exists());
            save(dir.path(), keep(&newer)).unwrap();
            assert_eq!(load(dir.path()).unwrap().unwrap().view, newer);
            let copy = read(&last_good_path(dir.path())).unwrap().unwrap();
            assert_eq!(copy.view, older, "the damaged file never became the copy");
        }
    }

    /// A save cut short between its two renames leaves only the last good copy, which serves.
    #[test]
    fn a_missing_file_with_a_last_good_copy_uses_the_copy() {
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), keep(&view())).unwrap();
        save(dir.path(), keep(&view())).unwrap();
        std::fs::remove_file(dir.path().join(FILE_NAME)).unwrap();
        assert_eq!(load(dir.path()).unwrap().unwrap().view, view());
    }

    /// With no usable copy, a damaged file is an error naming the file and why, for the caller to refuse
    /// a silent re-pin; garbage says what the parser found, not only that the file "cannot be read".
    #[test]
    fn a_damaged_file_without_a_good_copy_is_an_error_that_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        damage(&path, b"\x8f\x00\xffrandom");
        let err = load(dir.path()).unwrap_err();
        let shown = crate::causes::Causes(&err).to_string();
        assert!(
            shown.contains(&path.display().to_string()) && shown.contains("expected value"),
            "{shown}"
        );
        assert!(
            path.exists(),
            "nothing is moved when nothing can replace it"
        );

        damage(&path, b"");
        assert!(
            crate::causes::Causes(&load(dir.path()).unwrap_err())
                .to_string()
                .contains("empty")
        );

        damage(&last_good_path(dir.path()), b"{\"version\": 2");
        let shown = crate::causes::Causes(&load(dir.path()).unwrap_err()).to_string();
        assert!(
            shown.contains(FILE_NAME) && shown.contains(".last-good") && shown.contains("empty"),
            "both files and both reasons: {shown}"
        );
    }
}

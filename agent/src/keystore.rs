//! The node's secrets on its own volume: its node key and the WireGuard key of each rotation epoch.
//!
//! They are made here from the operating system's randomness, never from dstack's GetKey: GetKey gives every
//! instance of an app the same key for the same path, so a sibling instance could derive any key that came
//! from it. dstack encrypts the CVM's volume and releases its disk key to this instance only, so these keys
//! stay this instance's.
//!
//! The file is sealed as well (ChaCha20-Poly1305 under a GetKey-derived key, with the instance id as
//! associated data), so that the keys are never in clear in a file, and a file of another app, or damaged,
//! is refused rather than used. The seal does not stop a sibling instance that got hold of the file (it can
//! derive the same sealing key): what keeps the keys this instance's is the volume, which dstack encrypts
//! per instance, so mount it into no other container. Losing the file means new keys, which the seat's holder
//! binds again, as after a redeploy.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead as _, KeyInit as _, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use k256::ecdsa::SigningKey;
use mesh_wg::PrivateKey;
use zeroize::Zeroizing;

/// The file's name in the state directory, unless `--node-key-file` names another.
pub const FILE_NAME: &str = "node-keys.sealed";

/// GetKey path and purpose of the sealing key.
pub const SEAL_KEY_PATH: &str = "dstack-mesh/seal";
pub const SEAL_KEY_PURPOSE: &str = "dstack-mesh-seal";

const MAGIC: &[u8; 8] = b"DMKEYS01";
const NONCE_LEN: usize = 12;
/// More epochs than any rotation schedule reaches; a bound on what a damaged file can make us allocate.
const MAX_EPOCHS: usize = 4096;

/// What to do next when the keys cannot be had, in the words every error ends with.
const LOST_KEYS_HINT: &str = "if the keys are lost for good, move the file away: the agent makes new ones, and the seat's holder binds the seat to them again (the agent asks for it on-chain: `meshctl bind --instance <this instance> --token <seat>`)";

/// Why the node's keys could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyStoreError {
    #[error("cannot read the node keys at {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the node keys at {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the node keys at {path} do not open ({why}): they were sealed by another app or instance, or the file is damaged; {LOST_KEYS_HINT}"
    )]
    Unreadable { path: PathBuf, why: &'static str },
    #[error("the operating system gave no randomness: {0}")]
    Random(getrandom::Error),
}

/// The key that seals the file: derived by dstack for the app (GetKey), so only this app's code can open it.
pub struct SealKey(Zeroizing<[u8; 32]>);

impl SealKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }
}

/// The node's keys, as the file holds them.
pub struct NodeKeys {
    node: Zeroizing<[u8; 32]>,
    wireguard: BTreeMap<u32, Zeroizing<[u8; 32]>>,
}

impl std::fmt::Debug for NodeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKeys")
            .field("epochs", &self.wireguard.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl NodeKeys {
    /// The node key.
    pub fn node_key(&self) -> SigningKey {
        SigningKey::from_slice(self.node.as_slice()).expect("checked when made or opened")
    }

    /// The WireGuard key of `epoch`, if the file has one.
    pub fn wireguard(&self, epoch: u32) -> Option<PrivateKey> {
        self.wireguard
            .get(&epoch)
            .map(|k| PrivateKey::from_bytes(**k))
    }

    fn random_node() -> Result<Zeroizing<[u8; 32]>, KeyStoreError> {
        // A uniformly random 32-byte string is a valid scalar but with probability ~2^-128.
        loop {
            let bytes = random32()?;
            if SigningKey::from_slice(bytes.as_slice()).is_ok() {
                return Ok(bytes);
            }
        }
    }

    fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(36 + 36 * self.wireguard.len()));
        out.extend_from_slice(self.node.as_slice());
        out.extend_from_slice(&(self.wireguard.len() as u32).to_be_bytes());
        for (epoch, key) in &self.wireguard {
            out.extend_from_slice(&epoch.to_be_bytes());
            out.extend_from_slice(key.as_slice());
        }
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let node: [u8; 32] = bytes.get(..32)?.try_into().ok()?;
        SigningKey::from_slice(&node).ok()?;
        let count = u32::from_be_bytes(bytes.get(32..36)?.try_into().ok()?) as usize;
        if count > MAX_EPOCHS || bytes.len() != 36 + 36 * count {
            return None;
        }
        let wireguard = bytes[36..]
            .chunks_exact(36)
            .map(|c| {
                let epoch = u32::from_be_bytes(c[..4].try_into().expect("4 bytes"));
                let key: [u8; 32] = c[4..].try_into().expect("32 bytes");
                (epoch, Zeroizing::new(key))
            })
            .collect();
        Some(Self {
            node: Zeroizing::new(node),
            wireguard,
        })
    }
}

fn random32() -> Result<Zeroizing<[u8; 32]>, KeyStoreError> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    getrandom::getrandom(bytes.as_mut_slice()).map_err(KeyStoreError::Random)?;
    Ok(bytes)
}

fn associated_data(instance_id: &str) -> Vec<u8> {
    [MAGIC.as_slice(), instance_id.as_bytes()].concat()
}

fn seal(keys: &NodeKeys, seal: &SealKey, instance_id: &str) -> Result<Vec<u8>, KeyStoreError> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::getrandom(&mut nonce).map_err(KeyStoreError::Random)?;
    let cipher = ChaCha20Poly1305::new(seal.0.as_slice().into());
    let plain = keys.encode();
    let sealed = cipher
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: &plain,
                aad: &associated_data(instance_id),
            },
        )
        .expect("ChaCha20-Poly1305 encrypts any message this size");
    Ok([MAGIC.as_slice(), &nonce, &sealed].concat())
}

fn open(
    bytes: &[u8],
    seal: &SealKey,
    instance_id: &str,
    path: &Path,
) -> Result<NodeKeys, KeyStoreError> {
    let unreadable = |why| KeyStoreError::Unreadable {
        path: path.to_owned(),
        why,
    };
    let rest = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or_else(|| unreadable("not a dstack-mesh key file"))?;
    if rest.len() < NONCE_LEN {
        return Err(unreadable("truncated"));
    }
    let (nonce, sealed) = rest.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().expect("split at its length");
    let cipher = ChaCha20Poly1305::new(seal.0.as_slice().into());
    let plain = Zeroizing::new(
        cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: sealed,
                    aad: &associated_data(instance_id),
                },
            )
            .map_err(|_| unreadable("its seal does not verify"))?,
    );
    NodeKeys::decode(&plain).ok_or_else(|| unreadable("its contents are malformed"))
}

/// The node's keys at `path`, with a WireGuard key for `wg_epoch`: opened if the file exists, else made and
/// written. A missing epoch's key is made and added.
///
/// # Errors
/// [`KeyStoreError`]: the file cannot be read or written, or does not open.
pub fn open_or_create(
    path: &Path,
    seal_key: &SealKey,
    instance_id: &str,
    wg_epoch: u32,
) -> Result<NodeKeys, KeyStoreError> {
    // Two tries: the agent and `p2p-agent identity` may both find no file and race to make one; the loser
    // opens the winner's.
    for _ in 0..2 {
        match std::fs::read(path) {
            Ok(bytes) => {
                let mut keys = open(&bytes, seal_key, instance_id, path)?;
                if let std::collections::btree_map::Entry::Vacant(e) =
                    keys.wireguard.entry(wg_epoch)
                {
                    e.insert(random32()?);
                    write(path, &seal(&keys, seal_key, instance_id)?, Replace::Yes)?;
                }
                return Ok(keys);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let keys = NodeKeys {
                    node: NodeKeys::random_node()?,
                    wireguard: BTreeMap::from([(wg_epoch, random32()?)]),
                };
                match write(path, &seal(&keys, seal_key, instance_id)?, Replace::No) {
                    Ok(()) => return Ok(keys),
                    Err(KeyStoreError::Write { source, .. })
                        if source.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e),
                }
            }
            Err(source) => {
                return Err(KeyStoreError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        }
    }
    Err(KeyStoreError::Unreadable {
        path: path.to_owned(),
        why: "it appeared and vanished while being read",
    })
}

#[derive(PartialEq)]
enum Replace {
    Yes,
    No,
}

/// Writes `bytes` to `path` whole or not at all (a temporary file in the same directory, synced, then moved
/// into place), readable by the owner only. Without `Replace::Yes`, an existing file wins (`AlreadyExists`).
fn write(path: &Path, bytes: &[u8], replace: Replace) -> Result<(), KeyStoreError> {
    let failed = |source| KeyStoreError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(failed)?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        if replace == Replace::Yes {
            std::fs::rename(&tmp, path)
        } else {
            // link(2) fails if the target exists, so two makers cannot both win.
            std::fs::hard_link(&tmp, path)
        }
    })();
    let _ = std::fs::remove_file(&tmp);
    result.map_err(failed)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const INSTANCE: &str = "59df8036b824b0aac54f8998b9e1fb2a0cfc5d3a";

    fn seal_key(b: u8) -> SealKey {
        SealKey::from_bytes([b; 32])
    }

    /// Keys are made once, survive a reopen (a restart), and differ between two volumes (two instances).
    #[test]
    fn keys_are_made_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state").join(FILE_NAME);
        let first = open_or_create(&path, &seal_key(1), INSTANCE, 0).unwrap();
        let again = open_or_create(&path, &seal_key(1), INSTANCE, 0).unwrap();
        assert_eq!(first.node_key(), again.node_key());
        assert_eq!(
            first.wireguard(0).unwrap().public_key(),
            again.wireguard(0).unwrap().public_key()
        );

        let other = open_or_create(&dir.path().join("other"), &seal_key(1), INSTANCE, 0).unwrap();
        assert_ne!(
            first.node_key(),
            other.node_key(),
            "randomness, not derivation"
        );

        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let bytes = std::fs::read(&path).unwrap();
        let secret = first.node_key().to_bytes();
        assert!(
            !bytes.windows(32).any(|w| w == &secret[..]),
            "the node key is not in the file in clear"
        );
    }

    /// A new epoch adds a WireGuard key and keeps the node key and the older epochs.
    #[test]
    fn a_new_epoch_adds_a_wireguard_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let e0 = open_or_create(&path, &seal_key(1), INSTANCE, 0).unwrap();
        let e1 = open_or_create(&path, &seal_key(1), INSTANCE, 1).unwrap();
        assert_eq!(e0.node_key(), e1.node_key());
        assert_ne!(
            e0.wireguard(0).unwrap().public_key(),
            e1.wireguard(1).unwrap().public_key()
        );
        assert_eq!(
            e0.wireguard(0).unwrap().public_key(),
            e1.wireguard(0).unwrap().public_key()
        );
    }

    /// Another app's seal, another instance, a flipped byte, a truncated or empty file: refused, never replaced,
    /// and the error says how to recover.
    #[test]
    fn a_file_that_does_not_open_is_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        open_or_create(&path, &seal_key(1), INSTANCE, 0).unwrap();
        let good = std::fs::read(&path).unwrap();

        let err = open_or_create(&path, &seal_key(2), INSTANCE, 0).unwrap_err();
        assert!(
            matches!(err, KeyStoreError::Unreadable { why, .. } if why.contains("seal")),
            "{err}"
        );
        assert!(err.to_string().contains("meshctl bind"), "{err}");
        let other_instance = "1691ed1b47506cad7d08834668691d88246f5b1f";
        assert!(open_or_create(&path, &seal_key(1), other_instance, 0).is_err());

        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        for bad in [
            flipped,
            good[..20].to_vec(),
            Vec::new(),
            b"garbage".to_vec(),
        ] {
            std::fs::write(&path, &bad).unwrap();
            let err = open_or_create(&path, &seal_key(1), INSTANCE, 0).unwrap_err();
            assert!(matches!(err, KeyStoreError::Unreadable { .. }), "{err}");
            assert_eq!(
                std::fs::read(&path).unwrap(),
                bad,
                "the file is left as it was"
            );
        }
    }

    /// Debug output names the epochs, never a key.
    #[test]
    fn debug_shows_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let keys = open_or_create(&dir.path().join(FILE_NAME), &seal_key(1), INSTANCE, 3).unwrap();
        let text = format!("{keys:?}");
        assert_eq!(text, "NodeKeys { epochs: [3], .. }");
    }
}

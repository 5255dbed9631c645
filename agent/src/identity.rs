//! Who this node is, as dstack attests it: its instance and app, its peer key (which proves and signs its
//! records, [`PeerKey`]), and its WireGuard key.
//!
//! The WireGuard key is **derived** from dstack (GetKey at `dstack-mesh/wireguard/<instance_id>`), not
//! generated and sealed. The same instance gets the same key after every restart, so a restart needs no new
//! transaction; nothing secret is ever written to disk; and only this app's code in this instance can obtain
//! it, because dstack's KMS releases the app key only to attested instances and the path names the instance.
//! Rotating means moving to the next epoch (`…/<instance_id>/<epoch>`) and registering the new public key.

use dstack_guest::{DstackClient, DstackError};
use mesh_chain::peer_key::{PeerKey, PeerKeyError};
use mesh_wg::{Key, PrivateKey};

/// GetKey path prefix of the WireGuard key; the instance id (and a rotation epoch above 0) follow.
pub const WG_KEY_PATH_PREFIX: &str = "dstack-mesh/wireguard/";

/// GetKey purpose of the WireGuard key. It only enters the app signature, which nobody checks for this key.
pub const WG_KEY_PURPOSE: &str = "dstack-mesh-wireguard";

/// Errors establishing the node's identity.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    #[error("dstack {call} failed")]
    Dstack {
        call: &'static str,
        #[source]
        source: DstackError,
    },
    #[error(transparent)]
    PeerKey(#[from] PeerKeyError),
}

/// GetKey path of the WireGuard key for `instance_id` at rotation `epoch`.
pub fn wg_key_path(instance_id: &str, epoch: u32) -> String {
    if epoch == 0 {
        format!("{WG_KEY_PATH_PREFIX}{instance_id}")
    } else {
        format!("{WG_KEY_PATH_PREFIX}{instance_id}/{epoch}")
    }
}

/// This node's identity, loaded from dstack.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    /// The peer key, with the instance and app it belongs to.
    pub peer: PeerKey,
    pub app_name: String,
    wg_private_key: PrivateKey,
}

impl NodeIdentity {
    /// Reads Info, then the peer key and the WireGuard key (at rotation `wg_epoch`) from GetKey.
    ///
    /// # Errors
    /// [`IdentityError`] naming the dstack call that failed, or a missing instance id.
    pub async fn load(client: &DstackClient, wg_epoch: u32) -> Result<Self, IdentityError> {
        let info = client
            .info()
            .await
            .map_err(|source| IdentityError::Dstack {
                call: "Info",
                source,
            })?;
        let peer = PeerKey::load(client, &info).await?;
        let wg = client
            .get_key(&wg_key_path(&info.instance_id, wg_epoch), WG_KEY_PURPOSE)
            .await
            .map_err(|source| IdentityError::Dstack {
                call: "GetKey",
                source,
            })?;
        Ok(Self {
            peer,
            app_name: info.app_name,
            wg_private_key: PrivateKey::from_bytes(*wg.key.expose_secret()),
        })
    }

    /// 40 lowercase hex characters.
    pub fn instance_id(&self) -> &str {
        &self.peer.instance_id
    }

    /// The WireGuard public key.
    pub fn wg_public_key(&self) -> Key {
        self.wg_private_key.public_key()
    }

    /// The WireGuard private key, for the data plane. Callers must not log or persist it.
    pub fn wg_private_key(&self) -> &PrivateKey {
        &self.wg_private_key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Epoch 0 is the plain instance path; later epochs append the epoch, so each rotation is a new key.
    #[test]
    fn wg_key_paths_name_the_instance_and_epoch() {
        let id = "59df8036b824b0aac54f8998b9e1fb2a0cfc5d3a";
        assert_eq!(
            wg_key_path(id, 0),
            "dstack-mesh/wireguard/59df8036b824b0aac54f8998b9e1fb2a0cfc5d3a"
        );
        assert_eq!(
            wg_key_path(id, 2),
            "dstack-mesh/wireguard/59df8036b824b0aac54f8998b9e1fb2a0cfc5d3a/2"
        );
    }
}

//! Dialling peers' relays: the device owns the dials under way, so that they stop with it.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use mesh_relay::{Dialer, Inbound};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::Instrument as _;

use crate::peer::Peer;

/// What the device needs to dial relays: the dialler, where dialled streams' datagrams go, and the
/// dials under way, which the device owns so that they stop with it.
pub(crate) struct RelayDialing {
    pub(super) dialer: Dialer,
    pub(super) inbound: mpsc::Sender<Inbound>,
    pub(super) dials: Mutex<JoinSet<()>>,
}

impl RelayDialing {
    pub(super) fn new(dialer: Dialer, inbound: mpsc::Sender<Inbound>) -> Self {
        Self {
            dialer,
            inbound,
            dials: Mutex::default(),
        }
    }
}

pub(super) fn dial_if_needed(relay: &RelayDialing, peer: &Arc<Peer>) {
    let Some(target) = peer.relay_to_dial(Instant::now()) else {
        return;
    };
    let (dialer, inbound, peer) = (
        relay.dialer.clone(),
        relay.inbound.clone(),
        Arc::clone(peer),
    );
    let mut dials = relay.dials.lock().unwrap_or_else(PoisonError::into_inner);
    while dials.try_join_next().is_some() {}
    dials.spawn(
        async move {
            match dialer.dial(&target, inbound).await {
                Ok(link) => {
                    tracing::info!(peer = ?peer.public_key, relay = %target, link = link.id(), "relay stream up");
                    peer.dialled(&target, Ok(link));
                }
                Err(err) => {
                    let failures = peer.dialled(&target, Err(err.to_string()));
                    // The first failure and then every tenth: a peer whose gateway is down would fill the log.
                    if failures == 1 || failures % 10 == 0 {
                        tracing::warn!(peer = ?peer.public_key, relay = %target, failures, error = %err, "could not reach the peer's relay");
                    }
                }
            }
        }
        .in_current_span(),
    );
}

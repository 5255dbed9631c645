//! What a key is called in logs. WireGuard, and so the device, knows a peer only by its key; the agent knows it
//! by its seat. The agent names each key it configures here, and a [`Key`](crate::Key)'s `Debug` (which every
//! log line about a peer prints) then carries the name: `AbCdEfGh…(seat 3)`. Nothing but logs reads it.

use std::collections::BTreeMap;
use std::sync::{LazyLock, RwLock};

static NAMES: LazyLock<RwLock<BTreeMap<[u8; 32], String>>> = LazyLock::new(RwLock::default);

/// Makes `names` the whole set of named keys: a key left out is nameless again.
pub fn set(names: impl IntoIterator<Item = (crate::Key, String)>) {
    let names: BTreeMap<[u8; 32], String> = names.into_iter().map(|(k, n)| (k.0, n)).collect();
    // A poisoned lock only means a panic elsewhere while it was held; the map is whole either way.
    *NAMES
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = names;
}

/// Forgets the names of `gone`, then names the keys of `came`: the change of one seat, without naming a
/// thousand others again.
pub fn update(
    gone: impl IntoIterator<Item = crate::Key>,
    came: impl IntoIterator<Item = (crate::Key, String)>,
) {
    let mut names = NAMES
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for key in gone {
        names.remove(&key.0);
    }
    names.extend(came.into_iter().map(|(k, n)| (k.0, n)));
}

/// The name of `key`, if it has one.
pub(crate) fn of(key: &[u8; 32]) -> Option<String> {
    NAMES
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(key)
        .cloned()
}

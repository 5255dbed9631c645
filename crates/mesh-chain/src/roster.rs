//! The members of one view, carried to the next. [`membership::members`] works a view's members out from
//! nothing, every record checked again: at 10,000 seats that is milliseconds for a block that moved one
//! record. A [`Roster`] keeps the members as a persistent map and takes a newer view as the seats whose
//! records moved (two views share the part of their records map they both hold, so a diff of the two skips
//! it), reworking only those and the seats that claim a WireGuard key with them, as Tailscale's netmap
//! deltas do.

use std::collections::BTreeSet;
use std::sync::Arc;

use wg_key::Key;

use crate::membership::{self, InvalidRecord, Member, Own};
use crate::record::SignedRegistration;
use crate::view::{ChainView, Records};

/// A view's members by seat. A copy shares the map, and a change to one seat copies a path of it.
pub type Members = imbl::OrdMap<u64, Member>;

/// One seat whose member changed: as it was and as it is, `None` for no member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    pub token_id: u64,
    pub before: Option<Member>,
    pub after: Option<Member>,
}

/// The members of the last view taken, as [`membership::members`] gives them, and what it takes to
/// rework one seat: the view, and which seats claim each WireGuard key.
#[derive(Debug, Clone)]
pub struct Roster {
    view: Arc<ChainView>,
    own_token: Option<u64>,
    own_instance: String,
    own_key: Option<Key>,
    members: Members,
    /// Each usable record's key and seat, members or not: seats that claim one key are none of them
    /// members, and the others that claim a key are found by a range of this set.
    claims: BTreeSet<(Key, u64)>,
}

impl Roster {
    /// The members of `view` for the node `own`, worked out from nothing, and why each other record is
    /// not one.
    pub fn new(view: Arc<ChainView>, own: Own<'_>) -> (Self, Vec<InvalidRecord>) {
        let mut roster = Self {
            view: Arc::clone(&view),
            own_token: own.token_id,
            own_instance: own.instance_id.to_owned(),
            own_key: own.wg_public_key,
            members: Members::new(),
            claims: BTreeSet::new(),
        };
        let mut invalid = Vec::new();
        let mut usable = Vec::with_capacity(view.records.len());
        for (token, reg) in &view.records {
            match roster.usable(*token, reg) {
                Ok(Some(m)) => {
                    if let Some(key) = m.wg_public_key {
                        roster.claims.insert((key, *token));
                    }
                    usable.push(m);
                }
                Ok(None) => {}
                Err(e) => invalid.push(e),
            }
        }
        for m in usable {
            match roster.unique(m) {
                Ok(m) => {
                    roster.members.insert(m.token_id, m);
                }
                Err(e) => invalid.push(e),
            }
        }
        (roster, invalid)
    }

    /// The members, by seat.
    pub fn members(&self) -> &Members {
        &self.members
    }

    /// The view the members are of.
    pub fn view(&self) -> &Arc<ChainView> {
        &self.view
    }

    /// Takes `next`, a newer view: the seats whose member changed, in seat order, and why each record
    /// that moved (or claims a key with one that did) is not a member. A view under another prefix is
    /// worked out from nothing.
    pub fn update(&mut self, next: &Arc<ChainView>) -> (Vec<Moved>, Vec<InvalidRecord>) {
        if Arc::ptr_eq(&self.view, next) {
            return (Vec::new(), Vec::new());
        }
        if next.prefix() != self.view.prefix() {
            return self.rebuild(next);
        }
        let moves = moved(&self.view.records, &next.records);
        self.view = Arc::clone(next);
        // The seats to settle again: each that moved, and each that claims a key one of them gave up or
        // took, whose clash may have begun or ended.
        let mut touched = BTreeSet::new();
        let mut keys = BTreeSet::new();
        for (token, before) in moves {
            touched.insert(token);
            if let Some(before) = before
                && let Some(key) = key_of(&before)
                && self.claims.remove(&(key, token))
            {
                keys.insert(key);
            }
            if let Some(reg) = self.view.records.get(&token)
                && let Ok(Some(m)) = self.usable(token, reg)
                && let Some(key) = m.wg_public_key
            {
                self.claims.insert((key, token));
                keys.insert(key);
            }
        }
        for key in keys {
            touched.extend(self.claimants(key));
        }
        let mut changed = Vec::new();
        let mut invalid = Vec::new();
        for token in touched {
            let after = match self.settle(token) {
                Ok(m) => m,
                Err(e) => {
                    invalid.push(e);
                    None
                }
            };
            let before = match &after {
                Some(m) => self.members.insert(token, m.clone()),
                None => self.members.remove(&token),
            };
            if before != after {
                changed.push(Moved {
                    token_id: token,
                    before,
                    after,
                });
            }
        }
        (changed, invalid)
    }

    fn rebuild(&mut self, next: &Arc<ChainView>) -> (Vec<Moved>, Vec<InvalidRecord>) {
        let own = Own {
            token_id: self.own_token,
            instance_id: &self.own_instance,
            wg_public_key: self.own_key,
        };
        let (fresh, invalid) = Self::new(Arc::clone(next), own);
        let changed = (self.members.diff(&fresh.members))
            .map(|d| match d {
                imbl::ordmap::DiffItem::Add(t, m) => (*t, None, Some(m)),
                imbl::ordmap::DiffItem::Update { old, new } => (*old.0, Some(old.1), Some(new.1)),
                imbl::ordmap::DiffItem::Remove(t, m) => (*t, Some(m), None),
            })
            .map(|(token_id, before, after)| Moved {
                token_id,
                before: before.cloned(),
                after: after.cloned(),
            })
            .collect();
        *self = fresh;
        (changed, invalid)
    }

    /// Seat `token`'s member in the current view, or why its record is none.
    fn settle(&self, token: u64) -> Result<Option<Member>, InvalidRecord> {
        let Some(reg) = self.view.records.get(&token) else {
            return Ok(None);
        };
        match self.usable(token, reg)? {
            Some(m) => self.unique(m).map(Some),
            None => Ok(None),
        }
    }

    /// The record as a peer, as [`membership::members`] checks it before keys are compared; `None` for
    /// this node's own seat.
    fn usable(
        &self,
        token: u64,
        reg: &SignedRegistration,
    ) -> Result<Option<Member>, InvalidRecord> {
        let own = Own {
            token_id: self.own_token,
            instance_id: &self.own_instance,
            wg_public_key: self.own_key,
        };
        if own.is(token, reg) {
            return match Some(token) == own.token_id {
                true => Ok(None),
                false => Err(InvalidRecord::Itself { token_id: token }),
            };
        }
        membership::member(reg, self.view.prefix()).map(Some)
    }

    /// `m`, unless another seat claims its key: named, as [`membership::members`] names it, by the first
    /// other claimant in seat order.
    fn unique(&self, m: Member) -> Result<Member, InvalidRecord> {
        let Some(key) = m.wg_public_key else {
            return Ok(m);
        };
        match self.claimants(key).find(|t| *t != m.token_id) {
            Some(other) => Err(InvalidRecord::DuplicateKey {
                token_id: m.token_id,
                other,
            }),
            None => Ok(m),
        }
    }

    /// The seats whose usable records claim `key`, in seat order.
    fn claimants(&self, key: Key) -> impl Iterator<Item = u64> + '_ {
        self.claims
            .range((key, 0)..=(key, u64::MAX))
            .map(|(_, t)| *t)
    }
}

/// The WireGuard key a record names, if any.
fn key_of(reg: &SignedRegistration) -> Option<Key> {
    (!reg.wg_public_key.is_zero()).then(|| Key::from_bytes(reg.wg_public_key.0))
}

/// The seats whose record changed, each with the record it had: what the two maps share is skipped.
fn moved(before: &Records, after: &Records) -> Vec<(u64, Option<Arc<SignedRegistration>>)> {
    use imbl::ordmap::DiffItem;
    (before.diff(after))
        .map(|d| match d {
            DiffItem::Add(token, _) => (*token, None),
            DiffItem::Update { old, .. } => (*old.0, Some(Arc::clone(old.1))),
            DiffItem::Remove(token, reg) => (*token, Some(Arc::clone(reg))),
        })
        .collect()
}

#[cfg(test)]
mod tests;

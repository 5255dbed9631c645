//! What a cluster allows: its app, its compose hashes, its OS images, the TCB statuses it accepts,
//! and the key provider.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use alloy_primitives::keccak256;

use crate::replay::KeyProvider;

/// An allowlist, or none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Allowed<T: Ord> {
    Any,
    Only(BTreeSet<T>),
}

impl<T: Ord> Allowed<T> {
    pub fn allows(&self, value: &T) -> bool {
        match self {
            Self::Any => true,
            Self::Only(set) => set.contains(value),
        }
    }

    /// An empty allowlist: nothing until the owner adds something.
    pub fn none() -> Self {
        Self::Only(BTreeSet::new())
    }
}

impl<T: Ord> FromIterator<T> for Allowed<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        Self::Only(iter.into_iter().collect())
    }
}

/// A TCB status, as Intel spells it in TCB info and dcap-qvl reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TcbStatus {
    UpToDate,
    SWHardeningNeeded,
    ConfigurationNeeded,
    ConfigurationAndSWHardeningNeeded,
    OutOfDate,
    OutOfDateConfigurationNeeded,
    /// TD 1.5: launched on an out-of-date TCB, running on a current one.
    TDRelaunchAdvised,
    TDRelaunchAdvisedConfigurationNeeded,
    /// The platform's keys are compromised. Never allowed.
    Revoked,
}

impl TcbStatus {
    pub const ALL: [TcbStatus; 9] = [
        Self::UpToDate,
        Self::SWHardeningNeeded,
        Self::ConfigurationNeeded,
        Self::ConfigurationAndSWHardeningNeeded,
        Self::OutOfDate,
        Self::OutOfDateConfigurationNeeded,
        Self::TDRelaunchAdvised,
        Self::TDRelaunchAdvisedConfigurationNeeded,
        Self::Revoked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::UpToDate => "UpToDate",
            Self::SWHardeningNeeded => "SWHardeningNeeded",
            Self::ConfigurationNeeded => "ConfigurationNeeded",
            Self::ConfigurationAndSWHardeningNeeded => "ConfigurationAndSWHardeningNeeded",
            Self::OutOfDate => "OutOfDate",
            Self::OutOfDateConfigurationNeeded => "OutOfDateConfigurationNeeded",
            Self::TDRelaunchAdvised => "TDRelaunchAdvised",
            Self::TDRelaunchAdvisedConfigurationNeeded => "TDRelaunchAdvisedConfigurationNeeded",
            Self::Revoked => "Revoked",
        }
    }
}

impl fmt::Display for TcbStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TcbStatus {
    type Err = PolicyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| PolicyError::UnknownTcbStatus(text.to_owned()))
    }
}

/// Which key provider a CVM must have booted with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyProviderRule {
    /// `kms`: the disk key came from the dstack KMS, which checks the app's authorization first.
    pub name: String,
    /// The KMS's root public key (as dstack writes it in the event), when the cluster pins one KMS.
    pub id: Option<Vec<u8>>,
}

impl Default for KeyProviderRule {
    fn default() -> Self {
        Self {
            name: "kms".to_owned(),
            id: None,
        }
    }
}

impl KeyProviderRule {
    pub fn allows(&self, provider: &KeyProvider) -> bool {
        provider.name == self.name && self.id.as_ref().is_none_or(|id| *id == provider.id)
    }
}

impl fmt::Display for KeyProviderRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.id {
            None => write!(f, "`{}`", self.name),
            Some(id) => write!(f, "`{}` with id {}", self.name, hex::encode(id)),
        }
    }
}

/// What a cluster allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The cluster's dstack app.
    pub app_id: [u8; 20],
    pub compose_hashes: Allowed<[u8; 32]>,
    /// [`os_measurement`]s of the dstack OS images allowed. RTMR3 only means something on a genuine
    /// dstack OS: any other OS can write any `instance-id` into it.
    pub os: Allowed<[u8; 32]>,
    /// Accepted TCB statuses. `Revoked` is refused even if it is in here.
    pub tcb_statuses: BTreeSet<TcbStatus>,
    /// Debug TDs let the host read and write the TD's memory.
    pub allow_debug: bool,
    pub key_provider: KeyProviderRule,
}

impl Policy {
    /// The strict default for `app_id`: no compose hash and no OS image yet (the owner adds them),
    /// `UpToDate` only, no debug TDs, key provider `kms`.
    pub fn new(app_id: [u8; 20]) -> Self {
        Self {
            app_id,
            compose_hashes: Allowed::none(),
            os: Allowed::none(),
            tcb_statuses: BTreeSet::from([TcbStatus::UpToDate]),
            allow_debug: false,
            key_provider: KeyProviderRule::default(),
        }
    }

    /// Accepts one more TCB status.
    ///
    /// # Errors
    /// [`PolicyError::RevokedNeverAllowed`] for `Revoked`.
    pub fn allow_tcb_status(&mut self, status: TcbStatus) -> Result<(), PolicyError> {
        if status == TcbStatus::Revoked {
            return Err(PolicyError::RevokedNeverAllowed);
        }
        self.tcb_statuses.insert(status);
        Ok(())
    }

    pub fn allows_tcb_status(&self, status: TcbStatus) -> bool {
        status != TcbStatus::Revoked && self.tcb_statuses.contains(&status)
    }

    /// A digest of everything in the policy, so that a cached verdict is never served under another
    /// policy.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut bytes = b"mesh-attest/policy/v1".to_vec();
        bytes.extend_from_slice(&self.app_id);
        for allowed in [&self.compose_hashes, &self.os] {
            match allowed {
                Allowed::Any => bytes.push(0),
                Allowed::Only(set) => {
                    bytes.push(1);
                    bytes.extend_from_slice(&(set.len() as u64).to_be_bytes());
                    set.iter().for_each(|v| bytes.extend_from_slice(v));
                }
            }
        }
        for status in TcbStatus::ALL {
            bytes.push(u8::from(self.tcb_statuses.contains(&status)));
        }
        bytes.push(u8::from(self.allow_debug));
        bytes.extend_from_slice(&(self.key_provider.name.len() as u64).to_be_bytes());
        bytes.extend_from_slice(self.key_provider.name.as_bytes());
        match &self.key_provider.id {
            None => bytes.push(0),
            Some(id) => {
                bytes.push(1);
                bytes.extend_from_slice(id);
            }
        }
        keccak256(bytes).0
    }
}

/// The OS measurement of a dstack image: `keccak256(mrtd ‖ rtmr0 ‖ rtmr1 ‖ rtmr2)`. These four are
/// fixed by the firmware, the kernel, its command line and the initrd; RTMR0 also varies with the
/// VM's size, so one image may have several.
pub fn os_measurement(
    mrtd: &[u8; 48],
    rtmr0: &[u8; 48],
    rtmr1: &[u8; 48],
    rtmr2: &[u8; 48],
) -> [u8; 32] {
    let mut bytes = [0u8; 48 * 4];
    for (chunk, part) in bytes.chunks_exact_mut(48).zip([mrtd, rtmr0, rtmr1, rtmr2]) {
        chunk.copy_from_slice(part);
    }
    keccak256(bytes).0
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "`{0}` is not a TCB status; Intel's are UpToDate, SWHardeningNeeded, ConfigurationNeeded, \
         ConfigurationAndSWHardeningNeeded, OutOfDate, OutOfDateConfigurationNeeded, \
         TDRelaunchAdvised, TDRelaunchAdvisedConfigurationNeeded and Revoked"
    )]
    UnknownTcbStatus(String),
    #[error("a Revoked TCB can never be allowed: the platform's attestation keys are compromised")]
    RevokedNeverAllowed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcb_statuses_parse_from_intels_spelling() {
        for status in TcbStatus::ALL {
            assert_eq!(status.as_str().parse(), Ok(status));
        }
        assert_eq!(
            "SWHardeningNeeded".parse(),
            Ok(TcbStatus::SWHardeningNeeded)
        );
        assert_eq!(
            "uptodate".parse::<TcbStatus>(),
            Err(PolicyError::UnknownTcbStatus("uptodate".into()))
        );
    }

    #[test]
    fn the_default_is_up_to_date_only_and_revoked_is_never_allowed() {
        let mut policy = Policy::new([1; 20]);
        assert!(policy.allows_tcb_status(TcbStatus::UpToDate));
        assert!(!policy.allows_tcb_status(TcbStatus::OutOfDate));
        assert!(!policy.allow_debug);
        assert_eq!(policy.key_provider.name, "kms");
        assert_eq!(
            policy.allow_tcb_status(TcbStatus::Revoked),
            Err(PolicyError::RevokedNeverAllowed)
        );
        policy.allow_tcb_status(TcbStatus::OutOfDate).unwrap();
        assert!(policy.allows_tcb_status(TcbStatus::OutOfDate));
        policy.tcb_statuses.insert(TcbStatus::Revoked);
        assert!(!policy.allows_tcb_status(TcbStatus::Revoked));
    }

    #[test]
    fn allowlists_start_empty_and_any_allows_all() {
        let policy = Policy::new([1; 20]);
        assert!(!policy.compose_hashes.allows(&[0; 32]));
        assert!(!policy.os.allows(&[0; 32]));
        assert!(Allowed::<[u8; 32]>::Any.allows(&[0; 32]));
        let only: Allowed<[u8; 32]> = [[1; 32]].into_iter().collect();
        assert!(only.allows(&[1; 32]));
        assert!(!only.allows(&[2; 32]));
    }

    #[test]
    fn key_provider_rule_checks_the_name_and_a_pinned_id() {
        let kms = KeyProvider {
            name: "kms".into(),
            id: vec![1, 2],
        };
        let local = KeyProvider {
            name: "local-sgx".into(),
            id: vec![1, 2],
        };
        let mut rule = KeyProviderRule::default();
        assert!(rule.allows(&kms));
        assert!(!rule.allows(&local));
        rule.id = Some(vec![1, 3]);
        assert!(!rule.allows(&kms));
        rule.id = Some(vec![1, 2]);
        assert!(rule.allows(&kms));
    }

    #[test]
    fn os_measurement_is_keccak_of_the_four_registers_in_order() {
        let (a, b, c, d) = ([1; 48], [2; 48], [3; 48], [4; 48]);
        let mut concat = Vec::new();
        for part in [a, b, c, d] {
            concat.extend_from_slice(&part);
        }
        assert_eq!(os_measurement(&a, &b, &c, &d), keccak256(&concat).0);
        assert_ne!(
            os_measurement(&a, &b, &c, &d),
            os_measurement(&b, &a, &c, &d)
        );
    }

    #[test]
    fn the_fingerprint_changes_with_every_field() {
        let base = Policy::new([1; 20]);
        let fp = base.fingerprint();
        let mut changed = Vec::new();
        let mut p = base.clone();
        p.app_id[0] = 2;
        changed.push(p);
        let mut p = base.clone();
        p.compose_hashes = Allowed::Any;
        changed.push(p);
        let mut p = base.clone();
        p.os = [[0; 32]].into_iter().collect();
        changed.push(p);
        let mut p = base.clone();
        p.allow_tcb_status(TcbStatus::OutOfDate).unwrap();
        changed.push(p);
        let mut p = base.clone();
        p.allow_debug = true;
        changed.push(p);
        let mut p = base.clone();
        p.key_provider.id = Some(vec![]);
        changed.push(p);
        for p in changed {
            assert_ne!(p.fingerprint(), fp, "{p:?}");
        }
        assert_eq!(base.clone().fingerprint(), fp);
    }
}

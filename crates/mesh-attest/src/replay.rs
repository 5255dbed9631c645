//! The RTMR3 replay and the claims it proves.
//!
//! A supplied digest is never folded in: from dstack v0.5.6 logs carry none for RTMR3, and a log that
//! carries one could say anything. Every digest is recomputed from the event's type, name and
//! payload (dstack's version 1 format).

use serde::Deserialize;
use sha2::{Digest, Sha384};

use crate::evidence::RuntimeEvent;

/// The event after which dstack hands RTMR3 to the app (`EmitEvent`): nothing from there on speaks
/// for the platform.
pub const SYSTEM_READY: &str = "system-ready";

/// What a replayed RTMR3 log proves about the CVM, read before `system-ready`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    pub app_id: [u8; 20],
    pub compose_hash: [u8; 32],
    pub instance_id: [u8; 20],
    pub key_provider: KeyProvider,
}

/// Who released the CVM's disk key: dstack's `key-provider` event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyProvider {
    pub name: String,
    pub id: Vec<u8>,
}

/// Why an event log proves nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error(
        "event {index} ({name}) supplies a digest that is not the digest of its contents: the log \
         was altered"
    )]
    SuppliedDigestMismatch { index: usize, name: String },
    #[error(
        "the event log replays to RTMR3 {} but the quote measured {}: the log is not the one this \
         CVM booted with (reordered, injected or missing events)",
        hex::encode(replayed),
        hex::encode(quoted)
    )]
    RtmrMismatch {
        replayed: [u8; 48],
        quoted: [u8; 48],
    },
    #[error("the event log has no `system-ready` event: the CVM had not finished booting")]
    NoSystemReady,
    #[error("the event log has no `{name}` event before `system-ready`")]
    MissingClaim { name: &'static str },
    #[error("the `{name}` event is {len} bytes; it must be {expected}")]
    ClaimLength {
        name: &'static str,
        len: usize,
        expected: usize,
    },
    #[error("the `key-provider` event is not JSON {{\"name\": …, \"id\": \"<hex>\"}}: {0}")]
    KeyProviderPayload(String),
}

/// dstack's version 1 digest: `SHA384(event_type as u32 LE ‖ ":" ‖ name ‖ ":" ‖ payload)`.
pub fn event_digest(event: &RuntimeEvent) -> [u8; 48] {
    let mut hasher = Sha384::new();
    hasher.update(event.event_type.to_le_bytes());
    hasher.update(b":");
    hasher.update(event.name.as_bytes());
    hasher.update(b":");
    hasher.update(&event.payload);
    hasher.finalize().into()
}

/// RTMR3 as the events extend it from zero: `mr = SHA384(mr ‖ digest)` per event.
///
/// # Errors
/// [`ReplayError::SuppliedDigestMismatch`] for the first event whose supplied digest disagrees with
/// its contents.
pub fn replay_rtmr3(events: &[RuntimeEvent]) -> Result<[u8; 48], ReplayError> {
    let mut mr = [0u8; 48];
    for (index, event) in events.iter().enumerate() {
        let digest = event_digest(event);
        if event.digest.is_some_and(|supplied| supplied != digest) {
            return Err(ReplayError::SuppliedDigestMismatch {
                index,
                name: event.name.clone(),
            });
        }
        let mut hasher = Sha384::new();
        hasher.update(mr);
        hasher.update(digest);
        mr = hasher.finalize().into();
    }
    Ok(mr)
}

/// The claims of an event log: the first `app-id`, `compose-hash`, `instance-id` and `key-provider`
/// before `system-ready`.
///
/// Events after `system-ready` are the app's (`EmitEvent`), so they are never read: an app that
/// emits its own `instance-id` changes nothing. Only the first of each counts before it, as in
/// dstack's own verifier. This reads the log only; [`replay_rtmr3`] and the quote prove it.
///
/// # Errors
/// [`ReplayError`] naming the missing or malformed claim.
pub fn claims(events: &[RuntimeEvent]) -> Result<Claims, ReplayError> {
    let ready = events
        .iter()
        .position(|e| e.name == SYSTEM_READY)
        .ok_or(ReplayError::NoSystemReady)?;
    let boot = events.get(..ready).unwrap_or_default();
    let first = |name: &'static str| {
        boot.iter()
            .find(|e| e.name == name)
            .map(|e| e.payload.as_slice())
            .ok_or(ReplayError::MissingClaim { name })
    };
    Ok(Claims {
        app_id: fixed("app-id", first("app-id")?)?,
        compose_hash: fixed("compose-hash", first("compose-hash")?)?,
        instance_id: fixed("instance-id", first("instance-id")?)?,
        key_provider: key_provider(first("key-provider")?)?,
    })
}

fn fixed<const N: usize>(name: &'static str, payload: &[u8]) -> Result<[u8; N], ReplayError> {
    <[u8; N]>::try_from(payload).map_err(|_| ReplayError::ClaimLength {
        name,
        len: payload.len(),
        expected: N,
    })
}

fn key_provider(payload: &[u8]) -> Result<KeyProvider, ReplayError> {
    #[derive(Deserialize)]
    struct Raw {
        name: String,
        id: String,
    }
    let raw: Raw = serde_json::from_slice(payload)
        .map_err(|e| ReplayError::KeyProviderPayload(e.to_string()))?;
    let id = hex::decode(raw.id.strip_prefix("0x").unwrap_or(&raw.id))
        .map_err(|e| ReplayError::KeyProviderPayload(format!("id: {e}")))?;
    Ok(KeyProvider { name: raw.name, id })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot_log() -> Vec<RuntimeEvent> {
        vec![
            RuntimeEvent::new("system-preparing", Vec::new()),
            RuntimeEvent::new("app-id", [0xa1; 20]),
            RuntimeEvent::new("compose-hash", [0xc0; 32]),
            RuntimeEvent::new("instance-id", [0x1d; 20]),
            RuntimeEvent::new("boot-mr-done", Vec::new()),
            RuntimeEvent::new("key-provider", br#"{"name":"kms","id":"0a0b"}"#.to_vec()),
            RuntimeEvent::new("system-ready", Vec::new()),
        ]
    }

    #[test]
    fn the_digest_is_dstacks_version_1() {
        // The `system-ready` digest in dstack's simulator log at a0580293.
        let event = RuntimeEvent::new("system-ready", Vec::new());
        assert_eq!(
            hex::encode(event_digest(&event)),
            "1a76b2a80a0be71eae59f80945d876351a7a3fb8e9fd1ff1cede5734aa84ea11fd72b4edfbb6f04e5a85edd114c751bd"
        );
        let mut other_type = event.clone();
        other_type.event_type = 1;
        assert_ne!(event_digest(&other_type), event_digest(&event));
    }

    #[test]
    fn replay_folds_each_digest_into_the_previous_value() {
        let log = boot_log();
        let mut mr = [0u8; 48];
        for event in &log {
            let mut h = Sha384::new();
            h.update(mr);
            h.update(event_digest(event));
            mr = h.finalize().into();
        }
        assert_eq!(replay_rtmr3(&log), Ok(mr));
        assert_eq!(replay_rtmr3(&[]), Ok([0u8; 48]));
    }

    #[test]
    fn order_matters() {
        let log = boot_log();
        let mut swapped = log.clone();
        swapped.swap(1, 2);
        assert_ne!(replay_rtmr3(&log), replay_rtmr3(&swapped));
    }

    #[test]
    fn a_correct_supplied_digest_is_accepted_and_a_wrong_one_named() {
        let mut log = boot_log();
        log[3].digest = Some(event_digest(&log[3]));
        assert_eq!(replay_rtmr3(&log), replay_rtmr3(&boot_log()));
        log[3].digest = Some([0; 48]);
        assert_eq!(
            replay_rtmr3(&log),
            Err(ReplayError::SuppliedDigestMismatch {
                index: 3,
                name: "instance-id".into()
            })
        );
    }

    #[test]
    fn claims_come_from_the_boot_events() {
        assert_eq!(
            claims(&boot_log()),
            Ok(Claims {
                app_id: [0xa1; 20],
                compose_hash: [0xc0; 32],
                instance_id: [0x1d; 20],
                key_provider: KeyProvider {
                    name: "kms".into(),
                    id: vec![0x0a, 0x0b]
                },
            })
        );
    }

    #[test]
    fn an_instance_id_after_system_ready_changes_nothing() {
        let mut log = boot_log();
        log.push(RuntimeEvent::new("instance-id", [0xee; 20]));
        log.push(RuntimeEvent::new("app-id", [0xee; 20]));
        let got = claims(&log).unwrap();
        assert_eq!(got.instance_id, [0x1d; 20]);
        assert_eq!(got.app_id, [0xa1; 20]);
    }

    #[test]
    fn the_first_instance_id_before_system_ready_wins() {
        let mut log = boot_log();
        log.insert(4, RuntimeEvent::new("instance-id", [0xee; 20]));
        assert_eq!(claims(&log).unwrap().instance_id, [0x1d; 20]);
    }

    #[test]
    fn a_log_without_system_ready_proves_nothing() {
        let mut log = boot_log();
        log.pop();
        assert_eq!(claims(&log), Err(ReplayError::NoSystemReady));
    }

    #[test]
    fn a_claim_only_after_system_ready_is_missing() {
        let mut log = boot_log();
        let instance = log.remove(3);
        log.push(instance);
        assert_eq!(
            claims(&log),
            Err(ReplayError::MissingClaim {
                name: "instance-id"
            })
        );
    }

    #[test]
    fn wrongly_sized_claims_are_named() {
        let mut log = boot_log();
        log[2].payload.pop();
        assert_eq!(
            claims(&log),
            Err(ReplayError::ClaimLength {
                name: "compose-hash",
                len: 31,
                expected: 32
            })
        );
        let mut log = boot_log();
        log[5].payload = b"kms".to_vec();
        assert!(matches!(
            claims(&log),
            Err(ReplayError::KeyProviderPayload(_))
        ));
    }
}

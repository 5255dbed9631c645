//! Fixtures for tests and benchmarks of what checks evidence (feature `testing`).

use crate::evidence::RuntimeEvent;

/// What dstack measures into RTMR3 as a CVM of `app` running `compose` boots as `instance` (dstack-util's
/// `system_setup`, in its order), its keys from a KMS (key provider `kms`, id `00`).
pub fn boot_log(app: [u8; 20], compose: [u8; 32], instance: [u8; 20]) -> Vec<RuntimeEvent> {
    vec![
        RuntimeEvent::new("system-preparing", Vec::new()),
        RuntimeEvent::new("app-id", app),
        RuntimeEvent::new("compose-hash", compose),
        RuntimeEvent::new("instance-id", instance),
        RuntimeEvent::new("boot-mr-done", Vec::new()),
        RuntimeEvent::new("key-provider", br#"{"name":"kms","id":"00"}"#.to_vec()),
        RuntimeEvent::new("system-ready", Vec::new()),
    ]
}

//! Fixtures for tests and benchmarks of what checks evidence (feature `testing`).

use crate::evidence::RuntimeEvent;

/// What dstack measures into RTMR3 as a CVM of `app` running `compose` boots as `instance` (dstack-util's
/// `system_setup`, in its order), its keys from a KMS (key provider `kms`, id `00`).
pub fn boot_log(app: [u8; 20], compose: [u8; 32], instance: [u8; 20]) -> Vec<RuntimeEvent> {
    boot_log_from_kms(app, compose, instance, &[0])
}

/// [`boot_log`], its keys from the KMS whose id is `kms_id`.
pub fn boot_log_from_kms(
    app: [u8; 20],
    compose: [u8; 32],
    instance: [u8; 20],
    kms_id: &[u8],
) -> Vec<RuntimeEvent> {
    let key_provider = format!(
        r#"{{"name":"kms","id":"{}"}}"#,
        alloy_primitives::hex::encode(kms_id)
    );
    vec![
        RuntimeEvent::new("system-preparing", Vec::new()),
        RuntimeEvent::new("app-id", app),
        RuntimeEvent::new("compose-hash", compose),
        RuntimeEvent::new("instance-id", instance),
        RuntimeEvent::new("boot-mr-done", Vec::new()),
        RuntimeEvent::new("key-provider", key_provider.into_bytes()),
        RuntimeEvent::new("system-ready", Vec::new()),
    ]
}

//! dstack's two simulator fixtures, value for value (dstack `sdk/simulator/appkeys.json` and its event
//! log or attestation). Fixtures carry the app key and the KMS signature, never the KMS root key.

use alloy_primitives::{Address, address, hex};

/// One of dstack's simulator fixtures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fixture {
    /// Short name for logs.
    pub name: &'static str,
    /// Info `app_id`.
    pub app_id: [u8; 20],
    /// Info `instance_id`.
    pub instance_id: [u8; 20],
    /// Info `compose_hash`. Not sha256 of our synthetic app-compose: the fixture's own file is not public.
    pub compose_hash: [u8; 32],
    /// Info `app_name`.
    pub app_name: &'static str,
    /// Info `device_id`.
    pub device_id: [u8; 32],
    /// Info `os_image_hash`; empty where the fixture has none.
    pub os_image_hash: &'static [u8],
    /// `appkeys.json` `k256_key`.
    pub app_key: [u8; 32],
    /// `appkeys.json` `k256_signature`.
    pub kms_signature: [u8; 65],
    /// The address that `kms_signature` recovers to.
    pub kms_root: Address,
}

/// The simulator as of Aug 2025 (dstack `a0580293`, ~v0.5.4), which the seed project used.
pub const FIXTURE_A: Fixture = Fixture {
    name: "a (dstack simulator, Aug 2025)",
    app_id: hex!("ea549f02e1a25fabd1cb788380e033ec5461b2ff"),
    instance_id: hex!("59df8036b824b0aac54f8998b9e1fb2a0cfc5d3a"),
    compose_hash: hex!("ea549f02e1a25fabd1cb788380e033ec5461b2ffe4328d753642cf035452e48b"),
    app_name: "kvin-nb",
    device_id: hex!("da2d377e04b7133ec1287a18d465fa44ae9dbb08d929166c6bdb414f38a2acd3"),
    os_image_hash: &[],
    app_key: hex!("e0e5d254fb944dcc370a2e5288b336a1e809871545a73ee645368957fefa31f9"),
    kms_signature: hex!(
        "2f431c7956869a4fe3e028c5f9518a935e2d01e81a3628f8b1d178fc2fac7b6d2405ace433624e5568e23c4ed291dbaf60dac79b756837c0fe745154ebfdc0a601"
    ),
    kms_root: address!("8f2cF602C9695b23130367ed78d8F557554de7C5"),
};

/// The simulator from 2026-01-15 on (dstack HEAD).
pub const FIXTURE_B: Fixture = Fixture {
    name: "b (dstack simulator, 2026)",
    app_id: hex!("5bb4ff9a3837357f19dc176407a5709c62eb6c56"),
    instance_id: hex!("1691ed1b47506cad7d08834668691d88246f5b1f"),
    compose_hash: hex!("c143116fef3940e7f776bfc0919c256232ae5338a6e948c96b711e0b2383483a"),
    app_name: "guest-agent",
    // Fixture B's device id is not among the published vectors; this is sha256 of 20 zero bytes
    // (an empty quote `user_data`), flagged as simulated like everything else here.
    device_id: hex!("de47c9b27eb8d300dbb5f2c353e632c393262cf06340c4fa7f1b40c4cbd36f90"),
    os_image_hash: &hex!("e61be43dd1cc6a6f5edefd7c51b608983780839b0000ce60dd99737dcffe09b9"),
    app_key: hex!("d6e88992cdeeee35fe70b5db61ab66cdb191fb9b6ec9313757ef162dd7214d5d"),
    kms_signature: hex!(
        "9e618603e72d01fedb82deff6daf2d62a572becf0059eec3f89c1ab40e1f2e594d2a283f843f34e8f39e4cc49a612496ce67223a12ac923f8efe330346dfc6c500"
    ),
    kms_root: address!("A7F6043C29f9cc1d9D6aCF554c53E0c6792AaEAf"),
};

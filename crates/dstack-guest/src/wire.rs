//! The guest agent's JSON wire types, shared by the [client](crate::DstackClient) and `dstack-simulator`.
//!
//! dstack's pRPC JSON rules: every `bytes` field is lowercase hex without `0x` on output and accepts a
//! leading `0x` on input; every field defaults when missing; unknown fields are ignored.
//!
//! Responses reuse dstack's own `dstack-sdk-types` where they match the wire. That crate has no request
//! types, and its `InfoResponse` models `tcb_info` as an object although the agent sends a JSON *string*
//! (and its `TcbInfo` lacks `mr_aggregated`), so those are defined here.

use serde::{Deserialize, Serialize};

pub use dstack_sdk_types::dstack::{
    EventLog, GetKeyResponse, GetQuoteResponse, GetTlsKeyResponse, SignResponse, VerifyResponse,
    VersionResponse,
};
pub use dstack_sdk_types::tappd::{DeriveKeyResponse, TdxQuoteResponse};

/// Serde for pRPC `bytes` fields: lowercase hex out, optional `0x` in.
pub mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes bytes as lowercase hex without `0x`, as the guest agent does.
    ///
    /// # Errors
    /// Only the serializer's own errors.
    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    /// Reads hex with or without a leading `0x`, as the guest agent accepts.
    ///
    /// # Errors
    /// When the string is not hex.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        super::decode_hex(&s).map_err(serde::de::Error::custom)
    }
}

/// Decodes hex with an optional `0x`/`0X` prefix.
///
/// # Errors
/// When the rest is not an even number of hex digits.
pub fn decode_hex(s: &str) -> Result<Vec<u8>, hex::FromHexError> {
    let s = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    hex::decode(s)
}

/// `POST /GetKey`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GetKeyArgs {
    /// Derivation path; the only input to the key besides the app key.
    pub path: String,
    /// Enters the app signature's message only; does not change the key.
    pub purpose: String,
    /// `""`, `"secp256k1"`, `"k256"` or `"ed25519"`; older agents ignore it.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub algorithm: String,
}

/// `POST /GetQuote`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GetQuoteArgs {
    /// At most 64 bytes; right-padded with zeros to 64.
    #[serde(with = "hex_bytes")]
    pub report_data: Vec<u8>,
}

/// `POST /GetTlsKey`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GetTlsKeyArgs {
    /// Certificate subject common name.
    pub subject: String,
    /// Subject alternative names (DNS names or IP addresses).
    pub alt_names: Vec<String>,
    /// Embed an RA-TLS quote.
    pub usage_ra_tls: bool,
    /// Allow TLS server authentication.
    pub usage_server_auth: bool,
    /// Allow TLS client authentication.
    pub usage_client_auth: bool,
    /// Validity start, seconds since the epoch (dstack ≥ 0.5.7).
    pub not_before: Option<u64>,
    /// Validity end, seconds since the epoch (dstack ≥ 0.5.7).
    pub not_after: Option<u64>,
    /// Embed the app's info in the certificate (dstack ≥ 0.5.7).
    pub with_app_info: bool,
}

impl Default for GetTlsKeyArgs {
    fn default() -> Self {
        Self {
            subject: String::new(),
            alt_names: Vec::new(),
            usage_ra_tls: false,
            // The SDKs default to a server certificate.
            usage_server_auth: true,
            usage_client_auth: false,
            not_before: None,
            not_after: None,
            with_app_info: false,
        }
    }
}

/// `POST /Sign` (dstack ≥ 0.5.6).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SignArgs {
    /// `"secp256k1"`, `"secp256k1_prehashed"` or `"ed25519"`.
    pub algorithm: String,
    /// The message (or the 32-byte digest for `secp256k1_prehashed`).
    #[serde(with = "hex_bytes")]
    pub data: Vec<u8>,
}

/// `POST /Verify` (dstack ≥ 0.5.6).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct VerifyArgs {
    /// As for [`SignArgs::algorithm`].
    pub algorithm: String,
    /// The signed message.
    #[serde(with = "hex_bytes")]
    pub data: Vec<u8>,
    /// The signature to check.
    #[serde(with = "hex_bytes")]
    pub signature: Vec<u8>,
    /// Compressed secp256k1 or 32-byte Ed25519 public key.
    #[serde(with = "hex_bytes")]
    pub public_key: Vec<u8>,
}

/// `POST /EmitEvent` (2025-04 to 2026-07; a no-op in simulators).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EmitEventArgs {
    /// Event name.
    pub event: String,
    /// Event payload.
    #[serde(with = "hex_bytes")]
    pub payload: Vec<u8>,
}

/// `POST /Info` reply. `tcb_info` is a JSON document *inside a string*, as the agent sends it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InfoResponse {
    /// 20-byte app id, hex.
    pub app_id: String,
    /// 20-byte instance id, hex; empty when app-compose sets `no_instance_id`.
    pub instance_id: String,
    /// PEM chain of the app's demo certificate.
    pub app_cert: String,
    /// Pretty-printed JSON of [`TcbInfo`].
    pub tcb_info: String,
    /// App-compose `name`.
    pub app_name: String,
    /// 32-byte device id, hex.
    pub device_id: String,
    /// Aggregated measurement, hex.
    pub mr_aggregated: String,
    /// OS image hash, hex.
    pub os_image_hash: String,
    /// JSON string `{"name": …, "id": …}` naming who provided the app keys.
    pub key_provider_info: String,
    /// sha256 of app-compose.json, hex.
    pub compose_hash: String,
    /// JSON string describing the VM.
    pub vm_config: String,
    /// Cloud vendor (dstack ≥ 0.5.7); empty elsewhere.
    pub cloud_vendor: String,
    /// Cloud product (dstack ≥ 0.5.7); empty elsewhere.
    pub cloud_product: String,
}

/// The document inside [`InfoResponse::tcb_info`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcbInfo {
    /// TD measurement, hex 48 bytes.
    pub mrtd: String,
    /// RTMR0, hex 48 bytes.
    pub rtmr0: String,
    /// RTMR1, hex 48 bytes.
    pub rtmr1: String,
    /// RTMR2, hex 48 bytes.
    pub rtmr2: String,
    /// RTMR3, hex 48 bytes.
    pub rtmr3: String,
    /// Aggregated measurement, hex.
    pub mr_aggregated: String,
    /// OS image hash, hex.
    pub os_image_hash: String,
    /// Compose hash, hex 32 bytes.
    pub compose_hash: String,
    /// Device id, hex 32 bytes.
    pub device_id: String,
    /// The event log whose replay gives the RTMRs.
    pub event_log: Vec<EventLog>,
    /// The raw app-compose.json text.
    pub app_compose: String,
}

/// `POST /prpc/Tappd.DeriveK256Key`: GetKey under the legacy field names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeriveK256KeyArgs {
    /// As for [`GetKeyArgs::path`].
    pub path: String,
    /// As for [`GetKeyArgs::purpose`].
    pub purpose: String,
}

/// `/prpc/Tappd.DeriveK256Key` reply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeriveK256KeyResponse {
    /// The derived key, hex 32 bytes.
    pub k256_key: String,
    /// `[app signature, KMS signature]`, hex 65 bytes each.
    pub k256_signature_chain: Vec<String>,
}

/// `POST /prpc/Tappd.DeriveKey`: a P-256 TLS key derived from the app key and a path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeriveKeyArgs {
    /// Derivation path.
    pub path: String,
    /// Certificate subject.
    pub subject: String,
    /// Subject alternative names.
    pub alt_names: Vec<String>,
    /// Embed an RA-TLS quote.
    pub usage_ra_tls: bool,
    /// Allow TLS server authentication.
    pub usage_server_auth: bool,
    /// Allow TLS client authentication.
    pub usage_client_auth: bool,
    /// When set, the key is random instead of derived.
    pub random_seed: bool,
}

/// `POST /prpc/Tappd.TdxQuote`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TdxQuoteArgs {
    /// Data to hash into the report data (or to pass through with `raw`).
    #[serde(with = "hex_bytes")]
    pub report_data: Vec<u8>,
    /// `sha256`, `sha384`, `sha512` (default), `keccak256` or `raw`.
    pub hash_algorithm: String,
    /// Prefix hashed before the data; default `app-data:`.
    pub prefix: String,
}

/// `POST /prpc/Tappd.RawQuote`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawQuoteArgs {
    /// Exactly the report data, at most 64 bytes.
    #[serde(with = "hex_bytes")]
    pub report_data: Vec<u8>,
}

/// The body of every error reply: HTTP 400 (or 4xx) with `{"error": "…"}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// The agent's message.
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte fields accept a `0x` prefix on input, as the agent's decoder strips it.
    #[test]
    fn hex_fields_accept_0x_prefix() {
        let a: GetQuoteArgs = serde_json::from_str(r#"{"report_data":"0xAbCd"}"#).unwrap();
        assert_eq!(a.report_data, vec![0xab, 0xcd]);
        let b: GetQuoteArgs = serde_json::from_str(r#"{"report_data":"abcd"}"#).unwrap();
        assert_eq!(a, b);
    }

    /// Byte fields are written as lowercase hex without `0x`.
    #[test]
    fn hex_fields_serialize_lowercase_without_prefix() {
        let a = GetQuoteArgs {
            report_data: vec![0xAB, 0x01],
        };
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            r#"{"report_data":"ab01"}"#
        );
    }

    /// Missing fields default, so `{}` is a valid request of every kind.
    #[test]
    fn missing_fields_default() {
        let k: GetKeyArgs = serde_json::from_str("{}").unwrap();
        assert_eq!(k, GetKeyArgs::default());
        let t: GetTlsKeyArgs = serde_json::from_str("{}").unwrap();
        assert!(t.usage_server_auth);
        let i: InfoResponse = serde_json::from_str(r#"{"app_id":"ab","extra":1}"#).unwrap();
        assert_eq!(i.app_id, "ab");
    }

    /// Bad hex is an error naming the problem, not a silent empty value.
    #[test]
    fn bad_hex_is_rejected() {
        let err = serde_json::from_str::<GetQuoteArgs>(r#"{"report_data":"0xzz"}"#).unwrap_err();
        assert!(err.to_string().contains("Invalid character"), "{err}");
    }
}

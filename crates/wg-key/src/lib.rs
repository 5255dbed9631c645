//! WireGuard keys as dstack-mesh writes them: [`Key`], a public key, which is how WireGuard names a peer,
//! and [`PrivateKey`], which never prints. The contract, the interface, the API and the tests all use these
//! two, never bare bytes.

pub mod names;

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use x25519_dalek as x25519;
use zeroize::Zeroize as _;

/// A Curve25519 private key. `Debug` and `Display` print `<redacted>`; the bytes are zeroed on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateKey([u8; 32]);

impl Drop for PrivateKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl PrivateKey {
    /// Wraps raw key bytes (as produced by `wg genkey | base64 -d`).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw bytes. Only the UAPI `get` (root-only socket) and the noise layer read them.
    pub fn expose_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The public key belonging to this private key.
    pub fn public_key(&self) -> Key {
        Key(x25519::PublicKey::from(&self.to_secret()).to_bytes())
    }

    /// The key as x25519-dalek holds it, for the noise layer.
    pub fn to_secret(&self) -> x25519::StaticSecret {
        x25519::StaticSecret::from(self.0)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

impl fmt::Display for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A preshared key, WireGuard's optional symmetric key per peer. `Debug` prints `<redacted>`; the bytes are
/// zeroed on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct PresharedKey([u8; 32]);

impl Drop for PresharedKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl PresharedKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw bytes. Only the UAPI `get` (root-only socket) and the noise layer read them.
    pub fn expose_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresharedKey(<redacted>)")
    }
}

/// A Curve25519 public key: how WireGuard names a peer. `Display` is base64, as `wg` prints it and the API
/// serves it; `Debug` is its first eight characters, for logs.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key([u8; 32]);

impl Key {
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl From<[u8; 32]> for Key {
    fn from(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&BASE64.encode(self.0))
    }
}

/// A prefix of the key, and its name in logs when it has one ([`names`]).
impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let full = BASE64.encode(self.0);
        match names::of(&self.0) {
            Some(name) => write!(f, "{}…({name})", &full[..8]),
            None => write!(f, "{}…", &full[..8]),
        }
    }
}

impl serde::Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Text that is not a base64 WireGuard key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a WireGuard key (32 bytes in base64, as `wg` prints them)")]
pub struct KeyParseError(pub String);

impl std::str::FromStr for Key {
    type Err = KeyParseError;
    fn from_str(s: &str) -> Result<Self, KeyParseError> {
        BASE64
            .decode(s.trim())
            .ok()
            .and_then(|v| <[u8; 32]>::try_from(v).ok())
            .map(Self)
            .ok_or_else(|| KeyParseError(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The private key never shows up in Debug or Display output.
    #[test]
    fn private_key_is_redacted() {
        let key = PrivateKey::from_bytes([0xab; 32]);
        assert_eq!(format!("{key:?}"), "PrivateKey(<redacted>)");
        assert_eq!(format!("{key}"), "<redacted>");
        assert!(!format!("{key:?}").contains("ab"));
    }

    /// Nor does a preshared key, even inside a struct's derived Debug.
    #[test]
    fn preshared_key_is_redacted() {
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Holder(Option<PresharedKey>);
        let shown = format!("{:?}", Holder(Some(PresharedKey::from_bytes([0xab; 32]))));
        assert_eq!(shown, "Holder(Some(PresharedKey(<redacted>)))");
    }

    /// A key shows as base64 in full, as a short prefix in logs, and parses back from base64.
    #[test]
    fn keys_display_as_base64_debug_as_a_prefix_and_parse_back() {
        let key = Key::from_bytes([0xfb; 32]);
        let text = key.to_string();
        assert_eq!(text.len(), 44);
        assert_eq!(format!("{key:?}"), format!("{}…", &text[..8]));
        assert_eq!(text.parse::<Key>(), Ok(key));
        assert!("not a key".parse::<Key>().is_err());
        assert!(BASE64.encode([1u8; 31]).parse::<Key>().is_err(), "31 bytes");
    }

    /// A key the agent named prints its name in `Debug`, as log lines show it, until the names change; its
    /// `Display`, which WireGuard's tools and the API read, never does.
    #[test]
    fn a_named_key_shows_its_name_in_debug_until_renamed() {
        let (named, other) = (Key::from_bytes([0x31; 32]), Key::from_bytes([0x32; 32]));
        let prefix = &named.to_string()[..8];
        names::set([(named, "seat 3".to_owned())]);
        assert_eq!(format!("{named:?}"), format!("{prefix}…(seat 3)"));
        assert!(!format!("{other:?}").contains("seat"));
        assert_eq!(named.to_string().len(), 44, "Display stays the bare key");
        names::set([(other, "seat 4".to_owned())]);
        assert_eq!(
            format!("{named:?}"),
            format!("{prefix}…"),
            "left out: nameless again"
        );
        names::update([other], [(named, "seat 5".to_owned())]);
        assert_eq!(
            format!("{named:?}"),
            format!("{prefix}…(seat 5)"),
            "named by an update"
        );
        assert!(!format!("{other:?}").contains("seat"), "forgotten by it");
    }

    /// In JSON a key is its base64 string, and anything else is refused with the reason.
    #[test]
    fn keys_are_base64_strings_in_json() {
        let key = Key::from_bytes([7; 32]);
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(json, format!("\"{key}\""));
        assert_eq!(serde_json::from_str::<Key>(&json).unwrap(), key);
        let err = serde_json::from_str::<Key>("\"AAAA\"").unwrap_err();
        assert!(err.to_string().contains("is not a WireGuard key"), "{err}");
    }

    /// The public key is the one x25519 derives, as `wg pubkey` prints it.
    #[test]
    fn the_public_key_is_x25519s() {
        // RFC 7748, section 6.1: Alice's private and public keys.
        let private = PrivateKey::from_bytes(
            *b"\x77\x07\x6d\x0a\x73\x18\xa5\x7d\x3c\x16\xc1\x72\x51\xb2\x66\x45\xdf\x4c\x2f\x87\xeb\xc0\x99\x2a\xb1\x77\xfb\xa5\x1d\xb9\x2c\x2a",
        );
        assert_eq!(
            private.public_key().as_bytes(),
            b"\x85\x20\xf0\x09\x89\x30\xa7\x54\x74\x8b\x7d\xdc\xb4\x3e\xf7\x5a\x0d\xbf\x3a\x0d\x26\x38\x1a\xf4\xeb\xa4\xa9\x8e\xaa\x9b\x4e\x6a"
        );
    }
}

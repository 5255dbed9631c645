//! Key material: the redacting private-key newtype and a printable key prefix for logs.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use boringtun::x25519;
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
    pub fn public_key(&self) -> [u8; 32] {
        x25519::PublicKey::from(&self.to_secret()).to_bytes()
    }

    pub(crate) fn to_secret(&self) -> x25519::StaticSecret {
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

/// The first characters of a public key in `wg`'s base64 form, for logs and error messages.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyPrefix(pub [u8; 32]);

impl fmt::Display for KeyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let full = BASE64.encode(self.0);
        write!(f, "{}…", &full[..8])
    }
}

impl fmt::Debug for KeyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
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

    /// A key prefix is the first eight base64 characters followed by an ellipsis.
    #[test]
    fn key_prefix_is_short_base64() {
        assert_eq!(KeyPrefix([0; 32]).to_string(), "AAAAAAAA…");
    }
}

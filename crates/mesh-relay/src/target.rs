//! Where a peer's relay is: worked out from the gateway URL in its record, so the relay needs no new field
//! on-chain. dstack's gateway routes `<instance_id>-<port>[s|g].<base_domain>` to that port of that
//! instance; the relay is the same name with the relay port, without a suffix, so that the gateway
//! terminates TLS and forwards plain TCP.

use std::fmt;

/// dstack's app and instance ids are 40 hex digits; a short hex word ("db", "cafe") is an ordinary name.
const MIN_ID_LEN: usize = 8;

/// A relay to dial: the name the gateway routes by, and the gateway's TCP port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RelayTarget {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for RelayTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port == 443 {
            write!(f, "https://{}", self.host)
        } else {
            write!(f, "https://{}:{}", self.host, self.port)
        }
    }
}

/// Why a gateway URL gives no relay.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error("{url:?} is not a URL: {reason}")]
    NotUrl { url: String, reason: String },
    #[error("{0:?} is not https; the gateway serves TLS")]
    NotHttps(String),
    #[error(
        "{0:?} is not a dstack gateway name (<instance_id>-<port>[s|g].<base_domain>), so its relay cannot be found"
    )]
    NotGatewayName(String),
}

/// The relay of the node whose gateway URL is `gateway_url`, on `relay_port`.
///
/// # Errors
/// [`TargetError`] when the URL is not a dstack gateway URL.
pub fn relay_target(gateway_url: &str, relay_port: u16) -> Result<RelayTarget, TargetError> {
    let url = url::Url::parse(gateway_url).map_err(|e| TargetError::NotUrl {
        url: gateway_url.to_owned(),
        reason: e.to_string(),
    })?;
    if url.scheme() != "https" {
        return Err(TargetError::NotHttps(gateway_url.to_owned()));
    }
    let not_gateway = || TargetError::NotGatewayName(gateway_url.to_owned());
    let Some(url::Host::Domain(host)) = url.host() else {
        return Err(not_gateway());
    };
    let (first, base) = host.split_once('.').ok_or_else(not_gateway)?;
    let id = match first.split_once('-') {
        Some((id, port)) => {
            let digits = port.trim_end_matches(['s', 'g']);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(not_gateway());
            }
            id
        }
        None => first,
    };
    if id.len() < MIN_ID_LEN || !id.bytes().all(|b| b.is_ascii_hexdigit()) || base.is_empty() {
        return Err(not_gateway());
    }
    Ok(RelayTarget {
        host: format!("{id}-{relay_port}.{base}"),
        port: url.port().unwrap_or(443),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_is_the_gateway_name_with_the_relay_port() {
        let t = relay_target(
            "https://3327603e03f5bd1f830812ca4a789277fc31f577-8080.test0.dstack.org",
            51820,
        )
        .unwrap();
        assert_eq!(
            t.host,
            "3327603e03f5bd1f830812ca4a789277fc31f577-51820.test0.dstack.org"
        );
        assert_eq!(t.port, 443);
        assert_eq!(
            t.to_string(),
            "https://3327603e03f5bd1f830812ca4a789277fc31f577-51820.test0.dstack.org"
        );
    }

    #[test]
    fn a_passthrough_name_and_a_gateway_port_are_handled() {
        let t = relay_target("https://abcdef123-443s.mesh.test:8443/some/path", 51820).unwrap();
        assert_eq!(
            t.host, "abcdef123-51820.mesh.test",
            "no s: the gateway terminates TLS"
        );
        assert_eq!(t.port, 8443);
        assert_eq!(t.to_string(), "https://abcdef123-51820.mesh.test:8443");
        let t = relay_target("https://abcdef123.mesh.test", 7000).unwrap();
        assert_eq!(t.host, "abcdef123-7000.mesh.test");
    }

    #[test]
    fn urls_that_are_not_gateway_names_are_refused_with_the_reason() {
        for (url, want) in [
            ("http://ab-80.x.org", "not https"),
            ("https://10.0.0.1:443", "not a dstack gateway name"),
            ("https://example.com", "not a dstack gateway name"),
            (
                "https://db.internal-8080.example",
                "not a dstack gateway name",
            ),
            ("https://ab-80x.example", "not a dstack gateway name"),
            ("not a url", "is not a URL"),
        ] {
            let err = relay_target(url, 51820).unwrap_err().to_string();
            assert!(err.contains(want), "{url}: {err}");
        }
    }
}

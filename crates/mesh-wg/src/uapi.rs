//! Sans-IO half of the cross-platform UAPI (<https://www.wireguard.com/xplatform/>): rendering
//! `get=1` replies and parsing `set=1` bodies. The socket server lives in `uapi_server`.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::UNIX_EPOCH;

use ipnetwork::{IpNetwork, Ipv4Network};
use nix::errno::Errno;

use super::Error;
use super::config::PeerStatus;
use wg_key::{Key, PresharedKey, PrivateKey};

/// Everything a `get=1` reply shows.
#[derive(Debug, Clone)]
pub(crate) struct DeviceSnapshot {
    pub(crate) private_key: PrivateKey,
    pub(crate) listen_port: u16,
    pub(crate) fwmark: u32,
    pub(crate) peers: Vec<PeerSnapshot>,
}

/// One peer in a `get=1` reply.
#[derive(Debug, Clone)]
pub(crate) struct PeerSnapshot {
    pub(crate) status: PeerStatus,
    pub(crate) preshared_key: Option<PresharedKey>,
}

/// A parsed `set=1` request; applied in order by the device.
#[derive(Debug, Default)]
pub(crate) struct SetRequest {
    pub(crate) private_key: Option<PrivateKey>,
    pub(crate) listen_port: Option<u16>,
    pub(crate) fwmark: Option<u32>,
    pub(crate) replace_peers: bool,
    pub(crate) peers: Vec<PeerUpdate>,
}

/// Changes to one peer within a `set=1` request. `None` fields are left as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeerUpdate {
    pub(crate) public_key: Key,
    pub(crate) remove: bool,
    pub(crate) update_only: bool,
    /// `Some(None)` clears the preshared key (all-zero key on the wire).
    pub(crate) preshared_key: Option<Option<PresharedKey>>,
    pub(crate) endpoint: Option<SocketAddr>,
    /// `Some(0)` turns persistent keepalive off.
    pub(crate) persistent_keepalive: Option<u16>,
    pub(crate) replace_allowed_ips: bool,
    pub(crate) allowed_ips: Vec<Ipv4Network>,
}

impl PeerUpdate {
    pub(crate) fn new(public_key: Key) -> Self {
        Self {
            public_key,
            remove: false,
            update_only: false,
            preshared_key: None,
            endpoint: None,
            persistent_keepalive: None,
            replace_allowed_ips: false,
            allowed_ips: Vec::new(),
        }
    }
}

/// The operation named on a request's first line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    Get,
    Set,
}

/// Parses the first line of a request (`get=1` or `set=1`, without the newline).
pub(crate) fn parse_operation(line: &str) -> Result<Operation, Error> {
    match line {
        "get=1" => Ok(Operation::Get),
        "set=1" => Ok(Operation::Set),
        _ => Err(Error::UapiRequest {
            key: line.split('=').next().unwrap_or_default().to_owned(),
            reason: "unknown operation; expected get=1 or set=1".to_owned(),
            errno: -(Errno::EPROTO as i32),
        }),
    }
}

/// Renders the full reply to `get=1`, ending with `errno=0` and a blank line.
pub(crate) fn render_get(snapshot: &DeviceSnapshot) -> String {
    let mut out = String::new();
    // `write!` to a String cannot fail.
    let _ = writeln!(
        out,
        "private_key={}",
        hex::encode(snapshot.private_key.expose_bytes())
    );
    let _ = writeln!(out, "listen_port={}", snapshot.listen_port);
    if snapshot.fwmark != 0 {
        let _ = writeln!(out, "fwmark={}", snapshot.fwmark);
    }
    for peer in &snapshot.peers {
        let s = &peer.status;
        let _ = writeln!(out, "public_key={}", hex::encode(s.public_key.as_bytes()));
        if let Some(psk) = &peer.preshared_key {
            let _ = writeln!(out, "preshared_key={}", hex::encode(psk.expose_bytes()));
        }
        if let Some(endpoint) = s.endpoint {
            let _ = writeln!(out, "endpoint={endpoint}");
        }
        // The kernel's convention: a UNIX timestamp, 0/0 for "never".
        let since_epoch = s
            .last_handshake
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .unwrap_or_default();
        let _ = writeln!(out, "last_handshake_time_sec={}", since_epoch.as_secs());
        let _ = writeln!(
            out,
            "last_handshake_time_nsec={}",
            since_epoch.subsec_nanos()
        );
        let _ = writeln!(out, "tx_bytes={}", s.tx_bytes);
        let _ = writeln!(out, "rx_bytes={}", s.rx_bytes);
        let _ = writeln!(
            out,
            "persistent_keepalive_interval={}",
            s.persistent_keepalive.unwrap_or(0)
        );
        for net in &s.allowed_ips {
            let _ = writeln!(out, "allowed_ip={net}");
        }
        out.push_str("protocol_version=1\n");
    }
    out.push_str(&render_errno(0));
    out
}

/// The closing `errno=N` line and blank line of every reply.
pub(crate) fn render_errno(errno: i32) -> String {
    format!("errno={errno}\n\n")
}

fn invalid(key: &str, reason: impl Into<String>) -> Error {
    Error::UapiRequest {
        key: key.to_owned(),
        reason: reason.into(),
        errno: -(Errno::EINVAL as i32),
    }
}

fn unsupported(key: &str, reason: impl Into<String>) -> Error {
    Error::UapiRequest {
        key: key.to_owned(),
        reason: reason.into(),
        errno: -(Errno::EAFNOSUPPORT as i32),
    }
}

fn parse_key(key: &str, value: &str) -> Result<[u8; 32], Error> {
    let mut out = [0u8; 32];
    // Never echo the value: it may be a private key.
    hex::decode_to_slice(value, &mut out)
        .map_err(|_| invalid(key, "expected 64 hexadecimal characters"))?;
    Ok(out)
}

fn parse_true(key: &str, value: &str) -> Result<(), Error> {
    if value == "true" {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("only \"true\" is accepted, got {value:?}"),
        ))
    }
}

fn parse_num<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, Error> {
    value
        .parse()
        .map_err(|_| invalid(key, format!("not a valid number: {value:?}")))
}

/// Parses the body of a `set=1` request: the `key=value` lines after `set=1`, without the
/// terminating blank line.
///
/// # Errors
/// [`Error::UapiRequest`] with errno `-EINVAL` for malformed lines, unknown keys or peer keys
/// before any `public_key`; `-EAFNOSUPPORT` for IPv6 endpoints or allowed IPs.
pub(crate) fn parse_set<'a>(lines: impl IntoIterator<Item = &'a str>) -> Result<SetRequest, Error> {
    let mut req = SetRequest::default();
    let mut peer: Option<PeerUpdate> = None;
    for line in lines {
        let Some((key, value)) = line.split_once('=') else {
            return Err(invalid(line, "expected key=value"));
        };
        if key == "public_key" {
            if let Some(done) = peer.take() {
                req.peers.push(done);
            }
            peer = Some(PeerUpdate::new(Key::from_bytes(parse_key(key, value)?)));
            continue;
        }
        match (key, peer.as_mut()) {
            ("private_key", None) => {
                let bytes = parse_key(key, value)?;
                if bytes == [0; 32] {
                    return Err(invalid(key, "clearing the private key is not supported"));
                }
                req.private_key = Some(PrivateKey::from_bytes(bytes));
            }
            ("listen_port", None) => req.listen_port = Some(parse_num(key, value)?),
            ("fwmark", None) => req.fwmark = Some(parse_num(key, value)?),
            ("replace_peers", None) => {
                parse_true(key, value)?;
                req.replace_peers = true;
            }
            ("remove", Some(p)) => {
                parse_true(key, value)?;
                p.remove = true;
            }
            ("update_only", Some(p)) => {
                parse_true(key, value)?;
                p.update_only = true;
            }
            ("preshared_key", Some(p)) => {
                let bytes = parse_key(key, value)?;
                p.preshared_key = Some((bytes != [0; 32]).then(|| PresharedKey::from_bytes(bytes)));
            }
            ("endpoint", Some(p)) => {
                let addr: SocketAddr = value
                    .parse()
                    .map_err(|_| invalid(key, format!("not an IP:port: {value:?}")))?;
                if addr.is_ipv6() {
                    return Err(unsupported(key, "IPv6 endpoints are not supported"));
                }
                p.endpoint = Some(addr);
            }
            ("persistent_keepalive_interval", Some(p)) => {
                p.persistent_keepalive = Some(parse_num(key, value)?);
            }
            ("replace_allowed_ips", Some(p)) => {
                parse_true(key, value)?;
                p.replace_allowed_ips = true;
            }
            ("allowed_ip", Some(p)) => {
                let net: IpNetwork = if value.contains('/') {
                    value.parse().ok()
                } else {
                    value.parse::<IpAddr>().ok().map(IpNetwork::from)
                }
                .ok_or_else(|| invalid(key, format!("not an IP/prefix: {value:?}")))?;
                match net {
                    IpNetwork::V4(v4) => p.allowed_ips.push(v4),
                    IpNetwork::V6(_) => {
                        return Err(unsupported(key, "IPv6 allowed IPs are not supported"));
                    }
                }
            }
            ("protocol_version", Some(_)) => {
                if value != "1" {
                    return Err(invalid(key, format!("unsupported version {value:?}")));
                }
            }
            (
                "remove"
                | "update_only"
                | "preshared_key"
                | "endpoint"
                | "persistent_keepalive_interval"
                | "replace_allowed_ips"
                | "allowed_ip"
                | "protocol_version",
                None,
            ) => return Err(invalid(key, "peer key before any public_key")),
            ("private_key" | "listen_port" | "fwmark" | "replace_peers", Some(_)) => {
                return Err(invalid(key, "device key after a public_key"));
            }
            _ => return Err(invalid(key, "unknown key")),
        }
    }
    if let Some(done) = peer.take() {
        req.peers.push(done);
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    const K1: Key = Key::from_bytes([0x11; 32]);
    const K2: Key = Key::from_bytes([0x22; 32]);

    fn hex32(b: u8) -> String {
        hex::encode([b; 32])
    }

    fn snapshot() -> DeviceSnapshot {
        DeviceSnapshot {
            private_key: PrivateKey::from_bytes([0xaa; 32]),
            listen_port: 51820,
            fwmark: 0,
            peers: vec![
                PeerSnapshot {
                    status: PeerStatus {
                        peer_relay: None,
                        health_timeout: crate::DEFAULT_PEER_TIMEOUT,
                        public_key: K1,
                        endpoint: Some("192.0.2.2:51821".parse().unwrap()),
                        relay: None,
                        path: crate::PathKind::Direct,
                        punch: crate::config::PunchStatus::default(),
                        allowed_ips: vec!["10.0.1.2/32".parse().unwrap()],
                        last_handshake: Some(
                            SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123),
                        ),
                        last_heard: None,
                        rx_bytes: 92,
                        tx_bytes: 148,
                        persistent_keepalive: Some(25),
                        relay_error: None,
                        reach: crate::Reach::everything(),
                        policy_dropped: crate::DropCounts::default(),
                    },
                    preshared_key: None,
                },
                PeerSnapshot {
                    status: PeerStatus {
                        peer_relay: None,
                        health_timeout: crate::DEFAULT_PEER_TIMEOUT,
                        public_key: K2,
                        endpoint: None,
                        relay: None,
                        path: crate::PathKind::Direct,
                        punch: crate::config::PunchStatus::default(),
                        allowed_ips: vec![],
                        last_handshake: None,
                        last_heard: None,
                        rx_bytes: 0,
                        tx_bytes: 0,
                        persistent_keepalive: None,
                        relay_error: None,
                        reach: crate::Reach::everything(),
                        policy_dropped: crate::DropCounts::default(),
                    },
                    preshared_key: Some(PresharedKey::from_bytes([0x33; 32])),
                },
            ],
        }
    }

    /// `get` starts with private_key, prints a UNIX handshake timestamp (0 for never), and ends
    /// with errno=0 and a blank line.
    #[test]
    fn get_renders_spec_format() {
        let expected = format!(
            "private_key={}\nlisten_port=51820\n\
             public_key={}\nendpoint=192.0.2.2:51821\n\
             last_handshake_time_sec=1700000000\nlast_handshake_time_nsec=123\n\
             tx_bytes=148\nrx_bytes=92\npersistent_keepalive_interval=25\n\
             allowed_ip=10.0.1.2/32\nprotocol_version=1\n\
             public_key={}\npreshared_key={}\n\
             last_handshake_time_sec=0\nlast_handshake_time_nsec=0\n\
             tx_bytes=0\nrx_bytes=0\npersistent_keepalive_interval=0\nprotocol_version=1\n\
             errno=0\n\n",
            hex32(0xaa),
            hex32(0x11),
            hex32(0x22),
            hex32(0x33)
        );
        assert_eq!(render_get(&snapshot()), expected);
    }

    /// A non-zero fwmark is printed after listen_port.
    #[test]
    fn get_renders_fwmark_when_set() {
        let mut snap = snapshot();
        snap.fwmark = 51820;
        snap.peers.clear();
        assert!(render_get(&snap).contains("listen_port=51820\nfwmark=51820\nerrno=0\n\n"));
    }

    /// A typical `wg set` body parses into device fields and one peer update.
    #[test]
    fn set_parses_device_and_peer() {
        let body = format!(
            "private_key={}\nlisten_port=51820\nreplace_peers=true\npublic_key={}\n\
             endpoint=192.0.2.2:51821\npersistent_keepalive_interval=25\n\
             replace_allowed_ips=true\nallowed_ip=10.0.1.2/32\nallowed_ip=10.0.2.0/24\n\
             protocol_version=1",
            hex32(0xaa),
            hex32(0x11)
        );
        let req = parse_set(body.lines()).unwrap();
        assert_eq!(req.private_key, Some(PrivateKey::from_bytes([0xaa; 32])));
        assert_eq!(req.listen_port, Some(51820));
        assert!(req.replace_peers);
        assert_eq!(req.peers.len(), 1);
        let p = &req.peers[0];
        assert_eq!(p.public_key, K1);
        assert_eq!(p.endpoint, Some("192.0.2.2:51821".parse().unwrap()));
        assert_eq!(p.persistent_keepalive, Some(25));
        assert!(p.replace_allowed_ips);
        assert_eq!(
            p.allowed_ips,
            vec![
                "10.0.1.2/32".parse::<Ipv4Network>().unwrap(),
                "10.0.2.0/24".parse().unwrap()
            ]
        );
        assert!(!p.remove && !p.update_only);
    }

    /// `remove=true` and `update_only=true` attach to the peer they follow.
    #[test]
    fn set_parses_remove_and_update_only() {
        let body = format!(
            "public_key={}\nremove=true\npublic_key={}\nupdate_only=true\nendpoint=198.51.100.2:9",
            hex32(0x11),
            hex32(0x22)
        );
        let req = parse_set(body.lines()).unwrap();
        assert_eq!(req.peers.len(), 2);
        assert!(req.peers[0].remove && !req.peers[0].update_only);
        assert!(req.peers[1].update_only && !req.peers[1].remove);
        assert_eq!(req.peers[1].public_key, K2);
    }

    /// `replace_allowed_ips=true` with no allowed_ip lines means "clear them".
    #[test]
    fn set_replace_allowed_ips_alone_clears() {
        let body = format!("public_key={}\nreplace_allowed_ips=true", hex32(0x11));
        let req = parse_set(body.lines()).unwrap();
        assert!(req.peers[0].replace_allowed_ips);
        assert!(req.peers[0].allowed_ips.is_empty());
    }

    /// An all-zero preshared key clears it; a bare address is a /32.
    #[test]
    fn set_zero_psk_clears_and_bare_ip_is_host_route() {
        let body = format!(
            "public_key={}\npreshared_key={}\nallowed_ip=10.0.1.9",
            hex32(0x11),
            hex32(0)
        );
        let req = parse_set(body.lines()).unwrap();
        assert_eq!(req.peers[0].preshared_key, Some(None));
        assert_eq!(
            req.peers[0].allowed_ips,
            vec!["10.0.1.9/32".parse().unwrap()]
        );
    }

    /// An unknown key is rejected with errno -EINVAL.
    #[test]
    fn set_unknown_key_is_einval() {
        let err = parse_set(["listen_port=1", "frobnicate=yes"]).unwrap_err();
        assert_eq!(err.uapi_errno(), -22, "{err}");
        assert!(err.to_string().contains("frobnicate"), "{err}");
    }

    /// Peer keys before any public_key, device keys after one, and lines without '=' are errors.
    #[test]
    fn set_misplaced_keys_are_einval() {
        for body in [
            vec!["endpoint=192.0.2.1:1".to_owned()],
            vec![
                format!("public_key={}", hex32(1)),
                "listen_port=5".to_owned(),
            ],
            vec!["garbage".to_owned()],
            vec![
                format!("public_key={}", hex32(1)),
                "remove=false".to_owned(),
            ],
            vec![
                format!("public_key={}", hex32(1)),
                "protocol_version=2".to_owned(),
            ],
            vec!["listen_port=70000".to_owned()],
        ] {
            let err = parse_set(body.iter().map(String::as_str)).unwrap_err();
            assert_eq!(err.uapi_errno(), -22, "{body:?}: {err}");
        }
    }

    /// A malformed private key is rejected without echoing the value.
    #[test]
    fn set_bad_private_key_does_not_leak_value() {
        let err = parse_set(["private_key=deadbeefcafe"]).unwrap_err();
        assert_eq!(err.uapi_errno(), -22);
        assert!(!err.to_string().contains("deadbeef"), "{err}");
    }

    /// IPv6 endpoints and allowed IPs are refused with -EAFNOSUPPORT rather than ignored.
    #[test]
    fn set_ipv6_is_unsupported() {
        let pk = format!("public_key={}", hex32(1));
        let err = parse_set([pk.as_str(), "allowed_ip=::/0"]).unwrap_err();
        assert_eq!(err.uapi_errno(), -97);
        let err = parse_set([pk.as_str(), "endpoint=[2001:db8::1]:51820"]).unwrap_err();
        assert_eq!(err.uapi_errno(), -97);
    }

    /// Only get=1 and set=1 are operations.
    #[test]
    fn operation_line_is_checked() {
        assert_eq!(parse_operation("get=1").unwrap(), Operation::Get);
        assert_eq!(parse_operation("set=1").unwrap(), Operation::Set);
        assert_eq!(parse_operation("get=2").unwrap_err().uapi_errno(), -71);
    }
}

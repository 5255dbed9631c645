//! A client for dstack's guest-agent API: pRPC's JSON form over HTTP/1.1 on a unix socket (or the
//! simulator's `http://` URL).
//!
//! The endpoint is found as dstack's SDKs find it ([`Endpoint::discover`]). Every request is a `POST
//! /<Method>` with `Content-Type: application/json`: without that header the agent decodes the body as
//! protobuf and answers in protobuf.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use alloy_primitives::Address;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use zeroize::Zeroize;

use crate::wire::{ErrorResponse, GetKeyArgs, InfoResponse};

/// The env var dstack's SDKs read for a simulator endpoint: a socket path or an `http://` URL.
pub const ENDPOINT_ENV: &str = "DSTACK_SIMULATOR_ENDPOINT";

/// Where dstack's SDKs look for the guest agent's socket, in order: the Aug-2025 location first,
/// then the namespaced one used from v0.5.6 on.
pub const DEFAULT_SOCKETS: [&str; 4] = [
    "/var/run/dstack.sock",
    "/run/dstack.sock",
    "/var/run/dstack/dstack.sock",
    "/run/dstack/dstack.sock",
];

/// How long one call may take, connection included, unless [`DstackClient::with_timeout`] says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Replies larger than this are refused; the largest real one (a quote with its event log) is ~50 KiB.
const MAX_REPLY_BYTES: usize = 16 * 1024 * 1024;

/// What can go wrong talking to the guest agent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DstackError {
    /// The socket file does not exist.
    #[error(
        "no dstack socket at {}: is this running in a dstack CVM, or is the simulator started?",
        path.display()
    )]
    NoSocket {
        /// The path that was tried.
        path: PathBuf,
    },
    /// The endpoint string is not a socket path or an `http://` URL.
    #[error("unsupported dstack endpoint {endpoint:?}: {reason}")]
    UnsupportedEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// Why it cannot be used.
        reason: &'static str,
    },
    /// Connecting failed for a reason other than a missing socket.
    #[error("cannot connect to dstack at {endpoint}")]
    Connect {
        /// The endpoint.
        endpoint: Endpoint,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// HTTP went wrong below the application (connection reset, bad framing).
    #[error("HTTP exchange with dstack at {endpoint} failed during {method}")]
    Http {
        /// The endpoint.
        endpoint: Endpoint,
        /// The pRPC method.
        method: &'static str,
        /// hyper's error.
        #[source]
        source: hyper::Error,
    },
    /// The call took longer than the client's timeout.
    #[error("dstack at {endpoint} did not answer {method} within {after:?}")]
    Timeout {
        /// The endpoint.
        endpoint: Endpoint,
        /// The pRPC method.
        method: &'static str,
        /// The timeout in force.
        after: Duration,
    },
    /// The agent answered with an error status; `message` is its `{"error"}` text.
    #[error("dstack {method} failed with HTTP {status}: {message}")]
    Api {
        /// The pRPC method.
        method: &'static str,
        /// The HTTP status.
        status: StatusCode,
        /// The agent's error message (or the start of the body when it is not `{"error"}` JSON).
        message: String,
    },
    /// The reply is not what the API promises.
    #[error("malformed dstack {method} reply: field `{field}`: {reason}")]
    MalformedReply {
        /// The pRPC method.
        method: &'static str,
        /// The field at fault, or `(body)` when the body is not JSON.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// Where the guest agent listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A unix socket (the real agent, or `dstack-simulator --socket`).
    Unix(PathBuf),
    /// Plain HTTP (`dstack-simulator --listen`, or a simulator URL in [`ENDPOINT_ENV`]).
    Http {
        /// `host:port`.
        authority: String,
        /// A path prefix before `/<Method>`, without a trailing `/`; usually empty.
        base_path: String,
    },
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "{}", path.display()),
            Self::Http {
                authority,
                base_path,
            } => write!(f, "http://{authority}{base_path}"),
        }
    }
}

impl Endpoint {
    /// Finds the endpoint as dstack's SDKs do: `explicit` if given; else [`ENDPOINT_ENV`] if set and
    /// non-empty; else the first of [`DEFAULT_SOCKETS`] that exists, defaulting to the first.
    ///
    /// # Errors
    /// [`DstackError::UnsupportedEndpoint`] when the chosen string cannot be used. A missing socket
    /// is reported by the first call, as [`DstackError::NoSocket`].
    pub fn discover(explicit: Option<&str>) -> Result<Self, DstackError> {
        let env = std::env::var(ENDPOINT_ENV).ok();
        Self::discover_with(explicit, env.as_deref(), |p| p.exists())
    }

    /// [`Endpoint::discover`] with the environment and filesystem passed in.
    fn discover_with(
        explicit: Option<&str>,
        env: Option<&str>,
        exists: impl Fn(&Path) -> bool,
    ) -> Result<Self, DstackError> {
        if let Some(s) = explicit.or(env).filter(|s| !s.is_empty()) {
            return Self::parse(s);
        }
        let found = DEFAULT_SOCKETS
            .iter()
            .map(Path::new)
            .find(|p| exists(p))
            .unwrap_or(Path::new(DEFAULT_SOCKETS[0]));
        Ok(Self::Unix(found.to_path_buf()))
    }

    /// Parses a socket path (optionally `unix:`-prefixed, as dstack's configs write it) or an
    /// `http://host[:port][/prefix]` URL.
    ///
    /// # Errors
    /// [`DstackError::UnsupportedEndpoint`] for `https://`, other schemes, or an empty host.
    pub fn parse(s: &str) -> Result<Self, DstackError> {
        let unsupported = |reason| DstackError::UnsupportedEndpoint {
            endpoint: s.to_owned(),
            reason,
        };
        if let Some(rest) = s.strip_prefix("http://") {
            let (authority, base_path) = match rest.find('/') {
                Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
                None => (rest, ""),
            };
            if authority.is_empty() {
                return Err(unsupported("the URL has no host"));
            }
            let authority = if authority.contains(':') {
                authority.to_owned()
            } else {
                format!("{authority}:80")
            };
            return Ok(Self::Http {
                authority,
                base_path: base_path.to_owned(),
            });
        }
        if s.starts_with("https://") {
            return Err(unsupported(
                "https is not supported; use the unix socket or a plain http:// simulator URL",
            ));
        }
        if s.contains("://") {
            return Err(unsupported("expected a socket path or an http:// URL"));
        }
        Ok(Self::Unix(PathBuf::from(
            s.strip_prefix("unix:").unwrap_or(s),
        )))
    }
}

/// A key returned by GetKey. Its `Debug` hides it, and it is wiped from memory when dropped.
#[derive(Clone)]
pub struct DerivedKey([u8; 32]);

impl DerivedKey {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw secret. Callers must not log or persist it.
    pub fn expose_secret(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key as a secp256k1 signing key.
    ///
    /// # Errors
    /// When the bytes are zero or not below the curve order (probability ~2⁻¹²⁸ for a real key).
    pub fn signing_key(&self) -> Result<k256::ecdsa::SigningKey, k256::ecdsa::Error> {
        k256::ecdsa::SigningKey::from_slice(&self.0)
    }
}

impl fmt::Debug for DerivedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DerivedKey(<redacted>)")
    }
}

impl Drop for DerivedKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// GetKey's `signature_chain`: the app key's signature over the derived key, then the KMS root's over
/// the app key. 65 bytes each, `r ‖ s ‖ v` with `v ∈ {0, 1}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignatureChain {
    /// `signature_chain[0]`.
    pub app_signature: [u8; 65],
    /// `signature_chain[1]`.
    pub kms_signature: [u8; 65],
}

/// What `GetQuote` returns: the quote's bytes and dstack's event log (a JSON string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    pub quote: Vec<u8>,
    pub event_log: String,
}

/// A GetKey reply, decoded.
#[derive(Debug, Clone)]
pub struct GetKeyReply {
    /// The derived key.
    pub key: DerivedKey,
    /// Its proof of origin.
    pub signature_chain: SignatureChain,
}

impl GetKeyReply {
    /// A reply of `key` with the signature chain `[app_signature, kms_signature]`.
    pub fn new(key: DerivedKey, app_signature: [u8; 65], kms_signature: [u8; 65]) -> Self {
        Self {
            key,
            signature_chain: SignatureChain {
                app_signature,
                kms_signature,
            },
        }
    }
}

/// An Info reply, with the identity fields validated.
#[derive(Debug, Clone)]
pub struct Info {
    /// The app id (20 bytes).
    pub app_id: Address,
    /// The instance id as 40 lowercase hex digits, or empty when the app has `no_instance_id`.
    pub instance_id: String,
    /// The app's name from app-compose.
    pub app_name: String,
    /// Everything the agent sent.
    pub raw: InfoResponse,
}

/// A client for one guest-agent endpoint. Each call opens its own connection, as the SDKs do.
#[derive(Debug, Clone)]
pub struct DstackClient {
    endpoint: Endpoint,
    timeout: Duration,
}

impl DstackClient {
    /// A client for `endpoint`.
    pub fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// A client for the endpoint [`Endpoint::discover`] finds.
    ///
    /// # Errors
    /// As for [`Endpoint::discover`].
    pub fn discover(explicit: Option<&str>) -> Result<Self, DstackError> {
        Endpoint::discover(explicit).map(Self::new)
    }

    /// Bounds every call by `timeout` instead of [`DEFAULT_TIMEOUT`].
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The endpoint this client talks to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// `Info`: the app and instance identity.
    ///
    /// # Errors
    /// Any [`DstackError`]; `MalformedReply` names `app_id` or `instance_id` when they are not 20-byte hex.
    pub async fn info(&self) -> Result<Info, DstackError> {
        const METHOD: &str = "Info";
        let raw: InfoResponse = serde_json::from_value(
            self.call(METHOD, &Value::Object(Default::default()))
                .await?,
        )
        .map_err(|e| malformed(METHOD, "(body)", e.to_string()))?;
        let app_id = parse_hex_field::<20>(METHOD, "app_id", &raw.app_id).map(Address::from)?;
        let instance_id = if raw.instance_id.is_empty() {
            String::new()
        } else {
            hex::encode(parse_hex_field::<20>(
                METHOD,
                "instance_id",
                &raw.instance_id,
            )?)
        };
        Ok(Info {
            app_id,
            instance_id,
            app_name: raw.app_name.clone(),
            raw,
        })
    }

    /// `GetKey` for a secp256k1 key at `path`, with `purpose` bound into the app signature.
    ///
    /// # Errors
    /// Any [`DstackError`]; `MalformedReply` names `key` or `signature_chain` when they are not 32 bytes
    /// and two 65-byte signatures.
    pub async fn get_key(&self, path: &str, purpose: &str) -> Result<GetKeyReply, DstackError> {
        const METHOD: &str = "GetKey";
        let args = GetKeyArgs {
            path: path.to_owned(),
            purpose: purpose.to_owned(),
            // Left empty: every agent version reads that as secp256k1, and pre-0.5.6 ones reject nothing.
            algorithm: String::new(),
        };
        let reply = self.call(METHOD, &args).await?;
        let key_hex = reply
            .get("key")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed(METHOD, "key", "missing or not a string".into()))?;
        let key = DerivedKey::from_bytes(parse_hex_field::<32>(METHOD, "key", key_hex)?);
        let chain = reply
            .get("signature_chain")
            .and_then(Value::as_array)
            .ok_or_else(|| {
                malformed(METHOD, "signature_chain", "missing or not an array".into())
            })?;
        let [app, kms] = chain.as_slice() else {
            return Err(malformed(
                METHOD,
                "signature_chain",
                format!("expected 2 signatures, got {}", chain.len()),
            ));
        };
        let sig = |v: &Value| {
            let s = v.as_str().ok_or_else(|| {
                malformed(METHOD, "signature_chain", "an entry is not a string".into())
            })?;
            parse_hex_field::<65>(METHOD, "signature_chain", s)
        };
        Ok(GetKeyReply::new(key, sig(app)?, sig(kms)?))
    }

    /// `GetQuote`: a TDX quote whose report data is `report_data`, with the event log that replays to its RTMRs.
    ///
    /// # Errors
    /// Any [`DstackError`]; `MalformedReply` names `quote` when it is not hex.
    pub async fn get_quote(&self, report_data: &[u8; 64]) -> Result<Quote, DstackError> {
        const METHOD: &str = "GetQuote";
        let args = crate::wire::GetQuoteArgs {
            report_data: report_data.to_vec(),
        };
        let raw: crate::wire::GetQuoteResponse =
            serde_json::from_value(self.call(METHOD, &args).await?)
                .map_err(|e| malformed(METHOD, "(body)", e.to_string()))?;
        let quote = hex::decode(raw.quote.trim_start_matches("0x"))
            .map_err(|e| malformed(METHOD, "quote", e.to_string()))?;
        Ok(Quote {
            quote,
            event_log: raw.event_log,
        })
    }

    /// Makes one pRPC call and returns the reply's JSON.
    ///
    /// # Errors
    /// Transport, timeout, HTTP status and non-JSON replies, as [`DstackError`].
    pub async fn call(
        &self,
        method: &'static str,
        args: &impl Serialize,
    ) -> Result<Value, DstackError> {
        let body =
            serde_json::to_vec(args).map_err(|e| malformed(method, "(request)", e.to_string()))?;
        let exchange = async {
            match &self.endpoint {
                Endpoint::Unix(path) => {
                    let stream = UnixStream::connect(path).await.map_err(|source| {
                        if source.kind() == std::io::ErrorKind::NotFound {
                            DstackError::NoSocket { path: path.clone() }
                        } else {
                            self.connect_error(source)
                        }
                    })?;
                    self.exchange(stream, "localhost", &format!("/{method}"), method, body)
                        .await
                }
                Endpoint::Http {
                    authority,
                    base_path,
                } => {
                    let stream = TcpStream::connect(authority.as_str())
                        .await
                        .map_err(|source| self.connect_error(source))?;
                    self.exchange(
                        stream,
                        authority,
                        &format!("{base_path}/{method}"),
                        method,
                        body,
                    )
                    .await
                }
            }
        };
        let (status, reply) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| DstackError::Timeout {
                endpoint: self.endpoint.clone(),
                method,
                after: self.timeout,
            })??;
        if !status.is_success() {
            let message = match serde_json::from_slice::<ErrorResponse>(&reply) {
                Ok(e) => e.error,
                Err(_) => String::from_utf8_lossy(&reply[..reply.len().min(512)]).into_owned(),
            };
            return Err(DstackError::Api {
                method,
                status,
                message,
            });
        }
        serde_json::from_slice(&reply).map_err(|e| malformed(method, "(body)", e.to_string()))
    }

    fn connect_error(&self, source: std::io::Error) -> DstackError {
        DstackError::Connect {
            endpoint: self.endpoint.clone(),
            source,
        }
    }

    /// One request and its reply on a fresh connection.
    async fn exchange(
        &self,
        io: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
        host: &str,
        path: &str,
        method: &'static str,
        body: Vec<u8>,
    ) -> Result<(StatusCode, Bytes), DstackError> {
        let http_err = |source| DstackError::Http {
            endpoint: self.endpoint.clone(),
            method,
            source,
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(http_err)?;
        let request = hyper::Request::post(path)
            .header(hyper::header::HOST, host)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| malformed(method, "(request)", e.to_string()))?;
        let request = async move {
            let response = sender.send_request(request).await.map_err(http_err)?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_REPLY_BYTES)
                .collect()
                .await
                .map_err(|e| match e.downcast::<hyper::Error>() {
                    Ok(e) => http_err(*e),
                    Err(e) => malformed(method, "(body)", e.to_string()),
                })?
                .to_bytes();
            // `sender` drops here, which lets `conn` finish.
            Ok::<_, DstackError>((status, body))
        };
        // The connection future drives the I/O; it ends once the request side is done with it. Any
        // connection error also fails `request`, which is the error worth reporting.
        let (result, _conn_result) = tokio::join!(request, conn);
        result
    }
}

fn malformed(method: &'static str, field: &'static str, reason: String) -> DstackError {
    DstackError::MalformedReply {
        method,
        field,
        reason,
    }
}

fn parse_hex_field<const N: usize>(
    method: &'static str,
    field: &'static str,
    value: &str,
) -> Result<[u8; N], DstackError> {
    let bytes = crate::wire::decode_hex(value)
        .map_err(|e| malformed(method, field, format!("not hex: {e}")))?;
    <[u8; N]>::try_from(bytes.as_slice()).map_err(|_| {
        malformed(
            method,
            field,
            format!("expected {N} bytes, got {}", bytes.len()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An explicit endpoint wins over the environment and the default sockets.
    #[test]
    fn explicit_endpoint_wins() {
        let e = Endpoint::discover_with(Some("/tmp/x.sock"), Some("http://h:1"), |_| true).unwrap();
        assert_eq!(e, Endpoint::Unix("/tmp/x.sock".into()));
    }

    /// The simulator env var is used next, and may be a URL.
    #[test]
    fn env_endpoint_is_used_when_no_explicit_one() {
        let e = Endpoint::discover_with(None, Some("http://localhost:8090"), |_| true).unwrap();
        assert_eq!(
            e,
            Endpoint::Http {
                authority: "localhost:8090".into(),
                base_path: String::new()
            }
        );
    }

    /// Without explicit or env endpoints, the first existing default socket is chosen, in SDK order.
    #[test]
    fn first_existing_default_socket_is_chosen() {
        let e = Endpoint::discover_with(None, Some(""), |p| {
            p == Path::new("/var/run/dstack/dstack.sock")
                || p == Path::new("/run/dstack/dstack.sock")
        })
        .unwrap();
        assert_eq!(e, Endpoint::Unix("/var/run/dstack/dstack.sock".into()));
        let none = Endpoint::discover_with(None, None, |_| false).unwrap();
        assert_eq!(none, Endpoint::Unix("/var/run/dstack.sock".into()));
    }

    /// URLs get a default port and keep a path prefix; https and other schemes are refused by name.
    #[test]
    fn endpoint_parsing() {
        assert_eq!(
            Endpoint::parse("http://sim/base/").unwrap(),
            Endpoint::Http {
                authority: "sim:80".into(),
                base_path: "/base".into()
            }
        );
        assert_eq!(
            Endpoint::parse("unix:/var/run/dstack.sock").unwrap(),
            Endpoint::Unix("/var/run/dstack.sock".into())
        );
        assert!(matches!(
            Endpoint::parse("https://sim"),
            Err(DstackError::UnsupportedEndpoint { .. })
        ));
        assert!(matches!(
            Endpoint::parse("ftp://sim"),
            Err(DstackError::UnsupportedEndpoint { .. })
        ));
    }

    /// A derived key never shows up in debug output.
    #[test]
    fn derived_key_debug_is_redacted() {
        let k = DerivedKey::from_bytes([0x7c; 32]);
        let shown = format!("{k:?}");
        assert!(
            !shown.contains("7c") && shown.contains("redacted"),
            "{shown}"
        );
    }

    /// A missing socket gives the one-sentence hint, naming the path.
    #[tokio::test]
    async fn missing_socket_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.sock");
        let client = DstackClient::new(Endpoint::Unix(path.clone()));
        let err = client.info().await.unwrap_err();
        assert!(
            matches!(&err, DstackError::NoSocket { path: p } if *p == path),
            "{err}"
        );
        assert!(err.to_string().contains("is the simulator started?"));
    }
}

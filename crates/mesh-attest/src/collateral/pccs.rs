//! The PCCS client: collateral fetched per FMSPC with the PCCS v4 API, kept in memory and on disk,
//! refreshed before it expires, and served from the cache while the PCCS is unreachable.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dcap_qvl::QuoteCollateralV3;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use url::Url;

use super::{CollateralError, CollateralInfo, Platform, refresh_due};
use crate::time_fmt::fmt_unix;

/// A PCCS answer is a few kilobytes; anything near this is not one.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Why a PCCS cannot be asked, or gave no collateral. Foreign errors (rustls, hyper, I/O) are kept as
/// their text, so that this stays `Clone` and `Eq` like [`CollateralError`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PccsError {
    #[error("{0}")]
    Url(url::ParseError),
    #[error("it has no host")]
    NoHost,
    #[error("scheme `{0}` is neither http nor https")]
    Scheme(String),
    #[error(
        "no system root certificates to check its https certificate: install the system's CA \
         certificates, or name an http:// PCCS (Intel signs the collateral itself)"
    )]
    NoSystemRoots,
    #[error("the TLS configuration cannot be made: {0}")]
    TlsConfig(String),
    #[error("{url}: {reason}")]
    RequestUrl {
        url: String,
        reason: url::ParseError,
    },
    #[error("GET {url}: {failure}")]
    Get { url: String, failure: HttpError },
    #[error("GET {url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("the answer has no {name} header")]
    MissingHeader { name: &'static str },
    #[error("the {name} header has bad percent-encoding at byte {at}")]
    HeaderEncoding { name: &'static str, at: usize },
    #[error("the {name} header is not UTF-8")]
    HeaderNotUtf8 { name: &'static str },
    #[error("the {field} answer is not JSON: {reason}")]
    NotJson { field: &'static str, reason: String },
    #[error("the answer has no `{field}`")]
    MissingField { field: &'static str },
    #[error("`signature` is not a string")]
    SignatureNotString,
    #[error("`signature` is not hex")]
    SignatureNotHex,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The last fetch failed less than [`Pccs::retry_after`] ago, so the PCCS was not asked.
    #[error("{last} (not asked again for {retry_after} s)")]
    RecentFailure {
        last: Box<PccsError>,
        retry_after: u64,
    },
    /// It answered with collateral whose validity had ended: a stale mirror, or a PCCS whose own source
    /// stopped. It is not taken.
    #[error("it served collateral that expired at {}", crate::time_fmt::fmt_unix(*next_update))]
    Expired { next_update: u64 },
}

/// Why one GET got no answer. It knows nothing of a PCCS: [`PccsError::Get`] names the URL.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("no host")]
    NoHost,
    #[error("no port")]
    NoPort,
    #[error("connect: {0}")]
    Connect(String),
    #[error("server name: {0}")]
    ServerName(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("HTTP handshake: {0}")]
    Handshake(String),
    #[error("the request cannot be made: {0}")]
    BuildRequest(String),
    #[error("request: {0}")]
    Request(String),
    #[error("body: {0}")]
    Body(String),
}

/// Why a cached collateral file was skipped, or not written: only logged, since the PCCS replaces it.
#[derive(Debug, thiserror::Error)]
enum CacheFileError {
    #[error("it cannot be read: {0}")]
    Read(std::io::Error),
    #[error("it is not collateral JSON: {0}")]
    Json(serde_json::Error),
    #[error("{0}")]
    Collateral(CollateralError),
    #[error("the collateral cannot be encoded: {0}")]
    Encode(serde_json::Error),
    #[error("it cannot be written: {0}")]
    Write(std::io::Error),
    #[error("the task writing it failed: {0}")]
    Task(tokio::task::JoinError),
}

struct Cached {
    collateral: Arc<QuoteCollateralV3>,
    info: CollateralInfo,
}

/// Collateral from a PCCS (Intel's reference PCCS, or Phala's), cached in memory and, when given a
/// directory, on disk as `<fmspc>.json`, so that a restarted agent does not need the PCCS at once.
pub struct Pccs {
    base: Url,
    cache_dir: Option<PathBuf>,
    timeout: Duration,
    tls: Option<TlsConnector>,
    cache: Mutex<HashMap<[u8; 6], Cached>>,
    /// The last failed fetch per FMSPC: when, and why.
    failures: Mutex<HashMap<[u8; 6], (u64, PccsError)>>,
    /// After a failed fetch, the PCCS is not asked again for this long (seconds).
    retry_after: AtomicU64,
}

/// After a failed fetch, the PCCS is not asked again for this long (seconds) unless told otherwise
/// ([`Pccs::set_retry_after`]): every peer's check asks for collateral, and each would otherwise wait out the
/// timeout while the PCCS is down. The agent asks sooner in a small cluster, so that a PCCS back up is
/// seen within seconds, and as seldom as this in a large one.
pub const RETRY_AFTER_FAILURE: u64 = 10 * 60;

impl Pccs {
    /// A client for the PCCS at `url` (`http://` or `https://`, with or without its
    /// `/sgx/certification/v4` suffix). With `cache_dir`, it is created if needed and what it holds
    /// is loaded now.
    ///
    /// # Errors
    /// [`CollateralError::PccsUrl`] for a URL it cannot use (or no system roots for `https`), and
    /// [`CollateralError::CacheDir`] for a directory it cannot create or list.
    pub fn new(url: &str, cache_dir: Option<PathBuf>) -> Result<Self, CollateralError> {
        let bad = |reason: PccsError| CollateralError::PccsUrl {
            url: url.to_owned(),
            reason,
        };
        let trimmed = url.trim_end_matches('/');
        let trimmed = trimmed
            .strip_suffix("/sgx/certification/v4")
            .or_else(|| trimmed.strip_suffix("/tdx/certification/v4"))
            .unwrap_or(trimmed);
        let base = Url::parse(trimmed).map_err(|e| bad(PccsError::Url(e)))?;
        if base.host_str().is_none() {
            return Err(bad(PccsError::NoHost));
        }
        let tls = match base.scheme() {
            "http" => None,
            "https" => Some(tls_connector().map_err(bad)?),
            other => return Err(bad(PccsError::Scheme(other.to_owned()))),
        };
        let pccs = Self {
            base,
            cache_dir,
            timeout: Duration::from_secs(30),
            tls,
            cache: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            retry_after: AtomicU64::new(RETRY_AFTER_FAILURE),
        };
        pccs.load_cache_dir()?;
        Ok(pccs)
    }

    /// How long one fetch (all four requests) may take; 30 seconds unless set.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long after a failed fetch the PCCS is asked again: [`RETRY_AFTER_FAILURE`] at most.
    pub fn set_retry_after(&self, after: Duration) {
        self.retry_after.store(
            after.as_secs().clamp(1, RETRY_AFTER_FAILURE),
            Ordering::Relaxed,
        );
    }

    /// How long after a failed fetch the PCCS is asked again, in seconds.
    pub fn retry_after(&self) -> u64 {
        self.retry_after.load(Ordering::Relaxed)
    }

    /// Whether the last fetch failed, for some platform: when (Unix seconds), and why. Cleared by the next
    /// fetch that succeeds.
    pub fn failing(&self) -> Option<(u64, PccsError)> {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .max_by_key(|(at, _)| *at)
            .cloned()
    }

    /// What is cached for `fmspc`, valid or not.
    pub fn cached(&self, fmspc: &[u8; 6]) -> Option<(Arc<QuoteCollateralV3>, CollateralInfo)> {
        self.lock()
            .get(fmspc)
            .map(|c| (Arc::clone(&c.collateral), c.info))
    }

    /// The collateral for `platform`: the cached one until [`refresh_due`], then a fresh one from
    /// the PCCS, or the cached one while the PCCS is unreachable and it has not expired.
    ///
    /// # Errors
    /// [`CollateralError::Unavailable`] when the PCCS is unreachable and nothing valid is cached;
    /// [`CollateralError::WrongFmspc`] or [`CollateralError::Parse`] when it answers nonsense.
    pub async fn for_platform(
        &self,
        platform: Platform,
        now: u64,
    ) -> Result<Arc<QuoteCollateralV3>, CollateralError> {
        let cached = self.cached(&platform.fmspc);
        if let Some((collateral, info)) = &cached
            && !refresh_due(info.issue_date, info.next_update, now)
        {
            return Ok(Arc::clone(collateral));
        }
        let retry_after = self.retry_after();
        let recent_failure = self
            .failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&platform.fmspc)
            .filter(|(at, _)| now >= *at && now - *at < retry_after)
            .map(|(_, reason)| reason.clone());
        let fetched = match recent_failure {
            Some(last) => Err(PccsError::RecentFailure {
                last: Box::new(last),
                retry_after,
            }),
            None => {
                let fetched =
                    match tokio::time::timeout(self.timeout, self.fetch(platform)).await {
                        Ok(result) => result,
                        Err(_) => Err(PccsError::Timeout(self.timeout)),
                    }
                    .and_then(|fresh| match CollateralInfo::of(&fresh) {
                        // Expired already: not taken over what is cached, and counted as a failure.
                        Ok(info) if !info.is_valid_at(now) => Err(PccsError::Expired {
                            next_update: info.next_update,
                        }),
                        _ => Ok(fresh),
                    });
                let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
                match &fetched {
                    Ok(_) => failures.remove(&platform.fmspc),
                    Err(reason) => failures.insert(platform.fmspc, (now, reason.clone())),
                };
                fetched
            }
        };
        let fresh = match fetched {
            Ok(fresh) => fresh,
            Err(reason) => {
                return match cached {
                    Some((collateral, info)) if now <= info.next_update => {
                        tracing::warn!(
                            fmspc = %hex::encode(platform.fmspc),
                            expires = %fmt_unix(info.next_update),
                            %reason,
                            "PCCS unreachable; serving the cached collateral until it expires"
                        );
                        Ok(collateral)
                    }
                    Some((_, info)) => Err(CollateralError::Unavailable {
                        fmspc: platform.fmspc,
                        reason,
                        expired_at: Some(info.next_update),
                    }),
                    None => Err(CollateralError::Unavailable {
                        fmspc: platform.fmspc,
                        reason,
                        expired_at: None,
                    }),
                };
            }
        };
        let info = CollateralInfo::of(&fresh)?;
        if info.fmspc != platform.fmspc {
            return Err(CollateralError::WrongFmspc {
                asked: platform.fmspc,
                got: info.fmspc,
            });
        }
        // A PCCS that serves something older than what we hold (a stale mirror) does not roll back a
        // revocation we have already seen.
        if let Some((collateral, old)) = cached
            && old.tcb_info_issue_date > info.tcb_info_issue_date
            && now <= old.next_update
        {
            tracing::warn!(
                fmspc = %hex::encode(platform.fmspc),
                "the PCCS served older collateral than the cached one; keeping the cached one"
            );
            return Ok(collateral);
        }
        let fresh = Arc::new(fresh);
        self.lock().insert(
            platform.fmspc,
            Cached {
                collateral: Arc::clone(&fresh),
                info,
            },
        );
        if let Some(dir) = &self.cache_dir
            && let Err(e) = write_atomically(dir, &platform.fmspc, &fresh).await
        {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot write the collateral cache");
        }
        Ok(fresh)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 6], Cached>> {
        // The map holds whole values only, so a panic elsewhere cannot leave it half-written.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn load_cache_dir(&self) -> Result<(), CollateralError> {
        let Some(dir) = &self.cache_dir else {
            return Ok(());
        };
        // I/O errors are neither `Clone` nor `Eq`, which `CollateralError` is: their text is kept.
        let fail = |e: std::io::Error| CollateralError::CacheDir {
            path: dir.clone(),
            reason: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(fail)?;
        let mut cache = self.lock();
        for entry in std::fs::read_dir(dir).map_err(fail)? {
            let path = entry.map_err(fail)?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            // A bad file is skipped, not fatal: the PCCS replaces it at the next fetch.
            let loaded = std::fs::read_to_string(&path)
                .map_err(CacheFileError::Read)
                .and_then(|json| {
                    serde_json::from_str::<QuoteCollateralV3>(&json).map_err(CacheFileError::Json)
                })
                .and_then(|c| {
                    CollateralInfo::of(&c)
                        .map(|info| (c, info))
                        .map_err(CacheFileError::Collateral)
                });
            match loaded {
                Ok((collateral, info)) => {
                    let newer = cache
                        .get(&info.fmspc)
                        .is_none_or(|old| old.info.tcb_info_issue_date <= info.tcb_info_issue_date);
                    if newer {
                        cache.insert(
                            info.fmspc,
                            Cached {
                                collateral: Arc::new(collateral),
                                info,
                            },
                        );
                    }
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "skipping a cached collateral");
                }
            }
        }
        Ok(())
    }

    /// The four requests dcap-qvl's own client makes, over our HTTP client.
    async fn fetch(&self, platform: Platform) -> Result<QuoteCollateralV3, PccsError> {
        let fmspc = hex::encode_upper(platform.fmspc);
        let ca = platform.ca.as_id_str();

        let pck = self
            .get(&format!("sgx/certification/v4/pckcrl?ca={ca}&encoding=der"))
            .await?;
        let pck_crl_issuer_chain = pck.header("SGX-PCK-CRL-Issuer-Chain")?;
        let pck_crl = der_or_hex(pck.body);

        let tcb = self
            .get(&format!("tdx/certification/v4/tcb?fmspc={fmspc}"))
            .await?;
        let tcb_info_issuer_chain = tcb
            .header("TCB-Info-Issuer-Chain")
            .or_else(|_| tcb.header("SGX-TCB-Info-Issuer-Chain"))?;
        let (tcb_info, tcb_info_signature) = signed_json(&tcb.body, "tcbInfo")?;

        let qe = self.get("tdx/certification/v4/qe/identity").await?;
        let qe_identity_issuer_chain = qe.header("SGX-Enclave-Identity-Issuer-Chain")?;
        let (qe_identity, qe_identity_signature) = signed_json(&qe.body, "enclaveIdentity")?;

        let root = self.get("sgx/certification/v4/rootcacrl").await?;
        let root_ca_crl = der_or_hex(root.body);

        Ok(QuoteCollateralV3 {
            pck_crl_issuer_chain,
            root_ca_crl,
            pck_crl,
            tcb_info_issuer_chain,
            tcb_info,
            tcb_info_signature,
            qe_identity_issuer_chain,
            qe_identity,
            qe_identity_signature,
            pck_certificate_chain: None,
        })
    }

    async fn get(&self, path_and_query: &str) -> Result<Response, PccsError> {
        let url = format!(
            "{}/{path_and_query}",
            self.base.as_str().trim_end_matches('/')
        );
        let url = Url::parse(&url).map_err(|reason| PccsError::RequestUrl { url, reason })?;
        let response = match http_get(&url, self.tls.as_ref()).await {
            Ok(response) => response,
            Err(failure) => {
                return Err(PccsError::Get {
                    url: url.into(),
                    failure,
                });
            }
        };
        if !(200..300).contains(&response.status) {
            return Err(PccsError::Status {
                url: url.into(),
                status: response.status,
            });
        }
        Ok(response)
    }
}

/// PCCSes answer CRLs as DER or as hex text of it. A DER CRL is binary (its second byte, a long-form
/// length, is above 0x7f), so a body that is all hex digits is hex text.
fn der_or_hex(body: Vec<u8>) -> Vec<u8> {
    let text = std::str::from_utf8(&body).map(str::trim);
    match text.ok().and_then(|t| hex::decode(t).ok()) {
        Some(der) if !der.is_empty() => der,
        _ => body,
    }
}

/// `{"<field>": {...}, "signature": "<hex>"}`, keeping the exact bytes Intel signed.
fn signed_json(body: &[u8], field: &'static str) -> Result<(String, Vec<u8>), PccsError> {
    let object: HashMap<String, Box<RawValue>> =
        serde_json::from_slice(body).map_err(|e| PccsError::NotJson {
            field,
            reason: e.to_string(),
        })?;
    let signed = object.get(field).ok_or(PccsError::MissingField { field })?;
    let signature: String = object
        .get("signature")
        .ok_or(PccsError::MissingField { field: "signature" })
        .and_then(|s| serde_json::from_str(s.get()).map_err(|_| PccsError::SignatureNotString))?;
    let signature = hex::decode(signature).map_err(|_| PccsError::SignatureNotHex)?;
    Ok((signed.get().to_owned(), signature))
}

async fn write_atomically(
    dir: &Path,
    fmspc: &[u8; 6],
    collateral: &QuoteCollateralV3,
) -> Result<(), CacheFileError> {
    let json = serde_json::to_vec(collateral).map_err(CacheFileError::Encode)?;
    let path = dir.join(format!("{}.json", hex::encode(fmspc)));
    let tmp = dir.join(format!(
        ".{}.json.tmp-{}",
        hex::encode(fmspc),
        std::process::id()
    ));
    tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&json)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)
    })
    .await
    .map_err(CacheFileError::Task)?
    .map_err(CacheFileError::Write)
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    /// A header, percent-decoded: PCCSes send the PEM chains URL-encoded.
    fn header(&self, name: &'static str) -> Result<String, PccsError> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| percent_decode(name, v))
            .ok_or(PccsError::MissingHeader { name })?
    }
}

/// The value `text` of header `name`, percent-decoded.
fn percent_decode(name: &'static str, text: &str) -> Result<String, PccsError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let pair = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(PccsError::HeaderEncoding { name, at: i })?;
            out.push(pair);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| PccsError::HeaderNotUtf8 { name })
}

fn tls_connector() -> Result<TlsConnector, PccsError> {
    let loaded = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(loaded.certs);
    if added == 0 {
        return Err(PccsError::NoSystemRoots);
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PccsError::TlsConfig(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One GET on a fresh connection. A PCCS is asked four times a month per FMSPC: no pool is needed.
async fn http_get(url: &Url, tls: Option<&TlsConnector>) -> Result<Response, HttpError> {
    let host = url.host_str().ok_or(HttpError::NoHost)?;
    let bare_host = host.trim_start_matches('[').trim_end_matches(']');
    let port = url.port_or_known_default().ok_or(HttpError::NoPort)?;
    let tcp = TcpStream::connect((bare_host, port))
        .await
        .map_err(|e| HttpError::Connect(e.to_string()))?;
    let io: Box<dyn Io> = match tls {
        None => Box::new(tcp),
        Some(tls) => {
            let name = rustls_pki_types::ServerName::try_from(bare_host.to_owned())
                .map_err(|e| HttpError::ServerName(e.to_string()))?;
            Box::new(
                tls.connect(name, tcp)
                    .await
                    .map_err(|e| HttpError::Tls(e.to_string()))?,
            )
        }
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| HttpError::Handshake(e.to_string()))?;
    let driver = owned_task::Task::spawn("pccs-connection", connection);
    let mut path = url.path().to_owned();
    if let Some(query) = url.query() {
        path.push('?');
        path.push_str(query);
    }
    let authority = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    };
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::USER_AGENT, "mesh-attest")
        .body(Empty::<Bytes>::new())
        .map_err(|e| HttpError::BuildRequest(e.to_string()))?;
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| HttpError::Request(e.to_string()))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| HttpError::Body(e.to_string()))?
            .to_bytes()
            .to_vec();
        Ok(Response {
            status,
            headers,
            body,
        })
    }
    .await;
    drop((sender, driver));
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_reads_pem_headers() {
        const NAME: &str = "TCB-Info-Issuer-Chain";
        assert_eq!(
            percent_decode(NAME, "-----BEGIN%20CERTIFICATE-----%0AMIIB%2B%2F%3D"),
            Ok("-----BEGIN CERTIFICATE-----\nMIIB+/=".to_owned())
        );
        assert_eq!(
            percent_decode(NAME, "ab%2"),
            Err(PccsError::HeaderEncoding { name: NAME, at: 2 })
        );
        assert_eq!(
            percent_decode(NAME, "%zz"),
            Err(PccsError::HeaderEncoding { name: NAME, at: 0 })
        );
        assert_eq!(
            percent_decode(NAME, "%ff"),
            Err(PccsError::HeaderNotUtf8 { name: NAME })
        );
    }

    #[test]
    fn crls_are_read_as_der_or_hex() {
        let der = vec![0x30, 0x82, 0x01, 0x0a, 0xff];
        assert_eq!(der_or_hex(der.clone()), der);
        assert_eq!(der_or_hex(hex::encode(&der).into_bytes()), der);
        assert_eq!(
            der_or_hex(format!("{}\n", hex::encode(&der)).into_bytes()),
            der
        );
    }

    #[test]
    fn signed_json_keeps_the_signed_bytes_exactly() {
        let body = br#"{"tcbInfo":{"b":1,"a":[2, 3]},"signature":"0a0b"}"#;
        assert_eq!(
            signed_json(body, "tcbInfo"),
            Ok((r#"{"b":1,"a":[2, 3]}"#.to_owned(), vec![0x0a, 0x0b]))
        );
        assert_eq!(
            signed_json(br#"{"signature":"00"}"#, "tcbInfo"),
            Err(PccsError::MissingField { field: "tcbInfo" })
        );
        assert_eq!(
            signed_json(br#"{"tcbInfo":{}}"#, "tcbInfo"),
            Err(PccsError::MissingField { field: "signature" })
        );
        assert_eq!(
            signed_json(br#"{"tcbInfo":{},"signature":7}"#, "tcbInfo"),
            Err(PccsError::SignatureNotString)
        );
        assert_eq!(
            signed_json(br#"{"tcbInfo":{},"signature":"zz"}"#, "tcbInfo"),
            Err(PccsError::SignatureNotHex)
        );
        assert!(matches!(
            signed_json(b"<html>", "tcbInfo"),
            Err(PccsError::NotJson {
                field: "tcbInfo",
                ..
            })
        ));
    }

    #[test]
    fn pccs_urls_are_normalised_and_checked() {
        let p = Pccs::new("https://pccs.example/sgx/certification/v4/", None);
        // No system roots in some sandboxes: then the error names that, not the URL.
        if let Ok(p) = p {
            assert_eq!(p.base.as_str(), "https://pccs.example/");
        }
        let p = Pccs::new("http://127.0.0.1:8081/tdx/certification/v4", None).unwrap();
        assert_eq!(p.base.as_str(), "http://127.0.0.1:8081/");
        assert!(matches!(
            Pccs::new("ftp://x", None),
            Err(CollateralError::PccsUrl {
                reason: PccsError::Scheme(_),
                ..
            })
        ));
        assert!(matches!(
            Pccs::new("not a url", None),
            Err(CollateralError::PccsUrl {
                reason: PccsError::Url(_),
                ..
            })
        ));
    }
}

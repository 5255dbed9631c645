//! Dialling a peer's relay through the gateway: TCP, TLS with the gateway's certificate checked against the
//! system roots (or a private CA, for tests and private deployments), the upgrade, then frames.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tracing::Instrument as _;

use crate::Metrics;
use crate::link::{Direction, Inbound, Link, pump};
use crate::server::OpenStream;
use crate::target::RelayTarget;
use crate::upgrade::{self, UpgradeError};

/// Time allowed for TCP, TLS and the upgrade together.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the dialler could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("reading the relay CA file {path}: {source}; pass a PEM file of CA certificates")]
    CaFile {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error(
        "the relay CA file {0} holds no usable certificate; pass a PEM file of CA certificates"
    )]
    NoCertificate(PathBuf),
    #[error(
        "no system root certificates could be loaded ({0}); install ca-certificates or pass a relay CA file"
    )]
    NoSystemRoots(String),
    #[error("setting up TLS: {0}")]
    Tls(#[from] rustls::Error),
}

/// Why a dial failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("resolving {host}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{host} resolves to no address")]
    NoAddress { host: String },
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS with {host}: {source}")]
    Tls {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{host:?} is not a valid TLS server name")]
    ServerName { host: String },
    #[error("the relay upgrade: {0}")]
    Upgrade(#[from] UpgradeError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Dials relays, sharing one TLS configuration.
#[derive(Clone)]
pub struct Dialer {
    tls: TlsConnector,
    idle: Duration,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer").field("idle", &self.idle).finish()
    }
}

impl Dialer {
    /// A dialler that trusts the system roots, or only the CAs in `ca_file`.
    ///
    /// # Errors
    /// [`TrustError`] when no trust anchor can be loaded.
    pub fn new(
        ca_file: Option<&Path>,
        idle: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Self, TrustError> {
        let roots = match ca_file {
            Some(path) => ca_roots(path)?,
            None => system_roots()?,
        };
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            tls: TlsConnector::from(Arc::new(config)),
            idle,
            metrics,
        })
    }

    /// Opens a stream to `target` and starts moving frames; datagrams that arrive go to `inbound`.
    ///
    /// # Errors
    /// [`DialError`] naming the step that failed.
    pub async fn dial(
        &self,
        target: &RelayTarget,
        inbound: mpsc::Sender<Inbound>,
    ) -> Result<Link, DialError> {
        self.dial_via(target, None, inbound).await
    }

    /// [`Dialer::dial`], connecting to `addr` instead of what the target's name resolves to (as curl's
    /// `--connect-to`): the name still goes in SNI and is checked against the certificate.
    ///
    /// # Errors
    /// [`DialError`] naming the step that failed.
    pub async fn dial_via(
        &self,
        target: &RelayTarget,
        addr: Option<std::net::SocketAddr>,
        inbound: mpsc::Sender<Inbound>,
    ) -> Result<Link, DialError> {
        let stream = tokio::time::timeout(DIAL_TIMEOUT, self.connect(target, addr))
            .await
            .map_err(|_| DialError::Timeout(DIAL_TIMEOUT))??;
        let (link, queue) = Link::new(Direction::Dialled);
        let (idle, metrics) = (self.idle, Arc::clone(&self.metrics));
        metrics.dialled.fetch_add(1, Ordering::Relaxed);
        let open = OpenStream::new(Arc::clone(&metrics));
        let span = tracing::debug_span!("relay_stream", to = %target, link = link.id());
        let pumping = owned_task::Task::spawn(
            "relay-stream",
            async move {
                open.ended(pump(stream, queue, None, inbound, idle, metrics).await);
            }
            .instrument(span),
        );
        // A dialled stream is there for whoever holds its link: it stops when the last one goes.
        link.own(pumping);
        Ok(link)
    }

    async fn connect(
        &self,
        target: &RelayTarget,
        via: Option<std::net::SocketAddr>,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, DialError> {
        let host = target.host.clone();
        let addr = match via {
            Some(addr) => addr,
            None => *tokio::net::lookup_host((host.as_str(), target.port))
                .await
                .map_err(|source| DialError::Resolve {
                    host: host.clone(),
                    source,
                })?
                .collect::<Vec<_>>()
                .first()
                .ok_or_else(|| DialError::NoAddress { host: host.clone() })?,
        };
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| DialError::Connect { addr, source })?;
        let _ = tcp.set_nodelay(true);
        let name = ServerName::try_from(host.clone())
            .map_err(|_| DialError::ServerName { host: host.clone() })?;
        let mut tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|source| DialError::Tls {
                host: host.clone(),
                source,
            })?;
        tls.write_all(upgrade::request(&host).as_bytes())
            .await
            .map_err(|e| DialError::Upgrade(e.into()))?;
        tls.flush()
            .await
            .map_err(|e| DialError::Upgrade(e.into()))?;
        let head = upgrade::read_head(&mut tls).await?;
        upgrade::check_response(&head)?;
        Ok(tls)
    }
}

fn ca_roots(path: &Path) -> Result<RootCertStore, TrustError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TrustError::CaFile {
            path: path.to_owned(),
            source,
        })?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(TrustError::NoCertificate(path.to_owned()));
    }
    Ok(roots)
}

fn system_roots() -> Result<RootCertStore, TrustError> {
    let loaded = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(loaded.certs);
    if added == 0 {
        let why = loaded
            .errors
            .first()
            .map_or_else(|| "none found".to_owned(), ToString::to_string);
        return Err(TrustError::NoSystemRoots(why));
    }
    Ok(roots)
}

//! A mock PCCS: Intel's v4 collateral API over plain HTTP, serving what the test last [published](MockPccs::publish),
//! so that a test can lower a platform's TCB (a microcode advisory, a TCB recovery) while agents run.
//!
//! One that signs its own collateral ([`MockPccs::signing`], what `dstack-simulator --serve-pccs` runs) also
//! answers `PUT /mock/tcb-status` (a status as Intel spells it: the TCB info is signed again with it),
//! `PUT /mock/expired` and `PUT /mock/down` (`true` or `false`), and `GET /mock`: so that an operator can
//! rehearse the cluster's TCB policy, or a PCCS that fails, with `curl`.
//!
//! It answers the four requests a PCCS client makes (dcap-qvl's, and `mesh-attest`'s): the PCK CRL, the TDX
//! TCB info for the collateral's FMSPC, the TDX QE identity and the root CA CRL, each with Intel's issuer
//! chain header. It runs on its own thread with its own runtime, on a listener the test bound (in a network
//! namespace, if it likes), and stops when dropped.

use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use dcap_qvl::QuoteCollateralV3;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

#[derive(Default)]
struct State {
    collateral: Option<QuoteCollateralV3>,
    requests: Vec<String>,
    fail: bool,
    /// For a PCCS that signs its own collateral: what it signs with, and what it signs.
    signer: Option<Signer>,
}

/// What a signing PCCS serves, as `PUT /mock/...` changes it.
struct Signer {
    pki: crate::MockPki,
    status: crate::TcbStatus,
    /// How long fresh collateral is valid, in seconds.
    valid_for: u64,
    /// Serve collateral whose next update has passed.
    expired: bool,
}

impl Signer {
    /// Collateral signed now, as the signer's settings say.
    fn sign(&self) -> QuoteCollateralV3 {
        const DAY: u64 = 86_400;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let opts = crate::CollateralOptions {
            tcb_status: self.status,
            ..match self.expired {
                true => crate::CollateralOptions {
                    issue_date: now.saturating_sub(2 * DAY),
                    next_update: now.saturating_sub(3600),
                    ..crate::CollateralOptions::valid_from(now, 0)
                },
                false => crate::CollateralOptions {
                    issue_date: now.saturating_sub(3600),
                    next_update: now.saturating_add(self.valid_for),
                    ..crate::CollateralOptions::valid_from(now, 0)
                },
            }
        };
        self.pki.collateral(&opts)
    }
}

/// A running mock PCCS.
pub struct MockPccs {
    state: Arc<Mutex<State>>,
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl MockPccs {
    /// Serves `collateral` on `listener`.
    ///
    /// # Panics
    /// If the listener cannot be used (its address read, made non-blocking) or no runtime can be built:
    /// test setup that cannot go on.
    pub fn start(listener: std::net::TcpListener, collateral: QuoteCollateralV3) -> Self {
        let addr = listener.local_addr().expect("the mock PCCS's address");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let state = Arc::new(Mutex::new(State {
            collateral: Some(collateral),
            ..State::default()
        }));
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let served = Arc::clone(&state);
        let thread = std::thread::Builder::new()
            .name("mock-pccs".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()
                    .expect("a runtime for the mock PCCS");
                runtime.block_on(serve(listener, served, stopped));
            })
            .expect("the mock PCCS's thread");
        Self {
            state,
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Serves collateral it signs itself with `pki`, valid for `valid_for` from its signing and saying
    /// `status`, on `listener`; its settings change with `PUT /mock/...` (the module's documentation), or
    /// [`MockPccs::set_tcb_status`] and [`MockPccs::set_expired`].
    ///
    /// # Panics
    /// As [`MockPccs::start`].
    pub fn signing(
        listener: std::net::TcpListener,
        pki: crate::MockPki,
        valid_for: std::time::Duration,
        status: crate::TcbStatus,
    ) -> Self {
        let signer = Signer {
            pki,
            status,
            valid_for: valid_for.as_secs(),
            expired: false,
        };
        let pccs = Self::start(listener, signer.sign());
        pccs.lock().signer = Some(signer);
        pccs
    }

    /// The PCCS's base URL, for `--pccs-url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Serves `collateral` from the next request on.
    pub fn publish(&self, collateral: QuoteCollateralV3) {
        self.lock().collateral = Some(collateral);
    }

    /// Answers every request with HTTP 503 while `fail`.
    pub fn set_failing(&self, fail: bool) {
        self.lock().fail = fail;
    }

    /// A signing PCCS signs its collateral again with `status`; a publishing one does nothing.
    pub fn set_tcb_status(&self, status: crate::TcbStatus) {
        self.resign(|s| s.status = status);
    }

    /// A signing PCCS serves collateral whose validity has ended while `expired`, fresh collateral after.
    pub fn set_expired(&self, expired: bool) {
        self.resign(|s| s.expired = expired);
    }

    fn resign(&self, change: impl FnOnce(&mut Signer)) {
        let mut state = self.lock();
        if let Some(signer) = state.signer.as_mut() {
            change(signer);
            let signed = signer.sign();
            state.collateral = Some(signed);
        }
    }

    /// Every request so far, as path and query.
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for MockPccs {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    state: Arc<Mutex<State>>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let stream = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => return,
            },
        };
        let state = Arc::clone(&state);
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let state = Arc::clone(&state);
            async move {
                let path = req
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_default();
                let response = match (req.method().clone(), path.starts_with("/mock")) {
                    (method, true) => {
                        use http_body_util::BodyExt as _;
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_owned())
                            .unwrap_or_default();
                        control(&state, &method, &path, &body)
                    }
                    _ => answer(&state, &path),
                };
                Ok::<_, Infallible>(response)
            }
        });
        connections.spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `GET /mock` and `PUT /mock/{tcb-status,expired,down}` on a signing PCCS: what it serves, changed.
fn control(
    state: &Mutex<State>,
    method: &hyper::Method,
    path: &str,
    body: &str,
) -> Response<Full<Bytes>> {
    let reply = |code: u16, text: String| {
        Response::builder()
            .status(code)
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from(text)))
            .expect("a response")
    };
    let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
    let fail = state.fail;
    let Some(signer) = state.signer.as_mut() else {
        return reply(
            404,
            "this PCCS serves what its test publishes: it signs nothing\n".into(),
        );
    };
    let flag = |body: &str| match body {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!("{other:?} is neither true nor false\n")),
    };
    match (method.as_str(), path) {
        ("GET", "/mock") => {
            return reply(
                200,
                format!(
                    "{{\"tcbStatus\":\"{}\",\"expired\":{},\"down\":{fail}}}\n",
                    signer.status, signer.expired
                ),
            );
        }
        ("PUT", "/mock/tcb-status") => match crate::TcbStatus::parse(body) {
            Some(status) => signer.status = status,
            None => {
                return reply(
                    400,
                    format!(
                        "{body:?} is no TCB status: give UpToDate, SWHardeningNeeded, ConfigurationNeeded, OutOfDate or Revoked\n"
                    ),
                );
            }
        },
        ("PUT", "/mock/expired") => match flag(body) {
            Ok(on) => signer.expired = on,
            Err(e) => return reply(400, e),
        },
        ("PUT", "/mock/down") => match flag(body) {
            Ok(on) => {
                state.fail = on;
                return reply(200, format!("down: {on}\n"));
            }
            Err(e) => return reply(400, e),
        },
        _ => {
            return reply(
                404,
                "GET /mock, or PUT /mock/tcb-status, /mock/expired or /mock/down\n".into(),
            );
        }
    }
    let signed = signer.sign();
    let said = format!(
        "serving {} collateral{}\n",
        signer.status,
        if signer.expired { ", expired" } else { "" }
    );
    state.collateral = Some(signed);
    reply(200, said)
}

/// The FMSPC the TCB info is for, as a PCCS's query names it (upper-case hex).
fn fmspc_of(c: &QuoteCollateralV3) -> String {
    serde_json::from_str::<serde_json::Value>(&c.tcb_info)
        .ok()
        .and_then(|v| v["fmspc"].as_str().map(str::to_uppercase))
        .unwrap_or_default()
}

/// Answers the four requests of a PCCS (Intel's v4 API) with the published collateral.
fn answer(state: &Mutex<State>, path_and_query: &str) -> Response<Full<Bytes>> {
    let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
    state.requests.push(path_and_query.to_owned());
    let status = |code: u16, body: &'static [u8]| {
        Response::builder()
            .status(code)
            .body(Full::new(Bytes::from_static(body)))
            .expect("a response")
    };
    if state.fail {
        return status(503, b"down for maintenance");
    }
    let Some(c) = state.collateral.clone() else {
        return status(404, b"no collateral published");
    };
    let ok = || Response::builder().status(200);
    let (builder, body) = match path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""))
    {
        ("/sgx/certification/v4/pckcrl", query) if query.contains("encoding=der") => (
            ok().header(
                "SGX-PCK-CRL-Issuer-Chain",
                percent_encode(&c.pck_crl_issuer_chain),
            ),
            c.pck_crl.clone(),
        ),
        ("/tdx/certification/v4/tcb", query) if query == format!("fmspc={}", fmspc_of(&c)) => (
            ok().header(
                "TCB-Info-Issuer-Chain",
                percent_encode(&c.tcb_info_issuer_chain),
            ),
            format!(
                r#"{{"tcbInfo":{},"signature":"{}"}}"#,
                c.tcb_info,
                hex::encode(&c.tcb_info_signature)
            )
            .into_bytes(),
        ),
        ("/tdx/certification/v4/qe/identity", _) => (
            ok().header(
                "SGX-Enclave-Identity-Issuer-Chain",
                percent_encode(&c.qe_identity_issuer_chain),
            ),
            format!(
                r#"{{"enclaveIdentity":{},"signature":"{}"}}"#,
                c.qe_identity,
                hex::encode(&c.qe_identity_signature)
            )
            .into_bytes(),
        ),
        ("/sgx/certification/v4/rootcacrl", _) => (ok(), hex::encode(&c.root_ca_crl).into_bytes()),
        _ => return status(404, b"not found"),
    };
    builder
        .body(Full::new(Bytes::from(body)))
        .expect("a response")
}

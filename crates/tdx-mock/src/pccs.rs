//! A mock PCCS: Intel's v4 collateral API over plain HTTP, serving what the test last [published](MockPccs::publish),
//! so that a test can lower a platform's TCB (a microcode advisory, a TCB recovery) while agents run.
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
            let path = req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default();
            let response = answer(&state, &path);
            async move { Ok::<_, Infallible>(response) }
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

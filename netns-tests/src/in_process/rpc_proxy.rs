//! A JSON-RPC proxy that tests put between an agent and anvil, and make lie or fail: refuse chosen requests
//! for a while, rewrite what anvil answers, go down (close every connection unanswered), hang (hold each
//! request), or take transactions and drop them. Everything else passes through unchanged.
//!
//! It serves on `127.0.0.1` of the current network namespace ([`RpcProxy::start`]) or of a test's
//! namespace ([`RpcProxy::start_in`]), on its own thread, and stops when dropped.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use alloy::transports::http::reqwest;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request as HttpRequest, Response, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use crate::net::netns::NetNs;

/// One JSON-RPC request as the proxy sees it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    pub params: &'a Value,
}

impl Request<'_> {
    /// Whether this is an `eth_call` of the function with `selector`.
    pub fn calls(&self, selector: [u8; 4]) -> bool {
        self.method == "eth_call"
            && self.params[0]["input"]
                .as_str()
                .or_else(|| self.params[0]["data"].as_str())
                .is_some_and(|data| {
                    data.trim_start_matches("0x")
                        .starts_with(&alloy::hex::encode(selector))
                })
    }

    /// Whether this is an `eth_getLogs` for one seat's events (topic 1 set): the full read's lookup of a
    /// record's registration event, as opposed to a poll over a range of blocks.
    pub fn gets_one_seats_logs(&self) -> bool {
        self.method == "eth_getLogs"
            && self.params[0]["topics"]
                .as_array()
                .and_then(|t| t.get(1))
                .is_some_and(|t| !t.is_null())
    }
}

type Matcher = Box<dyn Fn(&Request<'_>) -> bool + Send + Sync>;
type Rewriter = Box<dyn Fn(&Request<'_>, &mut Value) + Send + Sync>;

struct FailRule {
    name: String,
    matches: Matcher,
    until: Option<Instant>,
}

#[derive(Default)]
struct Rules {
    /// Every connection is closed unanswered: a provider that is down.
    down: bool,
    /// Each request is held this long before it is answered (or until the hang is lifted).
    hang: Option<Duration>,
    /// `eth_sendRawTransaction` is answered with the transaction's hash and never passed on.
    drop_transactions: bool,
    /// Transactions taken and dropped so far.
    dropped: usize,
    fail: Vec<FailRule>,
    rewrite: Vec<(String, Rewriter)>,
    /// How often each named rule fired.
    hits: std::collections::BTreeMap<String, usize>,
    /// Every JSON-RPC request that came, by method (each of a batch counts): the load as the RPC sees it.
    requests: std::collections::BTreeMap<String, usize>,
}

impl Rules {
    fn hit(&mut self, name: &str) {
        *self.hits.entry(name.to_owned()).or_default() += 1;
    }
}

/// The proxy; it stops serving when dropped.
pub struct RpcProxy {
    url: String,
    rules: Arc<Mutex<Rules>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RpcProxy {
    /// A proxy to `upstream` on loopback in this process's network namespace.
    ///
    /// # Panics
    /// When it cannot bind.
    pub fn start(upstream: &str) -> Self {
        Self::spawn(None, upstream)
    }

    /// A proxy to `upstream` on loopback inside `ns`, for an agent that runs there.
    ///
    /// # Panics
    /// When it cannot enter the namespace or bind.
    pub fn start_in(ns: &NetNs, upstream: &str) -> Self {
        Self::spawn(Some(ns.name.clone()), upstream)
    }

    fn spawn(netns: Option<String>, upstream: &str) -> Self {
        let rules = Arc::new(Mutex::new(Rules::default()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (bound_tx, bound_rx) = std::sync::mpsc::channel();
        let upstream = upstream.to_owned();
        let shared = rules.clone();
        let thread = std::thread::spawn(move || {
            if let Some(name) = netns {
                crate::net::netns::enter(&name);
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("proxy runtime");
            runtime.block_on(serve(upstream, shared, bound_tx, stopped));
        });
        let port = bound_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the RPC proxy binds within 10 s");
        Self {
            url: format!("http://127.0.0.1:{port}/"),
            rules,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The URL to give the agent instead of anvil's.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn rules(&self) -> std::sync::MutexGuard<'_, Rules> {
        self.rules.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Answers requests that `matches` with a JSON-RPC error until [`RpcProxy::remove`]`(name)`.
    pub fn fail(&self, name: &str, matches: impl Fn(&Request<'_>) -> bool + Send + Sync + 'static) {
        self.rules().fail.push(FailRule {
            name: name.to_owned(),
            matches: Box::new(matches),
            until: None,
        });
    }

    /// Like [`RpcProxy::fail`], for `duration` from now.
    pub fn fail_for(
        &self,
        name: &str,
        duration: Duration,
        matches: impl Fn(&Request<'_>) -> bool + Send + Sync + 'static,
    ) {
        self.rules().fail.push(FailRule {
            name: name.to_owned(),
            matches: Box::new(matches),
            until: Some(Instant::now() + duration),
        });
    }

    /// Lets `rewrite` change every response (the whole JSON-RPC object) before it reaches the agent.
    pub fn rewrite(
        &self,
        name: &str,
        rewrite: impl Fn(&Request<'_>, &mut Value) + Send + Sync + 'static,
    ) {
        self.rules()
            .rewrite
            .push((name.to_owned(), Box::new(rewrite)));
    }

    /// Takes the proxy down (`true`): every connection, new or open, is closed unanswered, as a provider
    /// that is down or refuses connections; `false` brings it back.
    pub fn set_down(&self, down: bool) {
        self.rules().down = down;
    }

    /// Holds each request `hang` before answering it (a provider that hangs), or answers at once (`None`).
    /// A request held when the hang is lifted is answered then.
    pub fn set_hang(&self, hang: Option<Duration>) {
        self.rules().hang = hang;
    }

    /// Answers each transaction with its hash and passes none on (`true`): a provider that drops them.
    pub fn set_drop_transactions(&self, drop: bool) {
        self.rules().drop_transactions = drop;
    }

    /// How many transactions it took and dropped.
    pub fn dropped_transactions(&self) -> usize {
        self.rules().dropped
    }

    /// Drops the rules called `name`.
    pub fn remove(&self, name: &str) {
        let mut rules = self.rules();
        rules.fail.retain(|r| r.name != name);
        rules.rewrite.retain(|(n, _)| n != name);
    }

    /// How many requests the failure rules called `name` refused.
    pub fn hits(&self, name: &str) -> usize {
        self.rules().hits.get(name).copied().unwrap_or(0)
    }

    /// The JSON-RPC requests that came so far, by method.
    pub fn requests(&self) -> std::collections::BTreeMap<String, usize> {
        self.rules().requests.clone()
    }
}

impl Drop for RpcProxy {
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
    upstream: String,
    rules: Arc<Mutex<Rules>>,
    bound: std::sync::mpsc::Sender<u16>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the RPC proxy");
    let port = listener.local_addr().expect("proxy address").port();
    let _ = bound.send(port);
    let client = reqwest::Client::new();
    // The connections; returning drops the set, which closes them.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            _ = &mut stopped => return,
        };
        while connections.try_join_next().is_some() {}
        if rules.lock().unwrap_or_else(PoisonError::into_inner).down {
            drop(stream);
            continue;
        }
        let (client, upstream, rules) = (client.clone(), upstream.clone(), rules.clone());
        connections.spawn(async move {
            let service = service_fn(move |req: HttpRequest<hyper::body::Incoming>| {
                let (client, upstream, rules) = (client.clone(), upstream.clone(), rules.clone());
                async move {
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    held(&rules).await;
                    // Down: the connection is closed with nothing answered.
                    if rules.lock().unwrap_or_else(PoisonError::into_inner).down {
                        return Err("down");
                    }
                    let reply = answer(&client, &upstream, &rules, &body).await;
                    Ok::<_, &'static str>(
                        Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(reply.to_string())))
                            .expect("response"),
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Waits while the proxy hangs: the hang's length, or until it is lifted, whichever comes first.
async fn held(rules: &Mutex<Rules>) {
    let began = Instant::now();
    loop {
        let hang = rules.lock().unwrap_or_else(PoisonError::into_inner).hang;
        match hang {
            Some(h) if began.elapsed() < h => tokio::time::sleep(Duration::from_millis(50)).await,
            _ => return,
        }
    }
}

async fn answer(
    client: &reqwest::Client,
    upstream: &str,
    rules: &Mutex<Rules>,
    body: &[u8],
) -> Value {
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "parse error"}});
    };
    match request {
        Value::Array(batch) => {
            let mut out = Vec::new();
            for one in &batch {
                out.push(answer_one(client, upstream, rules, one).await);
            }
            Value::Array(out)
        }
        one => answer_one(client, upstream, rules, &one).await,
    }
}

async fn answer_one(
    client: &reqwest::Client,
    upstream: &str,
    rules: &Mutex<Rules>,
    request: &Value,
) -> Value {
    let null = Value::Null;
    let req = Request {
        method: request["method"].as_str().unwrap_or(""),
        params: request.get("params").unwrap_or(&null),
    };
    {
        let mut rules = rules.lock().unwrap_or_else(PoisonError::into_inner);
        *rules.requests.entry(req.method.to_owned()).or_default() += 1;
        let now = Instant::now();
        rules.fail.retain(|r| r.until.is_none_or(|t| t > now));
        if rules.drop_transactions && req.method == "eth_sendRawTransaction" {
            rules.dropped += 1;
            let raw: Option<alloy::primitives::Bytes> =
                serde_json::from_value(req.params[0].clone()).ok();
            let hash = raw.map(|r| alloy::primitives::keccak256(&r));
            return json!({"jsonrpc": "2.0", "id": request["id"], "result": hash});
        }
        if let Some(name) = rules
            .fail
            .iter()
            .find(|r| (r.matches)(&req))
            .map(|r| r.name.clone())
        {
            rules.hit(&name);
            return json!({
                "jsonrpc": "2.0",
                "id": request["id"],
                "error": {"code": -32603, "message": format!("refused by the test proxy ({name})")},
            });
        }
    }
    let forwarded = client
        .post(upstream)
        .header("content-type", "application/json")
        .body(request.to_string())
        .send()
        .await;
    let mut response = match forwarded {
        Ok(r) => match r.bytes().await {
            Ok(b) => serde_json::from_slice(&b).unwrap_or(Value::Null),
            Err(e) => {
                json!({"jsonrpc": "2.0", "id": request["id"], "error": {"code": -32603, "message": e.to_string()}})
            }
        },
        Err(e) => {
            json!({"jsonrpc": "2.0", "id": request["id"], "error": {"code": -32603, "message": e.to_string()}})
        }
    };
    let rules = rules.lock().unwrap_or_else(PoisonError::into_inner);
    for (_, rewrite) in &rules.rewrite {
        rewrite(&req, &mut response);
    }
    response
}

/// Makes a block's logs bloom (in an `eth_getBlockByNumber` answer) claim every log: a lie that a proxy
/// injecting logs into polls tells too, since a poll does not ask for the logs of a block whose bloom holds
/// nothing of the cluster's.
pub fn bloom_claims_every_log(req: &Request<'_>, response: &mut Value) {
    if req.method == "eth_getBlockByNumber"
        && let Some(block) = response["result"].as_object_mut()
    {
        block.insert("logsBloom".into(), format!("0x{}", "ff".repeat(256)).into());
    }
}

/// Rewrites a `PeerRegistered` log (as JSON-RPC returns it) with `edit`, keeping it well-formed; logs of
/// other events are left alone.
pub fn edit_registration(
    log: &mut Value,
    edit: impl FnOnce(&mut mesh_chain::contract::DstackClusterNFT::PeerRegistered),
) {
    use alloy::sol_types::SolEvent as _;
    use mesh_chain::contract::DstackClusterNFT::PeerRegistered;
    let Ok(parsed) = serde_json::from_value::<alloy::rpc::types::Log>(log.clone()) else {
        return;
    };
    let Ok(mut event) = PeerRegistered::decode_log_data(parsed.data()) else {
        return;
    };
    edit(&mut event);
    let topics: Vec<String> = event
        .encode_topics()
        .into_iter()
        .map(|t| t.0.to_string())
        .collect();
    log["topics"] = json!(topics);
    log["data"] = json!(format!("0x{}", alloy::hex::encode(event.encode_data())));
}

/// The logs in an `eth_getLogs` response, to edit or extend.
pub fn logs_mut(response: &mut Value) -> Option<&mut Vec<Value>> {
    response.get_mut("result").and_then(Value::as_array_mut)
}

/// Makes `proxy` serve every `PeerRegistered` event whose nonce `matches` with its record signature
/// re-encoded from v 27/28 to 0/1: what a contract that accepted both encodings would have stored after a
/// front-run, and what agents refuse.
pub fn reencode_record_signatures(
    proxy: &RpcProxy,
    name: &str,
    matches: impl Fn(u64) -> bool + Send + Sync + 'static,
) {
    proxy.rewrite(name, move |req, response| {
        if req.method != "eth_getLogs" {
            return;
        }
        for log in logs_mut(response).into_iter().flatten() {
            edit_registration(log, |e| {
                if matches(e.nonce) {
                    let mut sig = e.recordSignature.to_vec();
                    sig[64] = sig[64].wrapping_sub(27);
                    e.recordSignature = sig.into();
                }
            });
        }
    });
}

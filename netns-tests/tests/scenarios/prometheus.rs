//! The Grafana dashboard (`deploy/grafana/dstack-mesh.json`) against a real Prometheus (Debian's
//! `prometheus`) scraping three agents' `--metrics-listen`: every PromQL expression of every panel, and the
//! node variable's query, evaluated through Prometheus's HTTP API with Grafana's variables filled in as
//! Grafana would, returns series; and a few of them say what the mesh is (six direct paths, six healthy
//! peers, one node holding the lease).
//!
//! Read from the mesh the `observers` scenario deploys, which runs it.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use alloy::transports::http::reqwest::Url;
use netns_tests::prelude::*;
use netns_tests::run::process::{ChildGuard, require_root};
use serde_json::Value;

/// Where every agent serves `/metrics`: the observers' mesh runs them with `--metrics-listen` on it.
pub(crate) const METRICS_PORT: u16 = 9464;
/// Prometheus inside the switch's namespace, which reaches every node's LAN address.
const PROMETHEUS: &str = "127.0.0.1:9090";

/// Grafana's variables as it fills them in: every node, and windows that hold several 1 s scrapes.
const VARIABLES: [(&str, &str); 3] = [
    ("$instance", ".*"),
    ("$__rate_interval", "15s"),
    ("$__range", "5m"),
];

fn dashboard() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/dstack-mesh.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Every panel's title and PromQL expressions, rows' nested panels included.
fn expressions(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?").to_owned();
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().expect("a target without an expr");
                out.push((title.clone(), expr.to_owned()));
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

fn fill(expr: &str) -> String {
    VARIABLES
        .iter()
        .fold(expr.to_owned(), |e, (var, value)| e.replace(var, value))
}

/// Prometheus in the switch's namespace, scraping each node every second; stopped by PID on drop.
struct Prometheus<'a> {
    ns: &'a NetNs,
    _server: ChildGuard,
    dir: tempfile::TempDir,
}

impl<'a> Prometheus<'a> {
    fn start(ns: &'a NetNs, targets: &[String]) -> Self {
        require_root(&["prometheus", "curl"]);
        let dir = tempfile::Builder::new()
            .prefix("dm-prom")
            .tempdir()
            .expect("temp dir");
        let config = dir.path().join("prometheus.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: dstack-mesh\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )
        .expect("write prometheus.yml");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = ns
            .command(&[
                "prometheus",
                &format!("--config.file={}", config.display()),
                &format!("--storage.tsdb.path={}", dir.path().join("data").display()),
                &format!("--web.listen-address={PROMETHEUS}"),
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let prometheus = Self {
            ns,
            _server: ChildGuard::new("prometheus", child),
            dir,
        };
        wait_until(
            "Prometheus to scrape every agent",
            Duration::from_secs(60),
            Duration::from_millis(500),
            || {
                prometheus
                    .get("/api/v1/query", &[("query", "count(up == 1)")])
                    .ok()
                    .and_then(|v| {
                        v["data"]["result"][0]["value"][1]
                            .as_str()
                            .map(str::to_owned)
                    })
                    .is_some_and(|n| n == targets.len().to_string())
            },
            || prometheus.log(),
        );
        prometheus
    }

    /// `GET path?params` on Prometheus's API: its `data` on success, else why not.
    fn get(&self, path: &str, params: &[(&str, &str)]) -> Result<Value, String> {
        let url = Url::parse_with_params(&format!("http://{PROMETHEUS}{path}"), params)
            .map_err(|e| e.to_string())?;
        let (code, body) = http(self.ns, "GET", url.as_str(), None)?;
        if code != 200 || body["status"] != "success" {
            return Err(format!("{code}: {body}"));
        }
        Ok(body)
    }

    /// The series an instant query returns.
    fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let body = self.get("/api/v1/query", &[("query", expr)])?;
        Ok(body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    fn log(&self) -> String {
        tail(&self.dir.path().join("prometheus.log"), 3000)
    }
}

/// A series' value as a number.
fn value(series: &Value) -> f64 {
    series["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Every expression of the dashboard returns series from a Prometheus scraping the agents, which serve
/// `/metrics` on [`METRICS_PORT`] of their LAN address, one of them leading.
pub(crate) fn every_dashboard_expression_returns_series(
    steps: &Steps,
    lan: &Lan,
    agents: &[Agent<'_>],
) {
    let nodes = agents.len();
    let dashboard = dashboard();
    let exprs = expressions(&dashboard);
    assert!(
        exprs.len() >= 15,
        "the dashboard has {} expressions",
        exprs.len()
    );

    let targets: Vec<String> = (1..=nodes)
        .map(|i| format!("{}:{METRICS_PORT}", lan_ip(i)))
        .collect();
    let prometheus = Prometheus::start(&lan.switch, &targets);
    steps.step("Prometheus scrapes every agent");

    // Each expression gets as long as a busy machine needs for its windows to hold two scrapes.
    let mut empty = Vec::new();
    for (title, expr) in &exprs {
        let expr = fill(expr);
        let mut last = Err(String::new());
        wait_until(
            &format!("{title:?}: {expr} to return series"),
            Duration::from_secs(45),
            Duration::from_secs(1),
            || {
                last = prometheus.query(&expr);
                last.as_ref().is_ok_and(|s| !s.is_empty()) || last.is_err()
            },
            || prometheus.log(),
        );
        match &last {
            Ok(series) => println!("  {title}: {} series from {expr}", series.len()),
            Err(e) => empty.push(format!("{title}: {expr}: {e}")),
        }
    }
    assert!(
        empty.is_empty(),
        "Prometheus refused these expressions:\n{}",
        empty.join("\n")
    );
    let instances = prometheus
        .get(
            "/api/v1/label/instance/values",
            &[("match[]", "dstack_mesh_uptime_seconds")],
        )
        .expect("the node variable's query");
    assert_eq!(
        instances["data"].as_array().map(Vec::len),
        Some(nodes),
        "the node variable lists each agent: {instances}"
    );
    steps.step(&format!(
        "all {} expressions of the dashboard return series, and its node variable lists the {nodes} agents",
        exprs.len()
    ));

    // Every node sees every other, over a direct path on the LAN.
    let pairs = (nodes * (nodes - 1)) as f64;
    let sum = |expr: &str| {
        prometheus
            .query(expr)
            .expect(expr)
            .iter()
            .map(value)
            .sum::<f64>()
    };
    assert_eq!(
        sum("sum(dstack_mesh_peers_healthy)"),
        pairs,
        "every node sees both others healthy"
    );
    let by_path = prometheus
        .query("count by (path) (dstack_mesh_peer_path)")
        .expect("paths");
    assert_eq!(by_path.len(), 1, "one path on a LAN: {by_path:?}");
    assert_eq!(by_path[0]["metric"]["path"], "direct", "{by_path:?}");
    assert_eq!(value(&by_path[0]), pairs, "{by_path:?}");
    assert_eq!(
        sum("sum(dstack_mesh_is_leader)"),
        1.0,
        "one node holds the lease"
    );
    assert!(
        sum("max(dstack_mesh_leader_term)") >= 1.0,
        "a term was counted"
    );
    steps.step(&format!(
        "{pairs} direct paths, {pairs} healthy peers and one leaseholder, as the mesh is"
    ));
}

//! What a test reads of a running agent: its API (status, peers, the leader, health), its log (lines and
//! JSON events), `meshctl status`, `wg show` and its metrics.

use std::path::PathBuf;
use std::time::SystemTime;

use mesh_api::{ConnectionKind, Peer, Status};
use mesh_wg::Key;
use serde::Deserialize;
use serde_json::Value;

use super::{Agent, OWN_TARGETS};
use crate::net::wg::{DumpPeer, parse_dump};
use crate::run::process::{CMD_TIMEOUT, clean_env, run_command_timeout, tail, text, workspace_bin};
use crate::run::runtime::block_on;

/// One line of an agent's JSON log ([`AgentConfig::json_log`]) that names what happened in its `event`
/// field.
#[derive(Debug, Clone)]
pub struct LogEvent {
    /// When the agent logged it.
    pub at: SystemTime,
    /// What happened: `peer.added`, `handshake.initiated`, … (the agent's crates name them where they log).
    pub event: String,
    /// The line's other fields (its message, the event's own fields, `target`, `spans`).
    pub fields: serde_json::Map<String, Value>,
}

impl LogEvent {
    /// Field `name` when it is a string: `peer` is a key as it prints (`abcdefgh…`).
    pub fn str_field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).and_then(Value::as_str)
    }

    /// A JSON log line, as `tracing_subscriber` writes it with the event's fields at the top level; `None`
    /// for the harness's own lines (text) and the lines that name no event.
    fn parse(line: &str) -> Option<Self> {
        #[derive(Deserialize)]
        struct Line {
            timestamp: String,
            event: Option<String>,
            #[serde(flatten)]
            fields: serde_json::Map<String, Value>,
        }
        let line: Line = serde_json::from_str(line).ok()?;
        Some(Self {
            at: rfc3339(&line.timestamp)?,
            event: line.event?,
            fields: line.fields,
        })
    }
}

/// An RFC 3339 timestamp (the agent logs in UTC, to the microsecond).
fn rfc3339(s: &str) -> Option<SystemTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(SystemTime::from)
}

impl Agent<'_> {
    /// The last few KB of this agent's log, for failure messages.
    pub fn tail(&self) -> String {
        format!(
            "--- agent {} ({}, {}) log tail ---\n{}",
            self.index,
            self.ifname,
            self.ns().name,
            tail(&self.log, 6000)
        )
    }

    /// The agent's own WARN lines and every ERROR line of its log (every run of it so far). boringtun's
    /// warnings are left out: it warns of every handshake retransmission, which a mesh starting up has.
    pub fn warnings(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            // The agent's own targets, after any span prefix (` WARN register{…}: mesh_chain::…`).
            .filter(|l| {
                (l.contains(" WARN ") && OWN_TARGETS.iter().any(|t| l.contains(t)))
                    || l.contains(" ERROR ")
            })
            .map(str::to_owned)
            .collect()
    }

    /// `meshctl status --json` as raw JSON, or why it failed.
    pub fn try_status(&self) -> Result<Value, String> {
        let bin = workspace_bin("meshctl");
        let mut cmd = self
            .ns()
            .command(&[bin.to_str().expect("utf-8 path"), "status", "--json"]);
        clean_env(&mut cmd)
            .arg("--api-socket")
            .arg(&self.api_socket);
        let out = run_command_timeout(cmd, "meshctl status", CMD_TIMEOUT);
        if !out.status.success() {
            return Err(format!(
                "meshctl status (node {}): {}",
                self.index,
                text(&out)
            ));
        }
        serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("meshctl status printed no JSON ({e}): {}", text(&out)))
    }

    /// The agent's `/metrics`, read on its API socket.
    pub fn metrics(&self) -> String {
        block_on(mesh_api::get_text(self.api_socket.as_path(), "/metrics")).unwrap_or_else(|e| {
            panic!(
                "reading node {}'s metrics: {e}\n{}",
                self.index,
                self.tail()
            )
        })
    }

    /// Where its API is served.
    pub fn api_socket(&self) -> &std::path::Path {
        &self.api_socket
    }

    /// `GET /v1/leader`: the leader as this agent sees it, or why it cannot be read.
    pub fn leader(&self) -> Result<mesh_api::Leader, String> {
        block_on(mesh_api::get(self.api_socket.as_path(), "/v1/leader"))
            .map_err(|e| format!("node {}: {e}", self.index))
    }

    /// `GET /v1/health`: the node's health as this agent judges it (the application's report and its own
    /// check).
    pub fn health(&self) -> mesh_api::HealthSignal {
        block_on(mesh_api::get(self.api_socket.as_path(), "/v1/health")).unwrap_or_else(|e| {
            panic!("reading node {}'s health: {e}\n{}", self.index, self.tail())
        })
    }

    /// `POST /v1/health`: reports the application's health to the agent, as the SDK's `set_healthy` does.
    pub fn set_healthy(&self, healthy: bool, reason: Option<&str>) -> mesh_api::HealthSignal {
        block_on(
            mesh_api::Client::new(self.api_socket.as_path()).set_healthy(healthy, reason, None),
        )
        .unwrap_or_else(|e| {
            panic!(
                "reporting node {}'s health: {e}\n{}",
                self.index,
                self.tail()
            )
        })
    }

    /// The lines of its log that contain `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }

    /// When the agent first logged a text line containing `needle` (every run of it so far).
    pub fn first_logged(&self, needle: &str) -> Option<SystemTime> {
        self.first_logged_since(needle, SystemTime::UNIX_EPOCH)
    }

    /// When the agent first logged a text line containing `needle` at or after `since`.
    pub fn first_logged_since(&self, needle: &str, since: SystemTime) -> Option<SystemTime> {
        self.log_lines(needle)
            .iter()
            .filter_map(|l| rfc3339(l.split_whitespace().next()?))
            .find(|t| *t >= since)
    }

    /// The lines of its JSON log that name an event (every run of it so far, with
    /// [`AgentConfig::json_log`]; none otherwise).
    pub fn log_events(&self) -> Vec<LogEvent> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(LogEvent::parse)
            .collect()
    }

    /// `meshctl status --json`, typed: this node's status and its peers.
    pub fn status(&self) -> (Status, Vec<Peer>) {
        let v = self
            .try_status()
            .unwrap_or_else(|e| panic!("{e}\n{}", self.tail()));
        let status = serde_json::from_value(v["status"].clone())
            .unwrap_or_else(|e| panic!("meshctl status: unexpected status ({e}): {v}"));
        let peers = serde_json::from_value(v["peers"].clone())
            .unwrap_or_else(|e| panic!("meshctl status: unexpected peers ({e}): {v}"));
        (status, peers)
    }

    /// The seats this node refused for their attestation (`GET /v1/peers/refused`).
    pub fn refused(&self) -> Vec<mesh_api::RefusedPeer> {
        self.try_refused()
            .unwrap_or_else(|e| panic!("{e}\n{}", self.tail()))
    }

    /// [`Agent::refused`], or why it could not be read (the agent not serving yet, say).
    pub fn try_refused(&self) -> Result<Vec<mesh_api::RefusedPeer>, String> {
        block_on(mesh_api::get(
            self.api_socket.as_path(),
            "/v1/peers/refused",
        ))
        .map_err(|e| format!("reading node {}'s refused seats: {e}", self.index))
    }

    /// This node's peer `token` as its agent reports it.
    pub fn peer(&self, token: u64) -> Option<Peer> {
        self.status().1.into_iter().find(|p| p.token_id == token)
    }

    /// Whether this node reports seat `token` over WireGuard, healthy, with `key` (false too when
    /// `meshctl status` fails).
    pub fn sees_healthy(&self, token: u64, key: &Key) -> bool {
        self.try_status().is_ok()
            && self.peer(token).is_some_and(|p| {
                p.connection == ConnectionKind::Wireguard
                    && p.healthy
                    && p.wg_public_key.as_ref() == Some(key)
            })
    }

    /// This node's WireGuard public key as its agent reports it.
    pub fn key(&self) -> Key {
        self.status().0.node.wg_public_key.unwrap_or_else(|| {
            panic!(
                "node {} reports no WireGuard key\n{}",
                self.index,
                self.tail()
            )
        })
    }

    /// The peer keys configured on this node's interface, read with `wg show dump` through its UAPI.
    pub fn wg_peer_keys(&self) -> std::collections::BTreeSet<Key> {
        self.wg_dump().1.into_iter().map(|p| p.public_key).collect()
    }

    /// Whether this node reports every other agent of `agents` healthy over WireGuard with its key in
    /// `keys` (`keys[j - 1]` is node j's), with one `meshctl status`.
    pub fn sees_all_healthy(&self, agents: &[Agent<'_>], keys: &[Key]) -> bool {
        let Ok(v) = self.try_status() else {
            return false;
        };
        let Ok(peers) = serde_json::from_value::<Vec<Peer>>(v["peers"].clone()) else {
            return false;
        };
        agents.iter().filter(|b| b.index != self.index).all(|b| {
            peers.iter().any(|p| {
                p.token_id == b.token
                    && p.connection == ConnectionKind::Wireguard
                    && p.healthy
                    && p.wg_public_key == Some(keys[b.index - 1])
            })
        })
    }

    /// `wg show <ifname> dump` in the node's namespace (through the agent's UAPI socket), raw.
    pub fn wg_dump_text(&self) -> String {
        self.ns().exec_ok(&["wg", "show", &self.ifname, "dump"])
    }

    /// `wg show <ifname> dump`, parsed: the interface fields, then one entry per peer.
    pub fn wg_dump(&self) -> (Vec<String>, Vec<DumpPeer>) {
        parse_dump(&self.wg_dump_text())
    }

    /// `GET /v1/peers`: the peers as this agent shows them to applications, or why it cannot be read.
    pub fn peers(&self) -> Result<Vec<Peer>, String> {
        block_on(mesh_api::get(self.api_socket.as_path(), "/v1/peers"))
            .map_err(|e| format!("node {}: {e}", self.index))
    }

    pub fn uapi_socket(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/wireguard/{}.sock", self.ifname))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A JSON line with an event is read with its time (to the microsecond) and its fields; the harness's
    /// own text lines and lines that name no event are skipped.
    #[test]
    fn log_events_are_read_from_json_lines() {
        let line = r#"{"timestamp":"2026-11-23T06:54:56.179762Z","level":"DEBUG","message":"peer added","event":"peer.added","peer":"abcdefgh…","target":"mesh_wg::device::shared"}"#;
        let e = LogEvent::parse(line).expect("an event");
        assert_eq!(e.event, "peer.added");
        assert_eq!(e.str_field("peer"), Some("abcdefgh…"));
        let unix =
            e.at.duration_since(SystemTime::UNIX_EPOCH)
                .expect("after 1970")
                .as_secs_f64();
        assert!((unix - 1_795_416_896.179_762).abs() < 1e-5, "{unix}");
        let no_event =
            r#"{"timestamp":"2026-11-23T06:54:56.179762Z","message":"peer records changed"}"#;
        assert!(LogEvent::parse(no_event).is_none());
        assert!(LogEvent::parse("=== test: starting agent 1 with …").is_none());
    }
}

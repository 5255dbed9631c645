//! `/v1/health`: whether this node is fit to lead, as the application reports it (`POST /v1/health`, the
//! SDK's `set_healthy`) and as the agent's own check finds it (`--health-url`, `--health-cmd`). An unhealthy
//! node never reports itself leader, answers its peers as unfit, and casts no vote or election; the others
//! vote it out after `--leader-timeout`.
//!
//! Not to be confused with `/healthz` ([`crate::health`]), which says whether the node is a working member
//! of the mesh.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The longest reason a report may give: it goes into logs and every peer's view of this node.
pub const MAX_REASON: usize = 200;

/// The longest a report may hold before it must be renewed, when it says how long.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// The body of `POST /v1/health`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ReportBody {
    healthy: bool,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    ttl_secs: Option<f64>,
}

/// What the application last said of itself, as the agent holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppReport {
    pub healthy: bool,
    pub reason: Option<String>,
    /// With `ttlSecs`: when the report lapses, and the application counts as unhealthy until it reports
    /// again (so that a crashed application stops its node from leading).
    pub expires_at: Option<Instant>,
}

impl AppReport {
    /// Reads a `POST /v1/health` body received at `now`.
    ///
    /// # Errors
    /// What is wrong with the body, in a sentence that says what to send instead.
    pub fn from_body(body: &[u8], now: Instant) -> Result<Self, String> {
        let body: ReportBody = serde_json::from_slice(body).map_err(|e| {
            format!(
                "the body must be a JSON object like {{\"healthy\": false, \"reason\": \"…\", \"ttlSecs\": 10}} ({e})"
            )
        })?;
        if let Some(reason) = &body.reason {
            if reason.chars().count() > MAX_REASON {
                return Err(format!(
                    "\"reason\" has {} characters; give at most {MAX_REASON}",
                    reason.chars().count()
                ));
            }
            if reason.chars().any(char::is_control) {
                return Err(
                    "\"reason\" contains control characters (a newline, say); give one line of text"
                        .into(),
                );
            }
        }
        let expires_at = match body.ttl_secs {
            None => None,
            Some(secs) => {
                let ttl = Duration::try_from_secs_f64(secs)
                    .ok()
                    .filter(|t| !t.is_zero() && *t <= MAX_TTL)
                    .ok_or_else(|| {
                        format!(
                            "\"ttlSecs\" is {secs}: give a number of seconds above 0 and at most {}, or leave it out for a report that holds until the next",
                            MAX_TTL.as_secs()
                        )
                    })?;
                Some(now + ttl)
            }
        };
        Ok(Self {
            healthy: body.healthy,
            reason: body.reason.filter(|r| !r.is_empty()),
            expires_at,
        })
    }
}

/// What kind of check the agent runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckKind {
    /// `--health-url`: a GET that must answer 2xx.
    Url,
    /// `--health-cmd`: a shell command that must exit 0.
    Command,
}

/// The agent's own check, as last run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckSignal {
    pub kind: CheckKind,
    pub healthy: bool,
    /// Why it is unhealthy: the status, the exit code, the error.
    pub reason: Option<String>,
}

/// The application's report, as `/v1/health` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppSignal {
    /// As reported, or false once the report lapsed.
    pub healthy: bool,
    pub reason: Option<String>,
    /// How long the report still holds; absent for a report without `ttlSecs`.
    pub expires_in_ms: Option<u64>,
}

/// `GET /v1/health` (and the reply to `POST /v1/health`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthSignal {
    /// False when the application or the check says so, or the application's report lapsed.
    pub healthy: bool,
    /// Why not, one sentence per source.
    pub reasons: Vec<String>,
    /// Absent until the application has reported.
    pub app: Option<AppSignal>,
    /// Absent unless the agent runs a check.
    pub check: Option<CheckSignal>,
}

impl Default for HealthSignal {
    fn default() -> Self {
        Self::of(None, None, Instant::now())
    }
}

impl HealthSignal {
    /// The node's health at `now`, from the application's last report and the agent's last check. With
    /// neither, the node is healthy: the signal is opt-in.
    pub fn of(app: Option<&AppReport>, check: Option<&CheckSignal>, now: Instant) -> Self {
        let mut reasons = Vec::new();
        let app = app.map(|r| {
            let left = r.expires_at.map(|t| t.saturating_duration_since(now));
            let lapsed = left.is_some_and(|l| l.is_zero());
            if lapsed {
                // No number in it: the leader's `reason` carries it, and must not change by itself.
                reasons.push(
                    "the application's health report lapsed: it must report again (POST /v1/health, the SDK's set_healthy) within its ttlSecs"
                        .to_owned(),
                );
            } else if !r.healthy {
                reasons.push(format!(
                    "the application reports itself unhealthy: {}",
                    r.reason.as_deref().unwrap_or("no reason given")
                ));
            }
            AppSignal {
                healthy: r.healthy && !lapsed,
                reason: r.reason.clone(),
                expires_in_ms: left.map(|l| u64::try_from(l.as_millis()).unwrap_or(u64::MAX)),
            }
        });
        if let Some(c) = check.filter(|c| !c.healthy) {
            let what = match c.kind {
                CheckKind::Url => "--health-url",
                CheckKind::Command => "--health-cmd",
            };
            reasons.push(format!(
                "the agent's check ({what}) fails: {}",
                c.reason.as_deref().unwrap_or("no reason given")
            ));
        }
        Self {
            healthy: reasons.is_empty(),
            reasons,
            app,
            check: check.cloned(),
        }
    }

    /// When this signal changes by itself: the application's report lapses.
    pub fn lapses_at(app: Option<&AppReport>, now: Instant) -> Option<Instant> {
        app.and_then(|r| r.expires_at).filter(|t| *t > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(body: &str, now: Instant) -> Result<AppReport, String> {
        AppReport::from_body(body.as_bytes(), now)
    }

    #[test]
    fn with_no_report_and_no_check_a_node_is_healthy() {
        let s = HealthSignal::of(None, None, Instant::now());
        assert!(s.healthy);
        assert!(s.reasons.is_empty() && s.app.is_none() && s.check.is_none());
    }

    #[test]
    fn an_unhealthy_report_gives_its_reason() {
        let now = Instant::now();
        let r = report(r#"{"healthy": false, "reason": "postgres is down"}"#, now).unwrap();
        let s = HealthSignal::of(Some(&r), None, now);
        assert!(!s.healthy);
        assert_eq!(
            s.reasons,
            vec!["the application reports itself unhealthy: postgres is down"]
        );
        assert_eq!(s.app.unwrap().expires_in_ms, None);
    }

    #[test]
    fn a_healthy_report_with_a_ttl_lapses_into_unhealthy() {
        let now = Instant::now();
        let r = report(r#"{"healthy": true, "ttlSecs": 2.5}"#, now).unwrap();
        let before = HealthSignal::of(Some(&r), None, now + Duration::from_millis(2_000));
        assert!(before.healthy);
        assert_eq!(before.app.unwrap().expires_in_ms, Some(500));
        assert_eq!(
            HealthSignal::lapses_at(Some(&r), now),
            Some(now + Duration::from_millis(2_500))
        );
        let after = HealthSignal::of(Some(&r), None, now + Duration::from_millis(2_600));
        assert!(!after.healthy);
        assert!(after.reasons[0].contains("report lapsed"), "{after:?}");
        assert_eq!(
            HealthSignal::lapses_at(Some(&r), now + Duration::from_secs(3)),
            None
        );
    }

    #[test]
    fn a_failing_check_makes_the_node_unhealthy_whatever_the_application_says() {
        let now = Instant::now();
        let r = report(r#"{"healthy": true}"#, now).unwrap();
        let check = CheckSignal {
            kind: CheckKind::Url,
            healthy: false,
            reason: Some("GET http://127.0.0.1:6380/health answered 503".into()),
        };
        let s = HealthSignal::of(Some(&r), Some(&check), now);
        assert!(!s.healthy);
        assert_eq!(
            s.reasons,
            vec![
                "the agent's check (--health-url) fails: GET http://127.0.0.1:6380/health answered 503"
            ]
        );
    }

    #[test]
    fn malformed_reports_are_refused_with_what_to_send() {
        let now = Instant::now();
        for (body, says) in [
            ("not json", "must be a JSON object"),
            (r#"{"reason": "x"}"#, "missing field `healthy`"),
            (r#"{"healthy": "no"}"#, "must be a JSON object"),
            (r#"{"healthy": true, "ttl": 3}"#, "unknown field `ttl`"),
            (r#"{"healthy": true, "ttlSecs": 0}"#, "above 0"),
            (r#"{"healthy": true, "ttlSecs": -1}"#, "above 0"),
            (r#"{"healthy": true, "ttlSecs": 1e12}"#, "at most 86400"),
            (
                r#"{"healthy": false, "reason": "a\nb"}"#,
                "control characters",
            ),
        ] {
            let e = report(body, now).expect_err(body);
            assert!(e.contains(says), "{body}: {e}");
        }
        let long = format!(r#"{{"healthy": false, "reason": "{}"}}"#, "x".repeat(201));
        assert!(report(&long, now).unwrap_err().contains("at most 200"));
    }
}

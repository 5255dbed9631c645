//! The health check: `--health-url` or `--health-cmd`, run every `--health-interval-ms`, published as a
//! [`CheckSignal`]. With the application's own reports (`POST /v1/health`) it makes the node's health
//! ([`mesh_api::HealthSignal`]), which the leader task leads on: an unhealthy node steps down and is voted
//! out ([`crate::leadership::lease`], [`crate::leadership::election`]).
//!
//! One failure is not enough to step down ([`FAILURES`]): a check that times out once under load must not
//! move the cluster's leader. One success is enough to be healthy again.

use std::time::Duration;

use alloy::transports::http::reqwest;
use mesh_api::{CheckKind, CheckSignal};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::RunArgs;

/// Failed checks in a row that make the node unhealthy.
pub const FAILURES: u32 = 2;

/// What is checked.
#[derive(Debug, Clone)]
pub enum Check {
    /// A GET that must answer 2xx.
    Url(reqwest::Url),
    /// A shell command that must exit 0, run as the hooks are ([`crate::hooks::run_quietly`]): a cleaned
    /// environment, its own process group, killed at the timeout, its output discarded.
    Command(String),
}

/// What the check task needs to know.
pub struct HealthCheck {
    pub check: Check,
    pub every: Duration,
    /// How long one check may take before it counts as failed.
    pub timeout: Duration,
}

impl HealthCheck {
    /// The check `--health-url` or `--health-cmd` asks for, every `--health-interval-ms`; none without
    /// either.
    pub fn from_args(args: &RunArgs) -> Option<Self> {
        let check = match (&args.health_url, &args.health_cmd) {
            (Some(url), _) => Check::Url(url.clone()),
            (None, Some(cmd)) => Check::Command(cmd.clone()),
            (None, None) => return None,
        };
        let every = Duration::from_millis(args.health_interval_ms);
        Some(Self {
            check,
            every,
            timeout: every,
        })
    }
}

/// Whether `failures` checks in a row have failed enough: the pure rule.
pub fn unhealthy_after(failures: u32) -> bool {
    failures >= FAILURES
}

impl HealthCheck {
    /// Runs until `cancel` fires.
    ///
    /// # Errors
    /// When the HTTP client cannot be built (no TLS backend).
    pub async fn run(
        self,
        out: watch::Sender<Option<CheckSignal>>,
        cancel: CancellationToken,
    ) -> anyhow::Result<()> {
        let client = reqwest::Client::builder()
            .timeout(self.timeout)
            .no_proxy()
            .build()?;
        let kind = match self.check {
            Check::Url(_) => CheckKind::Url,
            Check::Command(_) => CheckKind::Command,
        };
        let mut failures = 0u32;
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            let Some(result) = cancel.run_until_cancelled(self.once(&client)).await else {
                return Ok(());
            };
            failures = match &result {
                Ok(()) => 0,
                Err(_) => failures.saturating_add(1),
            };
            let healthy = !unhealthy_after(failures);
            let signal = CheckSignal {
                kind,
                healthy,
                reason: result.err(),
            };
            let was = out.borrow().as_ref().map(|s| s.healthy);
            if was != Some(healthy) {
                match (&signal.reason, healthy) {
                    (Some(why), false) => {
                        warn!(reason = %why, "the health check fails: this node will not lead")
                    }
                    (_, true) if was == Some(false) => info!("the health check passes again"),
                    _ => {}
                }
            }
            out.send_if_modified(|held| {
                let changed = held.as_ref() != Some(&signal);
                if changed {
                    *held = Some(signal);
                }
                changed
            });
        }
    }

    /// One check: why it failed, if it did.
    async fn once(&self, client: &reqwest::Client) -> Result<(), String> {
        match &self.check {
            Check::Url(url) => match client.get(url.clone()).send().await {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(format!("GET {url} answered {}", r.status())),
                Err(e) if e.is_timeout() => Err(format!(
                    "GET {url} did not answer within {:.1} s",
                    self.timeout.as_secs_f64()
                )),
                Err(e) => Err(format!("GET {url} failed: {e}")),
            },
            Check::Command(cmd) => crate::hooks::run_quietly(cmd, self.timeout)
                .await
                .map_err(|e| format!("`{cmd}`: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_failure_is_not_enough_to_step_down() {
        assert!(!unhealthy_after(0));
        assert!(!unhealthy_after(1));
        assert!(unhealthy_after(2));
        assert!(unhealthy_after(u32::MAX));
    }
}

//! What every agent says of its peers' health, sampled from all of them at once every few milliseconds
//! ([`HealthSampler`]): what the liveness scenarios judge, as an application polling `/v1/peers` would see
//! it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mesh_api::Peer;

use crate::system::sampler::{Sample, Sampler};

/// Samples every agent's `/v1/peers`.
pub struct HealthSampler(Sampler<Vec<Peer>>);

impl HealthSampler {
    /// Starts sampling the agents at `sockets` (node i's at `sockets[i - 1]`) every `every`.
    pub fn start(sockets: Vec<PathBuf>, every: Duration) -> Self {
        Self(Sampler::start(sockets, "/v1/peers", every))
    }

    /// Stops sampling and returns what was seen.
    pub fn stop(self) -> Health {
        Health(self.0.stop())
    }
}

/// What a [`HealthSampler`] saw.
#[derive(Debug, Clone)]
pub struct Health(pub Vec<Sample<Vec<Peer>>>);

/// What node `i` (1-based) said of seat `seat` in one sample: healthy or not, or `None` if it did not
/// answer or did not list the seat.
pub fn says(sample: &Sample<Vec<Peer>>, i: usize, seat: u64) -> Option<bool> {
    let peers = sample.answers.get(i - 1)?.as_ref()?;
    peers.iter().find(|p| p.token_id == seat).map(|p| p.healthy)
}

impl Health {
    /// How long after `from` every node of `watchers` first said seat `seat` was `healthy` (each its own
    /// first sample so), the slowest of them; `None` if one never did.
    pub fn all_said(
        &self,
        watchers: &[usize],
        seat: u64,
        healthy: bool,
        from: Instant,
    ) -> Option<Duration> {
        watchers
            .iter()
            .map(|i| {
                self.0
                    .iter()
                    .filter(|s| s.at >= from)
                    .find(|s| says(s, *i, seat) == Some(healthy))
                    .map(|s| s.at - from)
            })
            .try_fold(Duration::ZERO, |worst, t| t.map(|t| worst.max(t)))
    }

    /// The samples between `from` and `to` in which a node of `watchers` said one of `seats` was
    /// unhealthy: (seconds after `from`, node, seat).
    pub fn unhealthy(
        &self,
        watchers: &[usize],
        seats: &[u64],
        from: Instant,
        to: Instant,
    ) -> Vec<(f64, usize, u64)> {
        let mut out = Vec::new();
        for s in self.0.iter().filter(|s| s.at >= from && s.at <= to) {
            for i in watchers {
                for seat in seats.iter().filter(|seat| **seat != *i as u64) {
                    if says(s, *i, *seat) == Some(false) {
                        out.push(((s.at - from).as_secs_f64(), *i, *seat));
                    }
                }
            }
        }
        out
    }

    /// How many samples between `from` and `to` every node of `watchers` answered.
    pub fn answered(&self, watchers: &[usize], from: Instant, to: Instant) -> usize {
        self.0
            .iter()
            .filter(|s| s.at >= from && s.at <= to)
            .filter(|s| {
                watchers
                    .iter()
                    .all(|i| s.answers.get(i - 1).is_some_and(Option::is_some))
            })
            .count()
    }
}

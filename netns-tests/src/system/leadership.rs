//! Who claims to lead, asked of every agent at once and again every few milliseconds ([`LeaderSampler`]):
//! what the lease scenarios judge, as an application acting on `isSelf` would see it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use mesh_api::Leader;

use crate::system::sampler::Sampler;

/// Every agent's `/v1/leader` at one moment: `None` for an agent that did not answer in time.
pub type Sample = crate::system::sampler::Sample<Leader>;

impl Sample {
    /// The nodes (1-based) that say they lead.
    pub fn claimants(&self) -> Vec<usize> {
        self.answers
            .iter()
            .enumerate()
            .filter(|(_, l)| l.as_ref().is_some_and(|l| l.is_self))
            .map(|(i, _)| i + 1)
            .collect()
    }
}

/// Asks every agent's API for `/v1/leader` at once, every `every`, on a thread of its own, until stopped.
pub struct LeaderSampler(Sampler<Leader>);

impl LeaderSampler {
    /// Starts sampling the agents at `sockets` (node i's at `sockets[i - 1]`).
    pub fn start(sockets: Vec<PathBuf>, every: Duration) -> Self {
        Self(Sampler::start(sockets, "/v1/leader", every))
    }

    /// Stops sampling and returns what was seen.
    pub fn stop(self) -> Samples {
        Samples(self.0.stop())
    }
}

/// What a [`LeaderSampler`] saw.
#[derive(Debug, Clone)]
pub struct Samples(pub Vec<Sample>);

impl Samples {
    /// The samples in which more than one agent said it leads.
    pub fn with_two_leaders(&self) -> Vec<&Sample> {
        self.0.iter().filter(|s| s.claimants().len() > 1).collect()
    }

    /// The samples at or after `from`.
    pub fn since(&self, from: Instant) -> impl Iterator<Item = &Sample> {
        self.0.iter().filter(move |s| s.at >= from)
    }

    /// What node `i` (1-based) answered at or after `from`, leaving out the samples it did not answer.
    pub fn answers(&self, i: usize, from: Instant) -> Vec<Leader> {
        self.since(from)
            .filter_map(|s| s.answers.get(i - 1).cloned().flatten())
            .collect()
    }

    /// When node `i` last said it leads, at or before `until`.
    pub fn last_claim(&self, i: usize, until: Instant) -> Option<Instant> {
        self.0
            .iter()
            .rev()
            .find(|s| s.at <= until && s.claimants().contains(&i))
            .map(|s| s.at)
    }

    /// When node `i` first said it leads, at or after `from`.
    pub fn first_claim(&self, i: usize, from: Instant) -> Option<Instant> {
        self.since(from)
            .find(|s| s.claimants().contains(&i))
            .map(|s| s.at)
    }

    /// One line per sample in which the claims changed, for a failure message.
    pub fn story(&self, start: Instant) -> String {
        let mut out = String::new();
        let mut last = None;
        for s in &self.0 {
            let line: Vec<String> = s
                .answers
                .iter()
                .enumerate()
                .map(|(i, l)| match l {
                    None => format!("{}: -", i + 1),
                    Some(l) => format!(
                        "{}: seat {:?} term {:?} {}{}",
                        i + 1,
                        l.token_id,
                        l.term,
                        l.state.as_str(),
                        if l.is_self { " SELF" } else { "" }
                    ),
                })
                .collect();
            let line = line.join(" | ");
            if last.as_ref() != Some(&line) {
                out.push_str(&format!(
                    "{:>7.3}s  {line}\n",
                    s.at.saturating_duration_since(start).as_secs_f64()
                ));
                last = Some(line);
            }
        }
        out
    }
}

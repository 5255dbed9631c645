//! Who claims to lead, asked of every agent at once and again every few milliseconds ([`LeaderSampler`]):
//! what the lease scenarios judge, as an application acting on `isSelf` would see it.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mesh_api::Leader;

/// How long one agent may take to answer a sample: a frozen agent never does.
const ANSWER_WITHIN: Duration = Duration::from_millis(80);

/// Every agent's `/v1/leader` at one moment: `None` for an agent that did not answer in time.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Instant,
    pub leaders: Vec<Option<Leader>>,
}

impl Sample {
    /// The nodes (1-based) that say they lead.
    pub fn claimants(&self) -> Vec<usize> {
        self.leaders
            .iter()
            .enumerate()
            .filter(|(_, l)| l.as_ref().is_some_and(|l| l.is_self))
            .map(|(i, _)| i + 1)
            .collect()
    }
}

/// Asks every agent's API for `/v1/leader` at once, every `every`, on a thread of its own, until stopped.
pub struct LeaderSampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Sample>>>,
}

impl LeaderSampler {
    /// Starts sampling the agents at `sockets` (node i's at `sockets[i - 1]`).
    pub fn start(sockets: Vec<PathBuf>, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let mut samples = Vec::new();
                let mut tick = tokio::time::interval(every);
                // Bounded by the stop flag, which the guard sets on drop.
                while !flag.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let at = Instant::now();
                    let asks = sockets.iter().map(|s| async move {
                        tokio::time::timeout(
                            ANSWER_WITHIN,
                            mesh_api::get(s.as_path(), "/v1/leader"),
                        )
                        .await
                        .ok()
                        .and_then(Result::ok)
                    });
                    let leaders = futures::future::join_all(asks).await;
                    samples.push(Sample { at, leaders });
                }
                samples
            })
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling and returns what was seen.
    pub fn stop(mut self) -> Samples {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self
            .thread
            .take()
            .expect("stopped once")
            .join()
            .expect("the sampler thread panicked");
        Samples(samples)
    }
}

impl Drop for LeaderSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
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
            .filter_map(|s| s.leaders.get(i - 1).cloned().flatten())
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
                .leaders
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

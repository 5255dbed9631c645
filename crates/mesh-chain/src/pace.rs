//! The chain's block time, read from the timestamps of its latest blocks. The agent's default leader timeout
//! is derived from it (a few blocks, so that a ballot is mined well within it); the rule is pure
//! ([`BlockPace::of`]) so that every node that reads the same blocks comes to the same pace.
//!
//! A chain that makes a block per slot (Ethereum's 12 s, Base's 2 s, anvil's `--block-time`) shows its slot
//! in most intervals, a missed slot now and then aside. A chain that makes blocks on demand (anvil by default)
//! or faster than its timestamps' second shows no such interval, and has no block time to wait for.

use std::time::Duration;

use alloy::eips::BlockNumberOrTag;
use alloy::providers::Provider;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use crate::error::ChainError;
use crate::rpc::Rpcs;

/// How many intervals between the latest blocks are looked at.
pub const SAMPLED: u64 = 16;

/// How many block reads are under way at once: a provider is sent no more than a few at a time.
const AT_ONCE: usize = 4;

/// How the chain makes its blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum BlockPace {
    /// At least half of the intervals sampled were this many seconds.
    Every { secs: u64 },
    /// No interval was: blocks on demand, or several per second.
    Irregular,
}

impl BlockPace {
    /// The pace of blocks with these `timestamps` (Unix seconds, oldest first): the interval that at least
    /// half of those between them have, if one has (a zero interval, two blocks in one second, is never it).
    pub fn of(timestamps: &[u64]) -> Self {
        let intervals: Vec<u64> = timestamps
            .windows(2)
            .map(|w| w[1].saturating_sub(w[0]))
            .collect();
        let mut counts = std::collections::BTreeMap::<u64, usize>::new();
        for i in intervals.iter().filter(|i| **i > 0) {
            *counts.entry(*i).or_default() += 1;
        }
        counts
            .into_iter()
            .filter(|(_, n)| !intervals.is_empty() && n * 2 >= intervals.len())
            .max_by_key(|(_, n)| *n)
            .map_or(Self::Irregular, |(secs, _)| Self::Every { secs })
    }

    /// The time between blocks, if the chain keeps one.
    pub fn block_time(self) -> Option<Duration> {
        match self {
            Self::Every { secs } => Some(Duration::from_secs(secs)),
            Self::Irregular => None,
        }
    }
}

impl std::fmt::Display for BlockPace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Every { secs } => write!(f, "a block every {secs} s"),
            Self::Irregular => f.write_str("blocks at no steady pace"),
        }
    }
}

impl Rpcs {
    /// The chain's pace, from the timestamps of its latest [`SAMPLED`] + 1 blocks, read through the quorum.
    ///
    /// # Errors
    /// [`ChainError::Rpc`] when a block cannot be read.
    pub async fn block_pace(&self) -> Result<BlockPace, ChainError> {
        let rpc = |source| ChainError::Rpc {
            what: "eth_getBlockByNumber",
            source,
        };
        let head = self
            .reader()
            .get_block_number()
            .await
            .map_err(|source| ChainError::Rpc {
                what: "eth_blockNumber",
                source,
            })?;
        let first = head.saturating_sub(SAMPLED);
        let timestamps: Vec<u64> = futures::stream::iter(first..=head)
            .map(|n| async move {
                self.reader()
                    .get_block_by_number(BlockNumberOrTag::Number(n))
                    .await
                    .map(|b| b.map(|b| b.header.timestamp))
            })
            .buffered(AT_ONCE)
            .map_err(rpc)
            .try_collect::<Vec<Option<u64>>>()
            .await?
            .into_iter()
            .flatten()
            .collect();
        Ok(BlockPace::of(&timestamps))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every(secs: u64, blocks: usize) -> Vec<u64> {
        (0..blocks as u64).map(|i| 1_000 + i * secs).collect()
    }

    #[test]
    fn a_chain_of_slots_shows_its_slot_missed_ones_aside() {
        assert_eq!(BlockPace::of(&every(12, 17)), BlockPace::Every { secs: 12 });
        let mut missed = every(12, 17);
        for t in &mut missed[10..] {
            *t += 12;
        }
        assert_eq!(BlockPace::of(&missed), BlockPace::Every { secs: 12 });
        assert_eq!(BlockPace::of(&every(2, 17)), BlockPace::Every { secs: 2 });
    }

    #[test]
    fn blocks_on_demand_or_several_a_second_have_no_pace() {
        let on_demand = [
            1_000, 1_000, 1_001, 1_040, 1_041, 1_300, 1_302, 1_310, 1_900,
        ];
        assert_eq!(BlockPace::of(&on_demand), BlockPace::Irregular);
        let quarter_second: Vec<u64> = (0..17).map(|i| 1_000 + i / 4).collect();
        assert_eq!(BlockPace::of(&quarter_second), BlockPace::Irregular);
        assert_eq!(BlockPace::of(&[1_000]), BlockPace::Irregular);
        assert_eq!(BlockPace::of(&[]), BlockPace::Irregular);
    }

    #[test]
    fn the_pace_survives_the_state_file() {
        for pace in [BlockPace::Every { secs: 2 }, BlockPace::Irregular] {
            let text = serde_json::to_string(&pace).unwrap();
            assert_eq!(serde_json::from_str::<BlockPace>(&text).unwrap(), pace);
        }
        assert_eq!(
            serde_json::to_string(&BlockPace::Every { secs: 12 }).unwrap(),
            r#"{"kind":"every","secs":12}"#
        );
    }
}

//! Which answer a quorum of providers gives, decided without I/O: what each answer is compared on, and
//! when enough of them have come to take one, or to give up.
//!
//! Answers are compared on what the agent uses of them, not byte for byte: two honest clients (geth and
//! reth, say) format a block or a log with different optional fields, and a provider may add its own.
//! What is compared is what a lie would have to change: a block's hash, its parent, its logs bloom and roots;
//! every field of every log; a call's returned bytes; a revert's code and data.
//!
//! How a method's answers are taken is decided here, for every method at once ([`policy`]): reads a decision
//! rests on need a quorum alike; a figure each provider estimates for itself (gas, fees) needs a quorum that
//! the call succeeds, and is their median; a signed transaction goes to every provider, and the first that
//! takes it answers.

use alloy::primitives::U256;
use serde_json::Value;

/// How the answers to a method are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// A read that something is decided on: `quorum` providers must answer alike ([`decide`]).
    Quorum,
    /// A figure each provider works out for itself, which honest ones give differently (a gas estimate, a
    /// fee): `quorum` of them must give one (a revert counts only where a quorum reverts alike), and the
    /// median of those in is taken, so that one provider alone can move it only within the others' range
    /// ([`decide_estimate`]).
    Estimate,
    /// A signed transaction: sent to every provider; the first that takes it, under the hash its bytes
    /// have, answers, and the others' answers are duplicates ([`decide_broadcast`]).
    Broadcast,
    /// A read of what may not be there yet (a transaction's receipt): as [`Policy::Quorum`], but a "not
    /// yet" (`null`) answers once a quorum has answered without agreeing and the slower ones are no longer
    /// waited for. The caller asks again; a provider that has not seen a block yet, against one that has,
    /// holds the answer up no longer than that, rather than until a third that hangs times out
    /// ([`decide_pending`]).
    Pending,
}

/// The policy of `method`. Anything not named here is a read a quorum must agree on.
pub fn policy(method: &str) -> Policy {
    match method {
        "eth_sendRawTransaction" => Policy::Broadcast,
        "eth_getTransactionReceipt" | "eth_getTransactionByHash" => Policy::Pending,
        "eth_estimateGas" | "eth_gasPrice" | "eth_maxPriorityFeePerGas" | "eth_blobBaseFee" => {
            Policy::Estimate
        }
        _ => Policy::Quorum,
    }
}

/// One provider's answer, as it is compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `eth_blockNumber`: providers differ by a block or two in honest ways, so heads are not compared.
    Head(u64),
    /// Any other answer, by what it is compared on ([`key`]).
    Keyed(String),
    /// A figure under [`Policy::Estimate`]: only that a provider gave one is compared.
    Figure(U256),
    /// A transaction the provider took, under the hash of the bytes sent ([`Policy::Broadcast`]).
    Accepted,
}

/// What to do with the answers in so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Answer with provider `take`'s response; `dissent` are the providers that answered otherwise.
    Take { take: usize, dissent: Vec<usize> },
    /// Wait for the answers still out.
    Wait,
    /// No answer can reach the quorum any more: the answers' groups, largest first, by provider (none when
    /// too few answered at all).
    Split { groups: Vec<Vec<usize>> },
}

/// Decides, from `answers` (provider index and answer, in the order they came), with `outstanding`
/// providers still to answer (or fail), whether `quorum` of them agree.
///
/// A head is the highest block that `quorum` providers have reached: the `quorum`-th highest head, taken
/// once `quorum` heads are in, so that every read at that block is answered by at least that many. Any other
/// answer is taken once `quorum` providers gave it; the first of them answers.
pub fn decide(answers: &[(usize, Answer)], outstanding: usize, quorum: usize) -> Decision {
    let quorum = quorum.max(1);
    let heads: Vec<(usize, u64)> = answers
        .iter()
        .filter_map(|(i, a)| match a {
            Answer::Head(n) => Some((*i, *n)),
            Answer::Keyed(_) | Answer::Figure(_) | Answer::Accepted => None,
        })
        .collect();
    if !heads.is_empty() {
        if heads.len() < quorum {
            return match heads.len() + outstanding >= quorum {
                true => Decision::Wait,
                // Heads are not compared, so no group disagrees: too few answered.
                false => Decision::Split { groups: Vec::new() },
            };
        }
        let mut sorted = heads;
        sorted.sort_by_key(|h| std::cmp::Reverse(h.1));
        let take = sorted.get(quorum - 1).map_or(0, |(i, _)| *i);
        return Decision::Take {
            take,
            dissent: Vec::new(),
        };
    }
    let mut groups: Vec<(&Answer, Vec<usize>)> = Vec::new();
    for (i, a) in answers {
        match groups.iter_mut().find(|(k, _)| *k == a) {
            Some((_, members)) => members.push(*i),
            None => groups.push((a, vec![*i])),
        }
    }
    if let Some((_, members)) = groups.iter().find(|(_, m)| m.len() >= quorum) {
        let dissent = answers
            .iter()
            .map(|(i, _)| *i)
            .filter(|i| !members.contains(i))
            .collect();
        return Decision::Take {
            take: members[0],
            dissent,
        };
    }
    let largest = groups.iter().map(|(_, m)| m.len()).max().unwrap_or(0);
    if largest + outstanding >= quorum {
        return Decision::Wait;
    }
    let mut groups: Vec<Vec<usize>> = groups.into_iter().map(|(_, m)| m).collect();
    groups.sort_by_key(|g| std::cmp::Reverse(g.len()));
    Decision::Split { groups }
}

/// Decides under `policy`: [`decide`], [`decide_estimate`] (`settled` once every answer is in, or the wait
/// for the slower ones is over) or [`decide_broadcast`].
pub fn decide_for(
    policy: Policy,
    answers: &[(usize, Answer)],
    outstanding: usize,
    quorum: usize,
    settled: bool,
) -> Decision {
    match policy {
        Policy::Quorum => decide(answers, outstanding, quorum),
        Policy::Estimate => decide_estimate(answers, outstanding, quorum, settled),
        Policy::Broadcast => decide_broadcast(answers, outstanding),
        Policy::Pending => decide_pending(answers, outstanding, quorum, settled),
    }
}

/// The answer a provider gives for what it does not have (yet).
pub fn not_yet() -> Answer {
    Answer::Keyed("null".to_owned())
}

/// What may not be there yet: as [`decide`]; but while a quorum is not reached, and once `settled` (a
/// quorum has answered and the rest were waited for a while), a `null` answers: "not yet", which can only
/// delay the caller, never show it what a quorum did not agree on.
pub fn decide_pending(
    answers: &[(usize, Answer)],
    outstanding: usize,
    quorum: usize,
    settled: bool,
) -> Decision {
    match decide(answers, outstanding, quorum) {
        Decision::Wait if settled => {
            answers
                .iter()
                .find(|(_, a)| *a == not_yet())
                .map_or(Decision::Wait, |(i, _)| Decision::Take {
                    take: *i,
                    dissent: Vec::new(),
                })
        }
        // A provider that has not seen the block yet is behind the quorum, not against it: an honest one a
        // block late would otherwise be named as a liar.
        Decision::Take { take, dissent } => Decision::Take {
            take,
            dissent: (dissent.into_iter())
                .filter(|i| !answers.contains(&(*i, not_yet())))
                .collect(),
        },
        decided => decided,
    }
}

/// Figures: taken once `quorum` providers have given one and the rest are in (`outstanding` 0) or no
/// longer waited for (`settled`); the median of those in, the higher of the middle two, answers. Errors
/// (a revert the estimate hit) are taken only where `quorum` providers answer alike, as reads are.
pub fn decide_estimate(
    answers: &[(usize, Answer)],
    outstanding: usize,
    quorum: usize,
    settled: bool,
) -> Decision {
    let mut figures: Vec<(usize, U256)> = answers
        .iter()
        .filter_map(|(i, a)| match a {
            Answer::Figure(f) => Some((*i, *f)),
            _ => None,
        })
        .collect();
    if figures.len() >= quorum.max(1) {
        if outstanding > 0 && !settled {
            return Decision::Wait;
        }
        figures.sort_by_key(|(_, f)| *f);
        let take = figures[figures.len() / 2].0;
        let dissent = answers
            .iter()
            .filter(|(_, a)| !matches!(a, Answer::Figure(_)))
            .map(|(i, _)| *i)
            .collect();
        return Decision::Take { take, dissent };
    }
    // Every figure is one answer here: a revert needs a quorum alike against them.
    let grouped: Vec<(usize, Answer)> = answers
        .iter()
        .map(|(i, a)| match a {
            Answer::Figure(_) => (*i, Answer::Keyed("\0figure".to_owned())),
            other => (*i, other.clone()),
        })
        .collect();
    decide(&grouped, outstanding, quorum)
}

/// A transaction: the first provider that took it answers. Until one has, every answer is waited for;
/// when none took it, the refusal most of them gave answers (the nonce, the funds), so that the sender
/// hears why.
pub fn decide_broadcast(answers: &[(usize, Answer)], outstanding: usize) -> Decision {
    if let Some((take, _)) = answers.iter().find(|(_, a)| *a == Answer::Accepted) {
        return Decision::Take {
            take: *take,
            dissent: Vec::new(),
        };
    }
    if outstanding > 0 {
        return Decision::Wait;
    }
    let mut groups: Vec<(&Answer, Vec<usize>)> = Vec::new();
    for (i, a) in answers {
        match groups.iter_mut().find(|(k, _)| *k == a) {
            Some((_, members)) => members.push(*i),
            None => groups.push((a, vec![*i])),
        }
    }
    groups.sort_by_key(|(_, m)| std::cmp::Reverse(m.len()));
    match groups.first() {
        Some((_, members)) => Decision::Take {
            take: members[0],
            dissent: Vec::new(),
        },
        None => Decision::Split { groups: Vec::new() },
    }
}

/// Whether a provider's refusal of a transaction says that it has it already (it came through another
/// provider, or was mined): not a refusal at all. Clients word it differently.
pub fn is_duplicate(refusal: &str) -> bool {
    let r = refusal.to_ascii_lowercase();
    [
        "already known",
        "known transaction",
        "alreadyknown",
        "already imported",
        "already exists",
        "already in the mempool",
        "nonce too low",
    ]
    .iter()
    .any(|d| r.contains(d))
}

/// The fields of a block that are compared: its identity and what the follower reads of it.
const BLOCK: &[&str] = &[
    "hash",
    "parentHash",
    "number",
    "logsBloom",
    "stateRoot",
    "receiptsRoot",
];
/// The fields of a log: all of what a log is.
const LOG: &[&str] = &[
    "address",
    "topics",
    "data",
    "blockNumber",
    "blockHash",
    "transactionHash",
    "transactionIndex",
    "logIndex",
];
/// The fields of a transaction: its hash commits to the rest, and its place and input are what is read.
const TRANSACTION: &[&str] = &[
    "hash",
    "blockHash",
    "blockNumber",
    "transactionIndex",
    "from",
    "to",
    "input",
];
const RECEIPT: &[&str] = &[
    "transactionHash",
    "blockHash",
    "blockNumber",
    "status",
    "contractAddress",
];

/// What a successful answer to `method` is compared on, as text.
pub fn key(method: &str, result: &Value) -> String {
    let picked = match method {
        "eth_getBlockByNumber" | "eth_getBlockByHash" => pick(result, BLOCK),
        "eth_getLogs" => logs(result),
        "eth_getTransactionByHash" => pick(result, TRANSACTION),
        "eth_getTransactionReceipt" => match pick(result, RECEIPT) {
            Value::Object(mut m) => {
                m.insert("logs".into(), logs(&result["logs"]));
                Value::Object(m)
            }
            other => other,
        },
        _ => result.clone(),
    };
    canonical(&picked)
}

/// What an error answer is compared on: its code and data. Clients word the same error differently.
pub fn error_key(code: i64, data: Option<&Value>) -> String {
    format!("error {code} {}", data.map(canonical).unwrap_or_default())
}

fn logs(v: &Value) -> Value {
    match v {
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|l| {
                    let mut p = pick(l, LOG);
                    // Absent means not removed.
                    if let Value::Object(m) = &mut p {
                        m.insert("removed".into(), Value::Bool(l["removed"] == true));
                    }
                    p
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

fn pick(v: &Value, fields: &[&str]) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            fields
                .iter()
                .map(|f| ((*f).to_owned(), m.get(*f).cloned().unwrap_or(Value::Null)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// `v` as text with object keys sorted and strings lowercased (hex is case-blind; no field compared is
/// case-sensitive text), so that formatting alone never splits two answers.
pub fn canonical(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (n, k) in keys.into_iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&m[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::String(s) => out.push_str(&Value::String(s.to_ascii_lowercase()).to_string()),
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keyed(answers: &[(usize, &str)]) -> Vec<(usize, Answer)> {
        answers
            .iter()
            .map(|(i, k)| (*i, Answer::Keyed((*k).to_owned())))
            .collect()
    }

    #[test]
    fn two_of_three_alike_are_taken_and_the_third_named_as_dissenting() {
        let answers = keyed(&[(2, "lie"), (0, "truth")]);
        assert_eq!(decide(&answers, 1, 2), Decision::Wait);
        let answers = keyed(&[(2, "lie"), (0, "truth"), (1, "truth")]);
        assert_eq!(
            decide(&answers, 0, 2),
            Decision::Take {
                take: 0,
                dissent: vec![2]
            }
        );
    }

    #[test]
    fn the_quorum_is_taken_as_soon_as_it_is_in_without_waiting_for_a_slow_provider() {
        let answers = keyed(&[(1, "truth"), (0, "truth")]);
        assert_eq!(
            decide(&answers, 1, 2),
            Decision::Take {
                take: 1,
                dissent: vec![]
            }
        );
    }

    #[test]
    fn no_quorum_is_a_split_once_no_answer_still_out_could_make_one() {
        let answers = keyed(&[(0, "a"), (1, "b")]);
        assert_eq!(decide(&answers, 1, 2), Decision::Wait);
        let answers = keyed(&[(0, "a"), (1, "b"), (2, "c")]);
        assert!(matches!(decide(&answers, 0, 2), Decision::Split { .. }));
        // Two providers, both needed: one lie is enough to stop, never to be followed.
        assert_eq!(
            decide(&keyed(&[(1, "lie"), (0, "truth")]), 0, 2),
            Decision::Split {
                groups: vec![vec![1], vec![0]]
            }
        );
        // A provider that failed counts for nobody.
        assert!(matches!(
            decide(&keyed(&[(0, "truth")]), 0, 2),
            Decision::Split { .. }
        ));
    }

    #[test]
    fn the_head_is_the_highest_block_a_quorum_has_reached() {
        let heads = |h: &[(usize, u64)]| -> Vec<(usize, Answer)> {
            h.iter().map(|(i, n)| (*i, Answer::Head(*n))).collect()
        };
        assert_eq!(decide(&heads(&[(0, 100)]), 2, 2), Decision::Wait);
        // A provider that claims a far head is not followed there: the second highest is.
        assert_eq!(
            decide(&heads(&[(0, 1_000_000), (1, 100)]), 1, 2),
            Decision::Take {
                take: 1,
                dissent: vec![]
            }
        );
        assert_eq!(
            decide(&heads(&[(0, 101), (1, 100), (2, 99)]), 0, 2),
            Decision::Take {
                take: 1,
                dissent: vec![]
            }
        );
        assert!(matches!(
            decide(&heads(&[(0, 100)]), 0, 2),
            Decision::Split { .. }
        ));
    }

    #[test]
    fn a_block_is_compared_on_what_is_read_of_it_not_on_optional_fields() {
        let geth = json!({"hash": "0xAB", "parentHash": "0x01", "number": "0x5", "logsBloom": "0x00", "stateRoot": "0x02", "receiptsRoot": "0x03", "totalDifficulty": "0x0"});
        let reth = json!({"receiptsRoot": "0x03", "stateRoot": "0x02", "logsBloom": "0x00", "number": "0x5", "parentHash": "0x01", "hash": "0xab", "withdrawals": []});
        assert_eq!(
            key("eth_getBlockByNumber", &geth),
            key("eth_getBlockByNumber", &reth)
        );
        let mut lie = reth.clone();
        lie["logsBloom"] = json!("0xff");
        assert_ne!(
            key("eth_getBlockByNumber", &geth),
            key("eth_getBlockByNumber", &lie)
        );
        assert_eq!(key("eth_getBlockByNumber", &Value::Null), "null");
    }

    #[test]
    fn a_log_dropped_added_or_edited_changes_the_key() {
        let log = |data: &str| json!({"address": "0xc0", "topics": ["0x01"], "data": data, "blockNumber": "0x5", "blockHash": "0xab", "transactionHash": "0xcd", "transactionIndex": "0x0", "logIndex": "0x0"});
        let honest = json!([log("0x11"), log("0x22")]);
        let mut with_removed = honest.clone();
        with_removed[0]["removed"] = json!(false);
        assert_eq!(
            key("eth_getLogs", &honest),
            key("eth_getLogs", &with_removed)
        );
        for lie in [
            json!([log("0x11")]),
            json!([log("0x11"), log("0x22"), log("0x33")]),
            json!([log("0x11"), log("0x23")]),
        ] {
            assert_ne!(
                key("eth_getLogs", &honest),
                key("eth_getLogs", &lie),
                "{lie}"
            );
        }
    }

    #[test]
    fn a_call_is_compared_on_its_bytes_and_a_revert_on_its_code_and_data() {
        assert_eq!(
            key("eth_call", &json!("0x01")),
            key("eth_call", &json!("0x01"))
        );
        assert_ne!(
            key("eth_call", &json!("0x01")),
            key("eth_call", &json!("0x00"))
        );
        assert_eq!(
            error_key(3, Some(&json!("0xdeadbeef"))),
            error_key(3, Some(&json!("0xDEADBEEF")))
        );
        assert_ne!(
            error_key(3, Some(&json!("0xdeadbeef"))),
            error_key(3, Some(&json!("0x00")))
        );
    }

    fn figures(answers: &[(usize, u64)]) -> Vec<(usize, Answer)> {
        answers
            .iter()
            .map(|(i, f)| (*i, Answer::Figure(U256::from(*f))))
            .collect()
    }

    #[test]
    fn every_method_has_one_policy_and_reads_need_a_quorum() {
        assert_eq!(policy("eth_sendRawTransaction"), Policy::Broadcast);
        assert_eq!(policy("eth_estimateGas"), Policy::Estimate);
        assert_eq!(policy("eth_maxPriorityFeePerGas"), Policy::Estimate);
        assert_eq!(policy("eth_getTransactionReceipt"), Policy::Pending);
        for read in [
            "eth_call",
            "eth_getLogs",
            "eth_getTransactionCount",
            "eth_getBalance",
            "eth_chainId",
            "eth_someMethodNotYetInvented",
        ] {
            assert_eq!(policy(read), Policy::Quorum, "{read}");
        }
    }

    #[test]
    fn an_estimate_is_the_median_of_every_figure_in_so_one_provider_cannot_move_it_alone() {
        // Two in: wait for the third while the wait lasts.
        assert_eq!(
            decide_estimate(&figures(&[(0, 21_000), (2, 9_000_000)]), 1, 2, false),
            Decision::Wait
        );
        // All in: the liar's figure, high or low, is not the median.
        for lie in [1, 9_000_000] {
            assert_eq!(
                decide_estimate(&figures(&[(0, 21_000), (2, lie), (1, 22_000)]), 0, 2, false),
                Decision::Take {
                    take: if lie == 1 { 0 } else { 1 },
                    dissent: vec![]
                },
                "lie {lie}"
            );
        }
        // The third no longer waited for: the higher of two.
        assert_eq!(
            decide_estimate(&figures(&[(0, 21_000), (2, 30_000)]), 1, 2, true),
            Decision::Take {
                take: 2,
                dissent: vec![]
            }
        );
    }

    #[test]
    fn a_revert_at_estimation_counts_only_where_a_quorum_reverts_alike() {
        let revert = || Answer::Keyed("error 3 0xdead".to_owned());
        // One provider says the call reverts, two give figures: the figures win and it is named.
        let mut answers = figures(&[(0, 21_000), (2, 21_000)]);
        answers.insert(1, (1, revert()));
        assert_eq!(
            decide_estimate(&answers, 0, 2, false),
            Decision::Take {
                take: 2,
                dissent: vec![1]
            }
        );
        // Two revert alike: the revert is the answer.
        let answers = vec![
            (0, revert()),
            (1, Answer::Figure(U256::from(5))),
            (2, revert()),
        ];
        assert_eq!(
            decide_estimate(&answers, 0, 2, false),
            Decision::Take {
                take: 0,
                dissent: vec![1]
            }
        );
        // One figure and one revert of two needed: nothing to take.
        let answers = vec![(0, revert()), (1, Answer::Figure(U256::from(5)))];
        assert!(matches!(
            decide_estimate(&answers, 0, 2, false),
            Decision::Split { .. }
        ));
    }

    /// One provider has not seen the block yet (`null`), another has (a receipt), the third hangs: not
    /// yet, once the slower one is no longer waited for; the receipt itself only where a quorum has it.
    #[test]
    fn a_receipt_one_provider_has_not_seen_yet_is_not_yet_rather_than_a_wait_for_a_third() {
        let receipt = Answer::Keyed("{receipt}".into());
        let split = [(0, not_yet()), (2, receipt.clone())];
        assert_eq!(decide_pending(&split, 1, 2, false), Decision::Wait);
        assert_eq!(
            decide_pending(&split, 1, 2, true),
            Decision::Take {
                take: 0,
                dissent: vec![]
            }
        );
        let agreed = [(0, receipt.clone()), (2, receipt.clone())];
        assert_eq!(
            decide_pending(&agreed, 1, 2, false),
            Decision::Take {
                take: 0,
                dissent: vec![]
            }
        );
        let one_behind = [(0, receipt.clone()), (1, not_yet()), (2, receipt.clone())];
        assert_eq!(
            decide_pending(&one_behind, 0, 2, false),
            Decision::Take {
                take: 0,
                dissent: vec![]
            },
            "a provider that has not seen it yet is behind, not against"
        );
        let no_null = [(0, receipt), (2, Answer::Keyed("{another}".into()))];
        assert_eq!(
            decide_pending(&no_null, 1, 2, true),
            Decision::Wait,
            "two receipts that differ wait for a third: no lie is taken, nor a guess"
        );
    }

    #[test]
    fn a_transaction_is_answered_by_the_first_provider_that_took_it() {
        let refused = |r: &str| Answer::Keyed(r.to_owned());
        assert_eq!(
            decide_broadcast(&[(1, refused("down")), (2, Answer::Accepted)], 1),
            Decision::Take {
                take: 2,
                dissent: vec![]
            }
        );
        // No provider took it yet: the others are waited for.
        assert_eq!(
            decide_broadcast(&[(0, refused("censored"))], 2),
            Decision::Wait
        );
        // None took it: the refusal most gave answers.
        assert_eq!(
            decide_broadcast(
                &[
                    (0, refused("censored")),
                    (1, refused("nonce too low")),
                    (2, refused("nonce too low"))
                ],
                0
            ),
            Decision::Take {
                take: 1,
                dissent: vec![]
            }
        );
        assert_eq!(decide_broadcast(&[], 0), Decision::Split { groups: vec![] });
    }
}

//! The evidence a seat publishes: a TDX quote and its RTMR3 runtime events, their on-chain bytes,
//! and the `report_data` the quote must commit to.

use alloy_primitives::{Address, Bytes, keccak256};
use alloy_sol_types::abi::AbiDecoderConfig;
use alloy_sol_types::{SolType, sol_data};
use serde::Deserialize;

/// The `version` field of [`Evidence::encode`].
pub const EVIDENCE_VERSION: u8 = 1;

/// The largest encoding [`Evidence::decode`] reads. A quote is about 5 KB and dstack's RTMR3 log
/// about 2 KB; the rest is room for events the app emits after `system-ready`, which must travel
/// too because they are folded into RTMR3.
pub const MAX_ENCODED_LEN: usize = 64 * 1024;

/// The most events [`Evidence::decode`] reads (dstack's own boot sequence is 7 to 10).
pub const MAX_EVENTS: usize = 256;

/// The event type dstack gives every runtime event it extends RTMR3 with.
pub const DSTACK_RUNTIME_EVENT_TYPE: u32 = 0x0800_0001;

/// The domain that separates our `report_data` from any other use of the same quote.
const REPORT_DATA_DOMAIN: &[u8] = b"dstack-mesh/node/v1";

/// A TDX quote and the RTMR3 events that explain its `rt_mr3`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evidence {
    /// The raw quote, as `GetQuote` returns it.
    pub quote: Vec<u8>,
    /// RTMR3 events only, in log order.
    pub events: Vec<RuntimeEvent>,
}

/// One RTMR3 event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeEvent {
    pub event_type: u32,
    pub name: String,
    pub payload: Vec<u8>,
    /// The digest a log supplied. It is only ever compared with the recomputed one, never folded in:
    /// a log whose digests disagree with its contents is refused, not trusted.
    pub digest: Option<[u8; 48]>,
}

impl RuntimeEvent {
    /// A dstack runtime event without a supplied digest.
    pub fn new(name: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Self {
            event_type: DSTACK_RUNTIME_EVENT_TYPE,
            name: name.into(),
            payload: payload.into(),
            digest: None,
        }
    }
}

/// Why evidence could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvidenceError {
    #[error("the event log is not a JSON array of dstack events: {0}")]
    EventLogJson(String),
    #[error("event {index} ({name}): its {field} is not hex")]
    Hex {
        index: usize,
        name: String,
        field: &'static str,
    },
    #[error("event {index} ({name}): its digest is {len} bytes, not 48")]
    DigestLength {
        index: usize,
        name: String,
        len: usize,
    },
    #[error(
        "event {index} ({name}) is an event log version {version} event; only version 1 digests are \
         replayed, so this guest agent is newer than this verifier"
    )]
    UnsupportedEventVersion {
        index: usize,
        name: String,
        version: u64,
    },
    #[error("the evidence is {len} bytes encoded; the limit is {limit} bytes")]
    TooLarge { len: usize, limit: usize },
    #[error("the evidence has {count} events; the limit is {limit}")]
    TooManyEvents { count: usize, limit: usize },
    #[error("the evidence is version {version}; this verifier reads version {EVIDENCE_VERSION}")]
    UnsupportedVersion { version: u64 },
    #[error("the evidence is not ABI-encoded (uint8, bytes, (uint32, string, bytes)[]): {0}")]
    Abi(String),
    #[error("the evidence has {count} bytes after its ABI encoding")]
    TrailingBytes { count: usize },
    #[error("the evidence is not in canonical ABI encoding")]
    NotCanonical,
}

/// `abi.encode(uint8 version, bytes quote, (uint32 eventType, string name, bytes payload)[] events)`.
type EvidenceAbi = (
    sol_data::Uint<8>,
    sol_data::Bytes,
    sol_data::Array<(sol_data::Uint<32>, sol_data::String, sol_data::Bytes)>,
);
type AbiValue = (u8, Bytes, Vec<(u32, String, Bytes)>);

/// One entry of the `event_log` JSON string in dstack's `GetQuote` answer. From dstack v0.5.6 the
/// log is stripped: RTMR3 events keep their payload and carry an empty digest.
#[derive(Deserialize)]
struct DstackEvent {
    imr: u32,
    event_type: u32,
    #[serde(default)]
    digest: String,
    #[serde(default)]
    event: String,
    #[serde(default)]
    event_payload: String,
    /// Absent for version 1; dstack's version 2 hashes canonical JSON instead.
    #[serde(default)]
    version: Option<u64>,
}

impl Evidence {
    /// The evidence in dstack's `GetQuote` answer: its quote and its `event_log` JSON string, of
    /// which only the RTMR3 (`imr == 3`) events are kept.
    ///
    /// # Errors
    /// [`EvidenceError`] naming the event that cannot be read, or the limit the result would break.
    pub fn from_dstack(quote: &[u8], event_log_json: &str) -> Result<Self, EvidenceError> {
        let log: Vec<DstackEvent> = serde_json::from_str(event_log_json)
            .map_err(|e| EvidenceError::EventLogJson(e.to_string()))?;
        let mut events = Vec::new();
        for (index, entry) in log.into_iter().enumerate() {
            if entry.imr != 3 {
                continue;
            }
            if let Some(version) = entry.version.filter(|v| *v != 1) {
                return Err(EvidenceError::UnsupportedEventVersion {
                    index,
                    name: entry.event,
                    version,
                });
            }
            let payload = hex::decode(&entry.event_payload).map_err(|_| EvidenceError::Hex {
                index,
                name: entry.event.clone(),
                field: "event_payload",
            })?;
            let digest = if entry.digest.is_empty() {
                None
            } else {
                let bytes = hex::decode(&entry.digest).map_err(|_| EvidenceError::Hex {
                    index,
                    name: entry.event.clone(),
                    field: "digest",
                })?;
                let len = bytes.len();
                Some(
                    <[u8; 48]>::try_from(bytes).map_err(|_| EvidenceError::DigestLength {
                        index,
                        name: entry.event.clone(),
                        len,
                    })?,
                )
            };
            events.push(RuntimeEvent {
                event_type: entry.event_type,
                name: entry.event,
                payload,
                digest,
            });
        }
        let evidence = Self {
            quote: quote.to_vec(),
            events,
        };
        evidence.check_limits()?;
        Ok(evidence)
    }

    /// Refuses evidence that [`decode`](Self::decode) would refuse for its size, so that a node never
    /// publishes what its peers cannot read.
    ///
    /// # Errors
    /// [`EvidenceError::TooManyEvents`] or [`EvidenceError::TooLarge`].
    pub fn check_limits(&self) -> Result<(), EvidenceError> {
        if self.events.len() > MAX_EVENTS {
            return Err(EvidenceError::TooManyEvents {
                count: self.events.len(),
                limit: MAX_EVENTS,
            });
        }
        let len = self.encode().len();
        if len > MAX_ENCODED_LEN {
            return Err(EvidenceError::TooLarge {
                len,
                limit: MAX_ENCODED_LEN,
            });
        }
        Ok(())
    }

    /// The on-chain bytes. Supplied digests are not carried: every verifier recomputes them.
    pub fn encode(&self) -> Vec<u8> {
        let value: AbiValue = (
            EVIDENCE_VERSION,
            Bytes::copy_from_slice(&self.quote),
            self.events
                .iter()
                .map(|e| {
                    (
                        e.event_type,
                        e.name.clone(),
                        Bytes::copy_from_slice(&e.payload),
                    )
                })
                .collect(),
        );
        EvidenceAbi::abi_encode_params(&value)
    }

    /// Reads [`encode`](Self::encode)'s bytes, and only those: the version must be 1, the encoding
    /// canonical, with nothing after it, and within [`MAX_ENCODED_LEN`] and [`MAX_EVENTS`].
    ///
    /// # Errors
    /// [`EvidenceError`] naming what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<Self, EvidenceError> {
        if bytes.len() > MAX_ENCODED_LEN {
            return Err(EvidenceError::TooLarge {
                len: bytes.len(),
                limit: MAX_ENCODED_LEN,
            });
        }
        // Read the version word first, so that a later layout is named as such rather than as bad ABI.
        if let Some(word) = bytes.get(..32) {
            let (high, low) = word.split_at(24);
            if high.iter().all(|b| *b == 0) {
                let mut be = [0u8; 8];
                be.copy_from_slice(low);
                let version = u64::from_be_bytes(be);
                if version != u64::from(EVIDENCE_VERSION) {
                    return Err(EvidenceError::UnsupportedVersion { version });
                }
            }
        }
        // Bounded by MAX_ENCODED_LEN above; the decoder's own default allows a gigabyte.
        let config = AbiDecoderConfig::new().memory_limit(16 * MAX_ENCODED_LEN);
        let (version, quote, events) = EvidenceAbi::abi_decode_params_with_config(bytes, config)
            .map_err(|e| EvidenceError::Abi(e.to_string()))?;
        if version != EVIDENCE_VERSION {
            return Err(EvidenceError::UnsupportedVersion {
                version: u64::from(version),
            });
        }
        if events.len() > MAX_EVENTS {
            return Err(EvidenceError::TooManyEvents {
                count: events.len(),
                limit: MAX_EVENTS,
            });
        }
        let evidence = Self {
            quote: quote.to_vec(),
            events: events
                .into_iter()
                .map(|(event_type, name, payload)| RuntimeEvent {
                    event_type,
                    name,
                    payload: payload.to_vec(),
                    digest: None,
                })
                .collect(),
        };
        // One evidence, one byte string: otherwise two hashes could name the same evidence and the
        // on-chain hash would not pin what peers verify.
        let canonical = evidence.encode();
        if canonical != bytes {
            return Err(match bytes.strip_prefix(canonical.as_slice()) {
                Some(rest) => EvidenceError::TrailingBytes { count: rest.len() },
                None => EvidenceError::NotCanonical,
            });
        }
        Ok(evidence)
    }

    /// `keccak256(encode())`: what the contract stores next to the seat.
    pub fn hash(&self) -> [u8; 32] {
        keccak256(self.encode()).0
    }
}

/// The `report_data` a node's quote commits to: `keccak256(abi.encodePacked("dstack-mesh/node/v1",
/// uint256 chainId, address contract, address node))` followed by 32 zero bytes.
///
/// The chain and the contract are in it so that evidence made for one cluster is worthless in any
/// other; the node key's address so that only the key made inside this CVM can act for the seat.
pub fn report_data(chain_id: u64, contract: Address, node: Address) -> [u8; 64] {
    let mut packed = Vec::with_capacity(REPORT_DATA_DOMAIN.len() + 32 + 20 + 20);
    packed.extend_from_slice(REPORT_DATA_DOMAIN);
    packed.extend_from_slice(&[0u8; 24]);
    packed.extend_from_slice(&chain_id.to_be_bytes());
    packed.extend_from_slice(contract.as_slice());
    packed.extend_from_slice(node.as_slice());
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(keccak256(&packed).as_slice());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Evidence {
        Evidence {
            quote: (0..=255u8).cycle().take(700).collect(),
            events: vec![
                RuntimeEvent::new("system-preparing", Vec::new()),
                RuntimeEvent::new("app-id", [7u8; 20]),
                RuntimeEvent {
                    event_type: 0x1234_5678,
                    name: "ünïcode".into(),
                    payload: vec![0, 1, 2],
                    digest: None,
                },
            ],
        }
    }

    #[test]
    fn encode_then_decode_gives_the_same_evidence() {
        let evidence = sample();
        assert_eq!(Evidence::decode(&evidence.encode()), Ok(evidence));
    }

    #[test]
    fn supplied_digests_do_not_travel_on_chain() {
        let mut evidence = sample();
        let plain = evidence.encode();
        evidence.events[0].digest = Some([9; 48]);
        assert_eq!(evidence.encode(), plain);
        assert_eq!(
            Evidence::decode(&plain).map(|e| e.events[0].digest),
            Ok(None)
        );
    }

    #[test]
    fn the_encoding_is_solidity_abi_encode_of_version_quote_events() {
        let evidence = Evidence {
            quote: vec![0xaa, 0xbb],
            events: vec![RuntimeEvent::new("x", vec![0xcc])],
        };
        let words: Vec<String> = evidence.encode().chunks(32).map(hex::encode).collect();
        let word = |n: u64| format!("{n:064x}");
        let right = |s: &str| format!("{s:0<64}");
        let expected = vec![
            word(1),           // version
            word(0x60),        // offset of quote
            word(0xa0),        // offset of events
            word(2),           // quote length
            right("aabb"),     // quote
            word(1),           // events length
            word(0x20),        // offset of events[0]
            word(0x0800_0001), // eventType
            word(0x60),        // offset of name within the tuple
            word(0xa0),        // offset of payload within the tuple
            word(1),           // name length
            right("78"),       // "x"
            word(1),           // payload length
            right("cc"),       // payload
        ];
        assert_eq!(words, expected);
    }

    #[test]
    fn decode_refuses_truncated_input() {
        let bytes = sample().encode();
        for cut in [0, 1, 31, 32, 64, bytes.len() / 2, bytes.len() - 1] {
            let got = Evidence::decode(&bytes[..cut]);
            assert!(
                matches!(
                    got,
                    Err(EvidenceError::Abi(_)) | Err(EvidenceError::NotCanonical)
                ),
                "cut at {cut}: {got:?}"
            );
        }
    }

    #[test]
    fn decode_refuses_trailing_garbage() {
        let mut bytes = sample().encode();
        bytes.extend_from_slice(&[0u8; 32]);
        assert_eq!(
            Evidence::decode(&bytes),
            Err(EvidenceError::TrailingBytes { count: 32 })
        );
        bytes.push(1);
        assert_eq!(
            Evidence::decode(&bytes),
            Err(EvidenceError::TrailingBytes { count: 33 })
        );
    }

    #[test]
    fn decode_refuses_garbage() {
        let garbage: Vec<u8> = (0..400u32).map(|i| (i * 7 + 3) as u8).collect();
        assert!(Evidence::decode(&garbage).is_err());
        assert!(matches!(
            Evidence::decode(&[0xff; 96]),
            Err(EvidenceError::Abi(_)) | Err(EvidenceError::UnsupportedVersion { .. })
        ));
    }

    #[test]
    fn decode_refuses_another_version() {
        let mut bytes = sample().encode();
        bytes[31] = 2;
        assert_eq!(
            Evidence::decode(&bytes),
            Err(EvidenceError::UnsupportedVersion { version: 2 })
        );
    }

    #[test]
    fn decode_refuses_non_canonical_offsets() {
        // Same values, other bytes: the quote moved one word further and events point at a zero
        // word (an empty array) in the gap.
        let evidence = Evidence {
            quote: vec![0xaa],
            events: Vec::new(),
        };
        let bytes = evidence.encode();
        let mut shifted = bytes[..32].to_vec();
        shifted.extend_from_slice(&alloy_primitives::U256::from(0x80).to_be_bytes::<32>());
        shifted.extend_from_slice(&alloy_primitives::U256::from(0x60).to_be_bytes::<32>());
        shifted.extend_from_slice(&[0u8; 32]);
        shifted.extend_from_slice(&bytes[96..]);
        assert_eq!(Evidence::decode(&shifted), Err(EvidenceError::NotCanonical));
    }

    #[test]
    fn decode_refuses_oversized_input_and_names_the_limit() {
        let bytes = vec![0u8; MAX_ENCODED_LEN + 1];
        let err = Evidence::decode(&bytes).unwrap_err();
        assert_eq!(
            err,
            EvidenceError::TooLarge {
                len: MAX_ENCODED_LEN + 1,
                limit: MAX_ENCODED_LEN
            }
        );
        assert!(err.to_string().contains("65536"), "{err}");
    }

    #[test]
    fn decode_refuses_too_many_events_and_names_the_limit() {
        let evidence = Evidence {
            quote: vec![1],
            events: vec![RuntimeEvent::new("e", Vec::new()); MAX_EVENTS + 1],
        };
        let err = Evidence::decode(&evidence.encode()).unwrap_err();
        assert_eq!(
            err,
            EvidenceError::TooManyEvents {
                count: MAX_EVENTS + 1,
                limit: MAX_EVENTS
            }
        );
        assert_eq!(evidence.check_limits(), Err(err));
    }

    #[test]
    fn the_hash_changes_with_any_byte() {
        let evidence = sample();
        let hash = evidence.hash();
        assert_eq!(hash, keccak256(evidence.encode()).0);
        let mut quote = evidence.clone();
        for i in [0, 350, 699] {
            quote.quote[i] ^= 1;
            assert_ne!(quote.hash(), hash, "quote byte {i}");
            quote.quote[i] ^= 1;
        }
        let mut payload = evidence.clone();
        payload.events[1].payload[19] ^= 0x80;
        assert_ne!(payload.hash(), hash);
        let mut name = evidence.clone();
        name.events[0].name.push('!');
        assert_ne!(name.hash(), hash);
        let mut kind = evidence.clone();
        kind.events[2].event_type ^= 1;
        assert_ne!(kind.hash(), hash);
        let mut order = evidence;
        order.events.swap(0, 1);
        assert_ne!(order.hash(), hash);
    }

    #[test]
    fn from_dstack_keeps_rtmr3_events_and_reads_stripped_digests() {
        let log = serde_json::json!([
            {"imr": 0, "event_type": 1, "digest": "00", "event": "", "event_payload": "zz"},
            {"imr": 3, "event_type": 0x0800_0001u32, "digest": hex::encode([5u8; 48]),
             "event": "app-id", "event_payload": "0102"},
            {"imr": 3, "event_type": 0x0800_0001u32, "digest": "", "event": "system-ready",
             "event_payload": ""},
        ]);
        let evidence = Evidence::from_dstack(&[9, 9], &log.to_string()).unwrap();
        assert_eq!(evidence.quote, vec![9, 9]);
        assert_eq!(
            evidence.events,
            vec![
                RuntimeEvent {
                    event_type: DSTACK_RUNTIME_EVENT_TYPE,
                    name: "app-id".into(),
                    payload: vec![1, 2],
                    digest: Some([5; 48]),
                },
                RuntimeEvent::new("system-ready", Vec::new()),
            ]
        );
    }

    #[test]
    fn from_dstack_names_what_it_cannot_read() {
        let bad_payload =
            r#"[{"imr":3,"event_type":1,"digest":"","event":"x","event_payload":"0g"}]"#;
        assert_eq!(
            Evidence::from_dstack(&[], bad_payload),
            Err(EvidenceError::Hex {
                index: 0,
                name: "x".into(),
                field: "event_payload"
            })
        );
        let short = r#"[{"imr":3,"event_type":1,"digest":"0102","event":"x","event_payload":""}]"#;
        assert_eq!(
            Evidence::from_dstack(&[], short),
            Err(EvidenceError::DigestLength {
                index: 0,
                name: "x".into(),
                len: 2
            })
        );
        let v2 =
            r#"[{"imr":3,"event_type":1,"digest":"","event":"x","event_payload":"","version":2}]"#;
        assert!(matches!(
            Evidence::from_dstack(&[], v2),
            Err(EvidenceError::UnsupportedEventVersion { version: 2, .. })
        ));
        assert!(matches!(
            Evidence::from_dstack(&[], "{}"),
            Err(EvidenceError::EventLogJson(_))
        ));
    }

    #[test]
    fn report_data_is_keccak_of_the_packed_fields_then_zeros() {
        let contract = Address::repeat_byte(0x11);
        let node = Address::repeat_byte(0x22);
        let rd = report_data(8453, contract, node);
        let mut packed = b"dstack-mesh/node/v1".to_vec();
        packed.extend_from_slice(&alloy_primitives::U256::from(8453u64).to_be_bytes::<32>());
        packed.extend_from_slice(&[0x11; 20]);
        packed.extend_from_slice(&[0x22; 20]);
        assert_eq!(rd[..32], keccak256(&packed).0);
        assert_eq!(rd[32..], [0u8; 32]);
        assert_ne!(rd, report_data(8454, contract, node));
        assert_ne!(rd, report_data(8453, node, contract));
    }
}

//! The checks, in order, from the quote's signature to the node key it commits to, and the named
//! refusals.
//!
//! The order matters for what a refusal tells an operator: a quote that is not genuine is refused as
//! such before anything it claims is looked at, and the claims are read only from a log proven by
//! the quote.

use dcap_qvl::QuoteCollateralV3;
use dcap_qvl::verify::QuoteVerifier;
use der::Decode as _;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

use crate::collateral::{CollateralError, CollateralInfo};
use crate::evidence::Evidence;
use crate::policy::{KeyProviderRule, Policy, TcbStatus, os_measurement};
use crate::replay::{self, KeyProvider, ReplayError};
use crate::time_fmt::fmt_unix;

/// What the seat says the evidence must show.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Expected {
    /// The instance the seat is bound to.
    pub instance_id: [u8; 20],
    /// [`crate::report_data`] of the chain, the contract and the seat's node key.
    pub report_data: [u8; 64],
}

/// The root CA quotes must chain to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trust {
    root: Root,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Root {
    Intel,
    Other(Vec<u8>),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error("the root CA is not a DER X.509 certificate: {0}")]
    NotACertificate(String),
    #[error("the root CA PEM holds no certificate: {0}")]
    NoPemCertificate(String),
}

impl Trust {
    /// Intel's SGX/TDX root CA, as dcap-qvl ships it. The only root in production.
    pub fn intel() -> Self {
        Self { root: Root::Intel }
    }

    /// Another root, DER. Only ever a mock PKI's, passed by an operator for tests and simulations:
    /// whoever holds its key can sign any quote.
    ///
    /// # Errors
    /// [`TrustError::NotACertificate`].
    pub fn from_der(der: Vec<u8>) -> Result<Self, TrustError> {
        x509_cert::Certificate::from_der(&der)
            .map_err(|e| TrustError::NotACertificate(e.to_string()))?;
        Ok(Self {
            root: Root::Other(der),
        })
    }

    /// [`from_der`](Self::from_der) of the first certificate in a PEM text.
    ///
    /// # Errors
    /// [`TrustError`] when there is no certificate in it.
    pub fn from_pem(pem: &str) -> Result<Self, TrustError> {
        let der = CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| TrustError::NoPemCertificate(e.to_string()))?;
        Self::from_der(der.to_vec())
    }

    pub fn is_intel(&self) -> bool {
        self.root == Root::Intel
    }

    /// Tells roots apart in cache keys.
    pub fn fingerprint(&self) -> [u8; 32] {
        match &self.root {
            Root::Intel => alloy_primitives::keccak256(b"mesh-attest/trust/intel").0,
            Root::Other(der) => alloy_primitives::keccak256(der).0,
        }
    }

    fn verifier(&self) -> QuoteVerifier {
        match &self.root {
            Root::Intel => QuoteVerifier::new_prod(),
            Root::Other(der) => QuoteVerifier::new(der.clone()),
        }
    }
}

/// What a genuine quote shows, once [`verify_quote`] has checked it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuoteFacts {
    pub tcb_status: TcbStatus,
    pub advisory_ids: Vec<String>,
    pub mr_td: [u8; 48],
    /// RTMR0 to RTMR3.
    pub rt_mr: [[u8; 48]; 4],
    pub report_data: [u8; 64],
    pub td_attributes: [u8; 8],
    /// The collateral it was checked against; its FMSPC is the platform's.
    pub collateral: CollateralInfo,
}

impl QuoteFacts {
    pub fn os_measurement(&self) -> [u8; 32] {
        let [rtmr0, rtmr1, rtmr2, _] = &self.rt_mr;
        os_measurement(&self.mr_td, rtmr0, rtmr1, rtmr2)
    }
}

/// A seat's evidence, accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub instance_id: [u8; 20],
    pub app_id: [u8; 20],
    pub compose_hash: [u8; 32],
    pub os_measurement: [u8; 32],
    pub tcb_status: TcbStatus,
    pub advisory_ids: Vec<String>,
    pub fmspc: [u8; 6],
    /// The verdict holds until then; after it, fresh collateral decides.
    pub collateral_next_update: u64,
    pub evidence_hash: [u8; 32],
}

/// Why evidence was refused: what is wrong, and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "the evidence is not a readable TDX quote ({0}): the node must publish the quote its guest \
         agent returned, unaltered"
    )]
    Malformed(String),
    #[error(
        "the collateral cannot be used ({0}): pin collateral fetched from a PCCS, or let the agent \
         fetch it"
    )]
    BadCollateral(String),
    #[error(
        "the collateral is not valid before {}: check this machine's clock",
        fmt_unix(*issue_date)
    )]
    CollateralNotYetValid { issue_date: u64 },
    #[error(
        "the collateral expired at {}: the agent refreshes it from its PCCS, or pin a newer file",
        fmt_unix(*next_update)
    )]
    CollateralExpired { next_update: u64 },
    #[error(
        "the collateral is for FMSPC {} but the quote's platform is FMSPC {}: use collateral for {}",
        hex::encode(collateral),
        hex::encode(quote),
        hex::encode(quote)
    )]
    CollateralMismatch { quote: [u8; 6], collateral: [u8; 6] },
    #[error(
        "the quote's signature does not verify under the trusted root ({0}): it is not from a genuine \
         TDX platform, or the collateral or the configured root is wrong"
    )]
    BadSignature(String),
    #[error(
        "the quote comes from a debug TD, whose memory the host can read and write: redeploy the CVM \
         without debug"
    )]
    Debug,
    #[error("{}", tcb_message(*status))]
    TcbStatus { status: TcbStatus },
    #[error(
        "the platform's TCB matches no level in the collateral's TCB info ({0}): its microcode or \
         TDX module is older than anything Intel still lists; the host updates them"
    )]
    TcbLevelUnknown(String),
    #[error(
        "OS measurement 0x{} is not allowed by the cluster: once it is known to be a genuine dstack \
         image, the owner allows it with `meshctl app-auth allow-os 0x{}`",
        hex::encode(measurement),
        hex::encode(measurement)
    )]
    OsNotAllowed { measurement: [u8; 32] },
    #[error("the RTMR3 event log does not hold: {0}")]
    EventLog(ReplayError),
    #[error(
        "the CVM runs app 0x{} but the cluster's app is 0x{}: it is not a member of this cluster",
        hex::encode(got),
        hex::encode(expected)
    )]
    AppMismatch { expected: [u8; 20], got: [u8; 20] },
    #[error(
        "compose hash 0x{} is not allowed by the cluster: the owner allows it with `meshctl \
         app-auth allow-compose 0x{}`",
        hex::encode(hash),
        hex::encode(hash)
    )]
    ComposeNotAllowed { hash: [u8; 32] },
    #[error(
        "the CVM's disk key came from key provider `{}` (id {}) but the cluster requires {rule}: \
         deploy the CVM with the dstack KMS the cluster names",
        got.name,
        hex::encode(&got.id)
    )]
    KeyProvider {
        rule: KeyProviderRule,
        got: KeyProvider,
    },
    #[error(
        "the evidence is from instance 0x{} but the seat is bound to instance 0x{}: a copy of another \
         CVM's evidence proves nothing; the seat holder binds the instance that runs the node",
        hex::encode(got),
        hex::encode(expected)
    )]
    InstanceMismatch { expected: [u8; 20], got: [u8; 20] },
    #[error(
        "the quote's report_data is 0x{} but the seat's node key, chain and contract give 0x{}: the \
         evidence was made for another node key or cluster; the node attests its own key again",
        hex::encode(got.as_slice()),
        hex::encode(expected.as_slice())
    )]
    ReportDataMismatch {
        // Boxed: two of these would make every `Result<_, Refusal>` 128 bytes wider.
        expected: Box<[u8; 64]>,
        got: Box<[u8; 64]>,
    },
}

fn tcb_message(status: TcbStatus) -> String {
    if status == TcbStatus::Revoked {
        "the platform's TCB is Revoked: its attestation keys are compromised and no policy accepts it"
            .to_owned()
    } else {
        format!(
            "the platform's TCB status is {status}, which the cluster does not accept: the host \
             updates its firmware and TDX module, or the owner accepts {status}"
        )
    }
}

impl Refusal {
    /// A short stable name, for metrics and the API.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::BadCollateral(_) => "collateral",
            Self::CollateralNotYetValid { .. } => "collateral-not-yet-valid",
            Self::CollateralExpired { .. } => "collateral-expired",
            Self::CollateralMismatch { .. } => "collateral-mismatch",
            Self::BadSignature(_) => "signature",
            Self::Debug => "debug",
            Self::TcbStatus { .. } => "tcb-status",
            Self::TcbLevelUnknown(_) => "tcb-unknown",
            Self::OsNotAllowed { .. } => "os-not-allowed",
            Self::EventLog(_) => "event-log",
            Self::AppMismatch { .. } => "app-mismatch",
            Self::ComposeNotAllowed { .. } => "compose-not-allowed",
            Self::KeyProvider { .. } => "key-provider",
            Self::InstanceMismatch { .. } => "instance-mismatch",
            Self::ReportDataMismatch { .. } => "report-data-mismatch",
        }
    }

    /// Whether the refusal depends on what the checker trusts, not only on the evidence and the chain: its
    /// collateral, its root CA and the TCB statuses it allows. Another checker (an agent with a PCCS, where
    /// `meshctl` had none) may decide otherwise.
    pub fn depends_on_trust(&self) -> bool {
        matches!(
            self,
            Self::BadCollateral(_)
                | Self::CollateralNotYetValid { .. }
                | Self::CollateralExpired { .. }
                | Self::CollateralMismatch { .. }
                | Self::BadSignature(_)
                | Self::TcbLevelUnknown(_)
                | Self::TcbStatus { .. }
        )
    }

    /// Whether the evidence itself shows that the binding claims what is not its own: it is no quote, or a
    /// quote whose event log or report data names another instance or node. Nothing the checker
    /// trusts, no time and no policy changes that, so the cluster's members may dispute the binding
    /// (`DstackClusterElection.disputeBinding`), which frees the instance it claims.
    pub fn shows_false_claim(&self) -> bool {
        Self::FALSE_CLAIM_KINDS.contains(&self.kind())
    }

    /// The [`kind`](Self::kind)s of the refusals that [show a false claim](Self::shows_false_claim), for
    /// those that keep only the kind. A bad signature is not one: dcap-qvl reports broken collateral in the same
    /// words, and a dispute must never follow from what a PCCS serves. Nor is `app-mismatch`: it compares the
    /// quote's app with the apps the owner allows now, and an app the owner stops allowing must not cost its
    /// seats their bindings.
    pub const FALSE_CLAIM_KINDS: [&'static str; 4] = [
        "malformed",
        "event-log",
        "instance-mismatch",
        "report-data-mismatch",
    ];

    /// Whether the refusal depends on the time of the check, so that the same evidence and
    /// collateral may pass later (or earlier): such refusals are not cached.
    pub fn depends_on_time(&self) -> bool {
        matches!(
            self,
            Self::CollateralNotYetValid { .. } | Self::CollateralExpired { .. }
        )
    }
}

/// No collateral for a quote. A quote that names no platform (truncated, altered, not TDX) is the
/// node's to fix, so it is refused as `malformed`: a `collateral` refusal would send the operator to a
/// PCCS that has nothing to do with it.
impl From<CollateralError> for Refusal {
    fn from(error: CollateralError) -> Self {
        match error {
            CollateralError::Quote(reason) => Self::Malformed(reason.to_string()),
            other => Self::BadCollateral(other.to_string()),
        }
    }
}

/// TUD bits of the TD attributes: DEBUG (bit 0) and the profiling bits (4 to 6) that expose the TD as
/// much as debug does.
const TUD_DEBUG_MASK: u8 = 0x71;

/// The quote stage: parse the quote, check the collateral's dates, verify the signatures and the
/// TCB with dcap-qvl under `trust`, and refuse a debug TD unless `allow_debug`.
///
/// # Errors
/// [`Refusal`]: `malformed`, `collateral`, `collateral-not-yet-valid`, `collateral-expired`,
/// `collateral-mismatch`, `signature`, `debug`, `tcb-unknown`, or `tcb-status` for a Revoked TCB.
pub fn verify_quote(
    quote: &[u8],
    trust: &Trust,
    collateral: &QuoteCollateralV3,
    allow_debug: bool,
    now: u64,
) -> Result<QuoteFacts, Refusal> {
    let parsed =
        dcap_qvl::quote::Quote::parse(quote).map_err(|e| Refusal::Malformed(e.to_string()))?;
    if parsed.report.as_td10().is_none() {
        return Err(Refusal::Malformed("an SGX quote, not a TDX one".into()));
    }
    let info = CollateralInfo::of(collateral).map_err(|e| Refusal::BadCollateral(e.to_string()))?;
    // Before dcap-qvl: its own date checks end in one opaque error, and an expired collateral is
    // the operator's to fix, not a sign of a forged quote.
    if now < info.issue_date {
        return Err(Refusal::CollateralNotYetValid {
            issue_date: info.issue_date,
        });
    }
    if now > info.next_update {
        return Err(Refusal::CollateralExpired {
            next_update: info.next_update,
        });
    }
    if let Ok(fmspc) = dcap_qvl::intel::quote_fmspc(&parsed)
        && fmspc != info.fmspc
    {
        return Err(Refusal::CollateralMismatch {
            quote: fmspc,
            collateral: info.fmspc,
        });
    }
    let report = trust
        .verifier()
        .allow_debug(allow_debug)
        .verify(quote, collateral, now)
        .map_err(|e| dcap_refusal(&e))?;
    let td = report
        .report
        .as_td10()
        .ok_or_else(|| Refusal::Malformed("dcap-qvl reported no TD report".into()))?;
    // dcap-qvl refuses these too; checked again here so that a change of its defaults cannot let a
    // debug TD through.
    if !allow_debug && td.td_attributes[0] & TUD_DEBUG_MASK != 0 {
        return Err(Refusal::Debug);
    }
    let tcb_status: TcbStatus = report.status.parse().map_err(|_| {
        Refusal::Malformed(format!("dcap-qvl reported TCB status `{}`", report.status))
    })?;
    if tcb_status == TcbStatus::Revoked {
        return Err(Refusal::TcbStatus { status: tcb_status });
    }
    Ok(QuoteFacts {
        tcb_status,
        advisory_ids: report.advisory_ids.clone(),
        mr_td: td.mr_td,
        rt_mr: [td.rt_mr0, td.rt_mr1, td.rt_mr2, td.rt_mr3],
        report_data: td.report_data,
        td_attributes: td.td_attributes,
        collateral: info,
    })
}

/// dcap-qvl has one error type for everything; the few cases an operator acts on differently are
/// told apart by its messages (dcap-qvl 0.7.0, pinned).
fn dcap_refusal(error: &impl std::fmt::Display) -> Refusal {
    let text = format!("{error:#}");
    if text.contains("Debug mode is enabled") || text.contains("TD profiling is enabled") {
        Refusal::Debug
    } else if text.contains("TCB status is invalid: Revoked") {
        Refusal::TcbStatus {
            status: TcbStatus::Revoked,
        }
    } else if text.contains("No matching TCB level found")
        || text.contains("is below minimum required from TDX module TCB levels")
    {
        // dcap-qvl matches TCB levels only after every signature has verified.
        Refusal::TcbLevelUnknown(text)
    } else {
        Refusal::BadSignature(text)
    }
}

/// Checks a seat's evidence, in this order: the quote ([`verify_quote`]), the TCB status, the OS
/// measurement, the RTMR3 replay against the quote, then the claims (app, compose hash, key
/// provider, instance) and the `report_data`.
///
/// # Errors
/// The first [`Refusal`] met.
pub fn verify(
    evidence: &Evidence,
    expected: &Expected,
    policy: &Policy,
    trust: &Trust,
    collateral: &QuoteCollateralV3,
    now_unix: u64,
) -> Result<Verdict, Refusal> {
    let facts = verify_quote(
        &evidence.quote,
        trust,
        collateral,
        policy.allow_debug,
        now_unix,
    )?;
    if !policy.allows_tcb_status(facts.tcb_status) {
        return Err(Refusal::TcbStatus {
            status: facts.tcb_status,
        });
    }
    let os = facts.os_measurement();
    if !policy.os.allows(&os) {
        return Err(Refusal::OsNotAllowed { measurement: os });
    }
    let replayed = replay::replay_rtmr3(&evidence.events).map_err(Refusal::EventLog)?;
    let [_, _, _, quoted] = facts.rt_mr;
    if replayed != quoted {
        return Err(Refusal::EventLog(ReplayError::RtmrMismatch {
            replayed,
            quoted,
        }));
    }
    let claims = replay::claims(&evidence.events).map_err(Refusal::EventLog)?;
    if claims.app_id != policy.app_id {
        return Err(Refusal::AppMismatch {
            expected: policy.app_id,
            got: claims.app_id,
        });
    }
    if !policy.compose_hashes.allows(&claims.compose_hash) {
        return Err(Refusal::ComposeNotAllowed {
            hash: claims.compose_hash,
        });
    }
    if !policy.key_provider.allows(&claims.key_provider) {
        return Err(Refusal::KeyProvider {
            rule: policy.key_provider.clone(),
            got: claims.key_provider,
        });
    }
    if claims.instance_id != expected.instance_id {
        return Err(Refusal::InstanceMismatch {
            expected: expected.instance_id,
            got: claims.instance_id,
        });
    }
    if facts.report_data != expected.report_data {
        return Err(Refusal::ReportDataMismatch {
            expected: Box::new(expected.report_data),
            got: Box::new(facts.report_data),
        });
    }
    Ok(Verdict {
        instance_id: claims.instance_id,
        app_id: claims.app_id,
        compose_hash: claims.compose_hash,
        os_measurement: os,
        tcb_status: facts.tcb_status,
        advisory_ids: facts.advisory_ids,
        fmspc: facts.collateral.fmspc,
        collateral_next_update: facts.collateral.next_update,
        evidence_hash: evidence.hash(),
    })
}

#[cfg(test)]
mod tests {
    use tdx_mock::{MockPki, TdInput};

    use super::*;
    use crate::collateral::quote_platform;

    /// A quote the mock PKI signs, as a node's guest agent returns it.
    fn genuine_quote() -> Vec<u8> {
        MockPki::from_seed([0x3a; 32]).quote(&TdInput::new([1; 48], [[2; 48]; 4], [3; 64]))
    }

    /// Where a v4 quote's auth-data length sits: after the 48-byte header and the 584-byte TD report.
    const AUTH_DATA_LEN_AT: usize = 48 + 584;

    #[test]
    fn kinds_are_stable_and_distinct() {
        let all = [
            Refusal::Malformed(String::new()),
            Refusal::BadCollateral(String::new()),
            Refusal::CollateralNotYetValid { issue_date: 0 },
            Refusal::CollateralExpired { next_update: 0 },
            Refusal::CollateralMismatch {
                quote: [0; 6],
                collateral: [1; 6],
            },
            Refusal::BadSignature(String::new()),
            Refusal::Debug,
            Refusal::TcbStatus {
                status: TcbStatus::OutOfDate,
            },
            Refusal::TcbLevelUnknown(String::new()),
            Refusal::OsNotAllowed {
                measurement: [0; 32],
            },
            Refusal::EventLog(ReplayError::NoSystemReady),
            Refusal::AppMismatch {
                expected: [0; 20],
                got: [1; 20],
            },
            Refusal::ComposeNotAllowed { hash: [0; 32] },
            Refusal::KeyProvider {
                rule: KeyProviderRule::default(),
                got: KeyProvider {
                    name: "none".into(),
                    id: Vec::new(),
                },
            },
            Refusal::InstanceMismatch {
                expected: [0; 20],
                got: [1; 20],
            },
            Refusal::ReportDataMismatch {
                expected: Box::new([0; 64]),
                got: Box::new([1; 64]),
            },
        ];
        let kinds: std::collections::BTreeSet<_> = all.iter().map(Refusal::kind).collect();
        assert_eq!(kinds.len(), all.len());
        // A false claim is never one that trust, time or policy could turn: a dispute on it is final.
        let false_claims: Vec<_> = all
            .iter()
            .filter(|r| r.shows_false_claim())
            .map(Refusal::kind)
            .collect();
        assert_eq!(
            false_claims,
            [
                "malformed",
                "event-log",
                "instance-mismatch",
                "report-data-mismatch"
            ]
        );
        for r in all.iter().filter(|r| r.shows_false_claim()) {
            assert!(
                !r.depends_on_trust() && !r.depends_on_time(),
                "{}",
                r.kind()
            );
        }
        for kind in &kinds {
            assert!(
                mesh_api::REFUSAL_KINDS.contains(kind),
                "{kind} is not among the kinds the API lists (mesh_api::REFUSAL_KINDS), which /metrics shows"
            );
        }
        for kind in [
            "signature",
            "tcb-status",
            "os-not-allowed",
            "compose-not-allowed",
            "instance-mismatch",
            "report-data-mismatch",
            "collateral-expired",
            "debug",
            "event-log",
            "app-mismatch",
            "key-provider",
            "malformed",
        ] {
            assert!(kinds.contains(kind), "{kind}");
        }
    }

    #[test]
    fn messages_say_what_to_do() {
        let compose = Refusal::ComposeNotAllowed { hash: [0xab; 32] };
        let text = compose.to_string();
        assert!(
            text.starts_with(&format!("compose hash 0x{}", "ab".repeat(32))),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "meshctl app-auth allow-compose 0x{}",
                "ab".repeat(32)
            )),
            "{text}"
        );
        let expired = Refusal::CollateralExpired {
            next_update: 1_752_920_163,
        };
        assert_eq!(
            expired.to_string(),
            "the collateral expired at 2025-07-19T10:16:03Z: the agent refreshes it from its PCCS, \
             or pin a newer file"
        );
        let revoked = Refusal::TcbStatus {
            status: TcbStatus::Revoked,
        };
        assert!(revoked.to_string().contains("no policy accepts it"));
        let old = Refusal::TcbStatus {
            status: TcbStatus::OutOfDate,
        };
        assert!(old.to_string().contains("the owner accepts OutOfDate"));
    }

    #[test]
    fn refusals_of_the_checkers_trust_are_told_from_refusals_of_the_evidence() {
        assert!(Refusal::BadCollateral(String::new()).depends_on_trust());
        assert!(Refusal::BadSignature(String::new()).depends_on_trust());
        assert!(
            Refusal::TcbStatus {
                status: TcbStatus::OutOfDate
            }
            .depends_on_trust()
        );
        assert!(!Refusal::Malformed(String::new()).depends_on_trust());
        assert!(!Refusal::Debug.depends_on_trust());
        assert!(
            !Refusal::OsNotAllowed {
                measurement: [0; 32]
            }
            .depends_on_trust()
        );
    }

    #[test]
    fn only_collateral_dates_make_a_refusal_time_dependent() {
        assert!(Refusal::CollateralExpired { next_update: 0 }.depends_on_time());
        assert!(Refusal::CollateralNotYetValid { issue_date: 0 }.depends_on_time());
        assert!(!Refusal::Debug.depends_on_time());
        assert!(!Refusal::BadSignature(String::new()).depends_on_time());
    }

    #[test]
    fn trust_refuses_what_is_not_a_certificate() {
        assert!(matches!(
            Trust::from_der(vec![1, 2, 3]),
            Err(TrustError::NotACertificate(_))
        ));
        assert!(matches!(
            Trust::from_pem("no pem here"),
            Err(TrustError::NoPemCertificate(_))
        ));
        assert!(Trust::intel().is_intel());
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let collateral: QuoteCollateralV3 = QuoteCollateralV3 {
            pck_crl_issuer_chain: String::new(),
            root_ca_crl: Vec::new(),
            pck_crl: Vec::new(),
            tcb_info_issuer_chain: String::new(),
            tcb_info: String::new(),
            tcb_info_signature: Vec::new(),
            qe_identity_issuer_chain: String::new(),
            qe_identity: String::new(),
            qe_identity_signature: Vec::new(),
            pck_certificate_chain: None,
        };
        for quote in [&[][..], &[0u8; 10][..], &[0xffu8; 1000][..]] {
            let got = verify_quote(quote, &Trust::intel(), &collateral, false, 0);
            assert!(matches!(got, Err(Refusal::Malformed(_))), "{got:?}");
        }
    }

    /// Whatever is wrong with the quote itself (cut short, a length field that points past the end,
    /// noise, an SGX header, no PCK certificate to name its platform), it is refused as `malformed`,
    /// and the refusal says nothing about collateral or a PCCS.
    #[test]
    fn a_quote_that_names_no_platform_is_malformed_not_a_collateral_problem() {
        let genuine = genuine_quote();
        assert!(
            quote_platform(&genuine).is_ok(),
            "the genuine quote names its platform"
        );

        let truncated = genuine[..genuine.len() / 2].to_vec();
        let mut absurd_length = genuine.clone();
        absurd_length[AUTH_DATA_LEN_AT..AUTH_DATA_LEN_AT + 4]
            .copy_from_slice(&u32::MAX.to_le_bytes());
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let random: Vec<u8> = (0..genuine.len())
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed.to_le_bytes()[0]
            })
            .collect();
        let mut sgx_header = genuine.clone();
        sgx_header[4..8].copy_from_slice(&0u32.to_le_bytes());
        // The PCK chain is certification data of type 5, its u16 type and u32 length just before the
        // PEM; any other type carries no certificate.
        let pem_at = genuine
            .windows(10)
            .position(|w| w == b"-----BEGIN")
            .expect("the mock quote carries its PCK chain");
        let mut no_pck_chain = genuine.clone();
        no_pck_chain[pem_at - 6..pem_at - 4].copy_from_slice(&3u16.to_le_bytes());

        for (what, quote) in [
            ("truncated", truncated),
            ("auth-data length 0xFFFFFFFF", absurd_length),
            ("random bytes", random),
            ("an SGX header", sgx_header),
            ("no PCK certificate chain", no_pck_chain),
        ] {
            let error = quote_platform(&quote).expect_err(what);
            assert!(
                matches!(error, CollateralError::Quote(_)),
                "{what}: {error:?}"
            );
            let refusal = Refusal::from(error);
            assert_eq!(refusal.kind(), "malformed", "{what}: {refusal}");
            let text = refusal.to_string().to_lowercase();
            assert!(
                !text.contains("collateral") && !text.contains("pccs"),
                "{what}: {refusal}"
            );
        }
    }

    #[test]
    fn collateral_that_cannot_be_had_is_still_a_collateral_refusal() {
        let none = CollateralError::NoneForFmspc { fmspc: [0; 6] };
        let refusal = Refusal::from(none.clone());
        assert_eq!(refusal, Refusal::BadCollateral(none.to_string()));
        assert_eq!(refusal.kind(), "collateral");
    }
}

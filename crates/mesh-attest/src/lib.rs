//! A seat's attestation evidence turned into a [`Verdict`] or a named [`Refusal`].
//!
//! A seat is bound to one CVM instance by a node key. The evidence for that binding is a TDX quote
//! whose `report_data` commits to the node key's address, the chain and the contract
//! ([`report_data`]), plus the RTMR3 runtime event log that names the instance id, the app id and
//! the compose hash ([`Evidence`]). Every agent checks every peer's evidence with [`verify`]:
//!
//! - [`evidence`]: the evidence and its on-chain bytes;
//! - [`replay`]: the RTMR3 replay and the claims it proves;
//! - [`policy`]: what a cluster allows;
//! - [`tcb`]: the owner's on-chain TCB policy, and whether a verdict meets it;
//! - [`measurements`]: what evidence claims to run, read unverified, for the owner's allowlists;
//! - [`verify`](mod@verify): the checks, in order, and the refusals;
//! - [`collateral`]: Intel's collateral per FMSPC, pinned from a file or fetched from a PCCS;
//! - [`cache`]: verdicts by evidence hash and collateral, so each evidence is checked once per
//!   collateral.

pub mod cache;
#[cfg(feature = "cli")]
pub mod cli;
pub mod collateral;
pub mod evidence;
pub mod measurements;
pub mod policy;
pub mod replay;
pub mod seat;
pub mod tcb;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod time_fmt;
pub mod verify;

pub use cache::{VerdictCache, VerdictKey};
pub use collateral::{CollateralError, CollateralId, CollateralInfo};
pub use dcap_qvl::QuoteCollateralV3;
pub use evidence::{Evidence, EvidenceError, RuntimeEvent, report_data};
pub use measurements::{ClaimedMeasurements, MeasurementsError, claimed_measurements};
pub use policy::{Allowed, KeyProviderRule, Policy, PolicyError, TcbStatus, os_measurement};
pub use replay::{Claims, KeyProvider, ReplayError};
pub use verify::{Expected, QuoteFacts, Refusal, Trust, TrustError, Verdict, verify, verify_quote};

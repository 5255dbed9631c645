//! A mock Intel DCAP PKI that signs TDX quotes, for the dstack simulator and for tests: there is no TDX
//! hardware there, yet the verifier should run the same `dcap-qvl` path as in production. Production
//! trusts Intel's root; a test or a simulated cluster trusts [`MockPki::root_ca_der`] instead:
//!
//! ```
//! use tdx_mock::{CollateralOptions, MockPki, TdInput};
//!
//! let pki = MockPki::from_seed([7; 32]);
//! let quote = pki.quote(&TdInput::new([1; 48], [[2; 48]; 4], [3; 64]));
//! let now = 1_750_000_000;
//! let collateral = pki.collateral(&CollateralOptions::valid_from(now, 30));
//! let report = dcap_qvl::verify::QuoteVerifier::new(pki.root_ca_der())
//!     .verify(&quote, &collateral, now)
//!     .unwrap();
//! assert_eq!(report.status, "UpToDate");
//! assert_eq!(report.report.as_td10().unwrap().report_data, [3; 64]);
//! ```
//!
//! Everything derives from a 32-byte seed, deterministically: the same seed gives byte-identical
//! certificates, quotes and collateral, so separate processes (simulator, agents, tests) agree on one
//! PKI by sharing the seed. Certificate subjects read like Intel's but name the organisation
//! "dstack-mesh mock (not Intel)". The seed is the whole secret: anyone holding it can sign quotes
//! this root vouches for, so never trust a mock root outside tests and simulations.

mod collateral;
#[cfg(feature = "pccs")]
pub mod pccs;
mod pki;
mod platform;
mod quote;

use std::fmt;

pub use collateral::{CollateralOptions, TcbStatus};
pub use dcap_qvl::QuoteCollateralV3;
pub use quote::TdInput;

/// The first and last instants (Unix seconds) at which every certificate of a [`MockPki`] is valid:
/// 2020-01-01 and 2100-01-01 UTC. Verification outside them fails whatever the collateral says.
pub const CERT_VALIDITY: (u64, u64) = (pki::CERT_NOT_BEFORE, pki::CERT_NOT_AFTER);

/// A deterministic mock Intel PKI: root CA, PCK platform CA and PCK leaf, TCB signing cert, CRLs; and
/// the platform's TD quoting enclave, whose attestation key signs the quotes.
pub struct MockPki {
    seed: [u8; 32],
    pki: pki::Hierarchy,
    qe: quote::QuotingEnclave,
}

impl MockPki {
    /// Same seed, same keys and certificates (DER identical), same quotes for the same input.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self {
            seed,
            pki: pki::Hierarchy::from_seed(&seed),
            qe: quote::QuotingEnclave::from_seed(&seed),
        }
    }

    /// The root certificate, DER: what `dcap_qvl::verify::QuoteVerifier::new` takes.
    pub fn root_ca_der(&self) -> Vec<u8> {
        self.pki.root_der().to_vec()
    }

    /// The root certificate, PEM: what an operator passes as `--tdx-root-ca`.
    pub fn root_ca_pem(&self) -> String {
        self.pki.root_pem()
    }

    /// The platform's FMSPC, as its PCK certificate and the TCB Info state it.
    pub fn fmspc(&self) -> [u8; 6] {
        platform::FMSPC
    }

    /// A TDX v4 quote (TD 1.0 report, ECDSA-256, certification data type 5 carrying the PEM PCK chain).
    pub fn quote(&self, td: &TdInput) -> Vec<u8> {
        self.qe.quote(&self.pki, td)
    }

    /// Collateral matching quotes from this PKI.
    pub fn collateral(&self, opts: &CollateralOptions) -> QuoteCollateralV3 {
        collateral::build(&self.pki, opts)
    }

    /// [`Self::collateral`] as JSON (serde's form of [`QuoteCollateralV3`]: byte fields as hex strings),
    /// for the simulator to hand to agents in a file.
    pub fn collateral_json(&self, opts: &CollateralOptions) -> String {
        serde_json::to_string(&self.collateral(opts)).expect("collateral serializes")
    }
}

impl Clone for MockPki {
    /// Rebuilt from the seed, which yields the identical PKI.
    fn clone(&self) -> Self {
        Self::from_seed(self.seed)
    }
}

impl fmt::Debug for MockPki {
    /// Never the seed: it is the key to every signature.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use sha2::{Digest as _, Sha256};
        f.debug_struct("MockPki")
            .field(
                "root_sha256",
                &hex::encode(Sha256::digest(self.pki.root_der())),
            )
            .finish_non_exhaustive()
    }
}

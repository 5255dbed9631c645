//! What a seat's evidence claims to run, read without verifying it: the compose hash and the OS
//! measurement a cluster owner allowlists for a new image.
//!
//! It sits above the evidence, the replay and the policy because it reads all three; nothing below it
//! reads it.

use crate::evidence::Evidence;
use crate::policy::os_measurement;
use crate::replay::{self, ReplayError};

/// The compose hash and the OS measurement evidence claims. Never what a peer is judged by: only
/// [`crate::verify`] proves them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClaimedMeasurements {
    /// The `compose-hash` event's payload.
    pub compose_hash: [u8; 32],
    /// [`os_measurement`] of the quote's MRTD and RTMR0 to RTMR2.
    pub os_measurement: [u8; 32],
}

/// What in the evidence cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MeasurementsError {
    /// dcap-qvl's parse error, as text: its error type is anyhow's.
    #[error("the quote cannot be read: {0}")]
    Quote(String),
    #[error("the quote is not a TDX quote: it is an SGX one")]
    NotTdx,
    #[error("the event log's claims cannot be read: {0}")]
    EventLog(ReplayError),
}

/// The measurements `evidence` claims.
///
/// # Errors
/// [`MeasurementsError`] naming what cannot be read: the quote, or the event log's claims.
pub fn claimed_measurements(evidence: &Evidence) -> Result<ClaimedMeasurements, MeasurementsError> {
    let quote = dcap_qvl::quote::Quote::parse(&evidence.quote)
        .map_err(|e| MeasurementsError::Quote(format!("{e:#}")))?;
    let td = quote.report.as_td10().ok_or(MeasurementsError::NotTdx)?;
    let claims = replay::claims(&evidence.events).map_err(MeasurementsError::EventLog)?;
    Ok(ClaimedMeasurements {
        compose_hash: claims.compose_hash,
        os_measurement: os_measurement(&td.mr_td, &td.rt_mr0, &td.rt_mr1, &td.rt_mr2),
    })
}

#[cfg(test)]
mod tests {
    use tdx_mock::{MockPki, TdInput};

    use super::*;
    use crate::testing::boot_log;

    const MRTD: [u8; 48] = [0x11; 48];
    const RTMR: [[u8; 48]; 4] = [[0x20; 48], [0x21; 48], [0x22; 48], [0x23; 48]];
    const COMPOSE: [u8; 32] = [0xc0; 32];

    fn evidence() -> Evidence {
        let pki = MockPki::from_seed([0x5e; 32]);
        Evidence {
            quote: pki.quote(&TdInput::new(MRTD, RTMR, [0; 64])),
            events: boot_log([0xa1; 20], COMPOSE, [0x1d; 20]),
        }
    }

    #[test]
    fn the_claims_are_the_logs_compose_hash_and_the_quotes_os_image() {
        let [rtmr0, rtmr1, rtmr2, _] = &RTMR;
        assert_eq!(
            claimed_measurements(&evidence()),
            Ok(ClaimedMeasurements {
                compose_hash: COMPOSE,
                os_measurement: os_measurement(&MRTD, rtmr0, rtmr1, rtmr2),
            })
        );
    }

    #[test]
    fn a_quote_that_cannot_be_parsed_is_named() {
        let mut bad = evidence();
        bad.quote.truncate(100);
        let err = claimed_measurements(&bad).unwrap_err();
        assert!(matches!(err, MeasurementsError::Quote(_)), "{err:?}");
        assert!(
            err.to_string().starts_with("the quote cannot be read"),
            "{err}"
        );
    }

    #[test]
    fn a_log_without_claims_is_named_with_the_replay_error() {
        let mut unfinished = evidence();
        unfinished.events.pop();
        let err = claimed_measurements(&unfinished).unwrap_err();
        assert_eq!(err, MeasurementsError::EventLog(ReplayError::NoSystemReady));
        assert!(err.to_string().contains("`system-ready`"), "{err}");
    }
}

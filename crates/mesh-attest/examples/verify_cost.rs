//! What verifying peers' evidence costs an agent: the time per evidence cold (every check: the quote's
//! signatures and collateral with dcap-qvl, the RTMR3 replay, the claims) and cached (a verdict found by
//! evidence hash and collateral), for `N` distinct seats under one mock PKI. Prints figures; asserts nothing.
//!
//! ```sh
//! cargo run --release -p mesh-attest --features testing --example verify_cost -- 100
//! ```

use std::time::{Duration, Instant};

use alloy_primitives::Address;
use mesh_attest::testing::boot_log;
use mesh_attest::{Allowed, Evidence, Expected, Policy, Trust, VerdictCache, report_data};
use tdx_mock::{CollateralOptions, MockPki, TdInput};

const NOW: u64 = 1_760_000_000;
const APP: [u8; 20] = [0xa1; 20];

fn evidence(pki: &MockPki, seat: u32) -> (Evidence, Expected) {
    let mut instance = [0u8; 20];
    instance[..4].copy_from_slice(&seat.to_be_bytes());
    let events = boot_log(APP, [0xc0; 32], instance);
    let rtmr3 = mesh_attest::replay::replay_rtmr3(&events).expect("replay");
    let node = Address::from_word(alloy_primitives::B256::left_padding_from(
        &seat.to_be_bytes(),
    ));
    let data = report_data(31337, Address::repeat_byte(0xcc), node);
    let quote = pki.quote(&TdInput::new(
        [1; 48],
        [[2; 48], [3; 48], [4; 48], rtmr3],
        data,
    ));
    (
        Evidence { quote, events },
        Expected {
            instance_id: instance,
            report_data: data,
        },
    )
}

fn per(total: Duration, n: usize) -> String {
    format!("{:.3} ms", total.as_secs_f64() * 1000.0 / n as f64)
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(100, |a| a.parse().expect("a number of seats"));
    let pki = MockPki::from_seed([9; 32]);
    let trust = Trust::from_der(pki.root_ca_der()).expect("root");
    let collateral = pki.collateral(&CollateralOptions::valid_from(NOW - 86_400, 30));
    let mut policy = Policy::new(APP);
    policy.compose_hashes = Allowed::Any;
    policy.os = Allowed::Any;
    let seats: Vec<_> = (1..=n as u32).map(|s| evidence(&pki, s)).collect();
    let encoded: Vec<Vec<u8>> = seats.iter().map(|(e, _)| e.encode()).collect();
    let mut cache = VerdictCache::new(4096);

    // One agent's pass over every seat: decode each evidence and verify it through the cache, as the agent
    // does; the first pass verifies every evidence, the second finds each verdict.
    let mut pass = || {
        let began = Instant::now();
        for ((_, expected), bytes) in seats.iter().zip(&encoded) {
            let e = Evidence::decode(bytes).expect("decode");
            cache
                .verify(&e, expected, &policy, &trust, &collateral, NOW)
                .expect("verified");
        }
        began.elapsed()
    };
    let cold = pass();
    let cached = pass();
    println!(
        "{n} seats, evidence of {} bytes each: cold {} per seat ({:.1} ms in all), cached {} per seat ({:.2} ms in all)",
        encoded[0].len(),
        per(cold, n),
        cold.as_secs_f64() * 1000.0,
        per(cached, n),
        cached.as_secs_f64() * 1000.0,
    );
}

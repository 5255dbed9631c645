//! dstack's official Python SDK (`dstack-sdk`, pinned in `tests/requirements.txt`) against the simulator.
//! Needs the SDK: `python3 -m pip install -r simulator/tests/requirements.txt` (or point
//! `DSTACK_MESH_PYTHON` at an interpreter that has it). Run with
//! `cargo test -p dstack-simulator --test official_sdk`. Without the SDK the test fails; it never skips.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Sim;
use dstack_simulator::fixture::FIXTURE_A;
use serde_json::Value;

const SDK_TIMEOUT: Duration = Duration::from_secs(60);

fn python() -> String {
    std::env::var("DSTACK_MESH_PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Runs `python args…`, bounded by [`SDK_TIMEOUT`]; returns (success, stdout, stderr).
fn run_python(args: &[&str], out_dir: &Path) -> (bool, String, String) {
    let stdout_path = out_dir.join("python.stdout");
    let stderr_path = out_dir.join("python.stderr");
    let mut child = Command::new(python())
        .args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {} ({e}); set DSTACK_MESH_PYTHON", python()));
    let deadline = Instant::now() + SDK_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{} {args:?} did not finish within {SDK_TIMEOUT:?}",
                python()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (
        status.success(),
        std::fs::read_to_string(stdout_path).unwrap_or_default(),
        std::fs::read_to_string(stderr_path).unwrap_or_default(),
    )
}

/// The official SDK gets fixture A's wallet key and chain, Info, a quote carrying its report data,
/// RTMRs that replay from the event log, and a Sign/Verify round trip.
#[test]
fn official_python_sdk_sees_fixture_a() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = run_python(&["-c", "import dstack_sdk"], dir.path());
    assert!(
        ok,
        "dstack's Python SDK is not installed for {}: run `{} -m pip install -r simulator/tests/requirements.txt` \
         (or set DSTACK_MESH_PYTHON)\n{err}",
        python(),
        python()
    );

    let sim = Sim::start(dir.path(), "sdk", &["--fixture", "a"]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/official_sdk.py");
    let (ok, out, err) = run_python(
        &[script.to_str().unwrap(), sim.socket.to_str().unwrap()],
        dir.path(),
    );
    assert!(
        ok,
        "official_sdk.py failed:\n{err}\nsimulator log:\n{}",
        sim.stderr()
    );
    let seen: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));

    assert_eq!(
        seen["key"],
        "7c019ee7f279e47ef73ebf7dcb6844f398db2e06ea0dc4e45e528483ab924b57"
    );
    assert_eq!(seen["decoded_key_len"], 32);
    assert_eq!(
        seen["signature_chain"][0],
        "056a0a85cb9b7c9e3fbef59c4f9d59cea7b53cb290815a91fb1c076623750c3f5a92c02fe0bce0a62b666a6269f5dc9ad6a4e3ca437cfaecceee75abceb5c76400"
    );
    assert_eq!(
        seen["signature_chain"][1],
        hex::encode(FIXTURE_A.kms_signature)
    );
    assert_eq!(seen["app_id"], hex::encode(FIXTURE_A.app_id));
    assert_eq!(seen["instance_id"], hex::encode(FIXTURE_A.instance_id));
    assert_eq!(seen["app_name"], FIXTURE_A.app_name);
    assert_eq!(seen["compose_hash"], hex::encode(FIXTURE_A.compose_hash));
    assert_eq!(seen["tcb_compose_hash"], seen["compose_hash"]);
    assert_eq!(
        seen["tcb_rtmrs"], seen["replayed_rtmrs"],
        "RTMRs must replay from the event log"
    );

    let mut report_data = b"dstack-mesh".to_vec();
    report_data.resize(64, 0);
    assert_eq!(seen["report_data"], hex::encode(&report_data));
    let quote = hex::decode(seen["quote"].as_str().unwrap()).unwrap();
    assert_eq!(&quote[568..632], report_data.as_slice());

    assert_eq!(seen["sign"]["chain_len"], 3);
    assert_eq!(seen["sign"]["valid"], true);
    assert_eq!(seen["version"], "0.5.7");
}

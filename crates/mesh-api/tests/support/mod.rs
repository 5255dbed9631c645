//! What the tests that write the SDKs' fixtures (`sdk/fixtures/`) share: a fixture is what the Rust types
//! make, checked against the committed file, and written anew on request.

use std::path::PathBuf;

/// Set to write the fixtures anew rather than check them.
pub(crate) const WRITE: &str = "DSTACK_MESH_WRITE_FIXTURES";

/// Checks `sdk/fixtures/<name>` holds `want` (written first when [`WRITE`] is set); `test` is the test
/// target that writes it, named in the message that says how.
pub(crate) fn check_fixture(name: &str, test: &str, want: &serde_json::Value) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../sdk/fixtures")
        .join(name);
    if std::env::var_os(WRITE).is_some() {
        let text = serde_json::to_string_pretty(want).expect("JSON") + "\n";
        std::fs::write(&path, text).expect("writing the fixture");
    }
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("sdk/fixtures/{name}: {e} (write it with {WRITE}=1 cargo test -p mesh-api --test {test})"));
    // Compared as JSON values: the order of an object's keys depends on serde_json's features, which the
    // workspace's other crates decide.
    let have: serde_json::Value = serde_json::from_str(&text).expect("the fixture is JSON");
    assert!(
        have == *want,
        "sdk/fixtures/{name} is not what the Rust types make of it: write it anew with \
         {WRITE}=1 cargo test -p mesh-api --test {test}, and check the SDKs' and the examples' tests"
    );
}

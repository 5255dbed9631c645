//! `meshctl policy` against a real anvil: the owner tags seats and apps and grants ports between tags, reads
//! it back, and asks which rule decides a flow.
//!
//! Run, after `cargo build -p meshctl`: `cargo test -p netns-tests --test integration meshctl_policy:: -- --nocapture`.

use alloy::primitives::{Address, address};
use netns_tests::in_process::meshctl::{Meshctl, anvil};

/// A KMS root no instance here derives its keys from: for clusters whose seats no instance binds.
const UNUSED_KMS_ROOT: Address = address!("000000000000000000000000000000000000dEaD");

#[test]
fn the_owner_sets_a_policy_and_meshctl_says_which_rule_decides_a_flow() {
    let anvil = anvil();
    let mut m = Meshctl::new(&anvil);
    m.deploy(UNUSED_KMS_ROOT);
    for i in 1..=3 {
        m.run(Some(0), &["mint", "--to", &m.address(i).to_string()])
            .ok();
    }
    let none = m.run(None, &["policy", "show", "--json"]).ok().json();
    assert_eq!(none["enforced"], false, "{none}");
    let open = m
        .run(
            None,
            &["policy", "test", "--from", "1", "--to", "2", "--port", "22"],
        )
        .ok();
    assert!(
        open.stdout.contains("no policy is in force"),
        "{}",
        open.stdout
    );

    m.run(
        Some(0),
        &[
            "policy",
            "set",
            "--tags",
            "web,db",
            "--seat",
            "1=web",
            "--seat",
            "2=db",
            "--seat",
            "3=web+db",
            "--grant",
            "web:db:tcp:5432",
        ],
    )
    .ok();
    let shown = m.run(None, &["policy", "show", "--json"]).ok().json();
    assert_eq!(shown["enforced"], true, "{shown}");
    assert_eq!(shown["tags"], serde_json::json!(["web", "db"]));
    assert_eq!(shown["grants"], serde_json::json!(["web -> db tcp 5432"]));
    assert_eq!(shown["seats"][2]["tags"], serde_json::json!(["web", "db"]));

    let allowed = m
        .run(
            None,
            &[
                "policy", "test", "--from", "1", "--to", "2", "--port", "5432", "--json",
            ],
        )
        .ok()
        .json();
    assert_eq!(allowed["allowed"], true, "{allowed}");
    assert_eq!(allowed["rule"], 0);
    let refused = m
        .run(
            None,
            &[
                "policy", "test", "--from", "2", "--to", "1", "--port", "5432",
            ],
        )
        .failed();
    assert_eq!(refused.code, 1, "exit 1 when the flow is refused");
    assert!(
        refused.stdout.contains("refused") && refused.stdout.contains("no grant allows it"),
        "{}",
        refused.stdout
    );

    m.run(
        Some(0),
        &["policy", "set", "--add-grant", "db:web:udp:53-54"],
    )
    .ok();
    m.run(Some(0), &["policy", "set", "--remove-grant", "0"])
        .ok();
    let shown = m.run(None, &["policy", "show", "--json"]).ok().json();
    assert_eq!(shown["grants"], serde_json::json!(["db -> web udp 53-54"]));
    m.run(Some(0), &["policy", "set", "--enforce", "false"])
        .ok();
    let shown = m.run(None, &["policy", "show", "--json"]).ok().json();
    assert_eq!(shown["enforced"], false, "{shown}");
    assert_eq!(
        shown["grants"],
        serde_json::json!(["db -> web udp 53-54"]),
        "grants kept"
    );
}

#[test]
fn a_malformed_or_conflicting_policy_change_sends_nothing_and_says_why() {
    let anvil = anvil();
    let mut m = Meshctl::new(&anvil);
    m.deploy(UNUSED_KMS_ROOT);
    m.run(Some(0), &["policy", "set", "--tags", "web,db"]).ok();
    let out = m
        .run(Some(0), &["policy", "set", "--grant", "web:cache:tcp:6379"])
        .failed();
    out.stderr_says("no tag is named \"cache\": the tags are web, db");
    let out = m
        .run(Some(0), &["policy", "set", "--grant", "web:db:icmp:1"])
        .failed();
    out.stderr_says("the protocol is tcp, udp or any");
    let out = m
        .run(
            Some(0),
            &[
                "policy",
                "set",
                "--grant",
                "web:db:tcp:1",
                "--remove-grant",
                "0",
            ],
        )
        .failed();
    out.stderr_says("cannot be used with");
    let out = m.run(Some(0), &["policy", "set"]).failed();
    out.stderr_says("the following required arguments were not provided");
    let out = m.run(Some(3), &["policy", "set", "--tags", "x"]).failed();
    out.stderr_says("is not the cluster owner");
    let shown = m.run(None, &["policy", "show", "--json"]).ok().json();
    assert_eq!(shown["version"], 1, "only the first change landed: {shown}");
}

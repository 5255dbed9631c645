//! The agent's status page (`GET /`) in a real headless Chromium (Debian's), driven by playwright-core from
//! `netns-tests/browser/status_page.mjs` inside node 1's namespace: the page lists every seat and names the
//! leader and its term as the API does, read from the DOM; the owner revokes seat 3 and its row leaves the
//! table without a reload (one navigation in all); and the page is served as HTML under a policy that lets
//! it load nothing from elsewhere. The screenshot it saves is the one docs/api.md shows.
//!
//! Read from the mesh the `observers` scenario deploys, which runs it last (it revokes seat 3). Needs
//! `scripts/bootstrap`'s chromium and playwright-core.

use std::path::PathBuf;
use std::time::Duration;

use netns_tests::prelude::*;
use serde_json::Value;

/// Where every agent serves its API and the page: the observers' mesh runs them with `--api-listen` on it.
pub(crate) const API: &str = "127.0.0.1:8000";
const BROWSER_TIMEOUT: Duration = Duration::from_secs(120);

/// The seats of the table's rows, in order.
fn seats(stage: &Value) -> Vec<String> {
    stage["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["seat"].as_str().expect("a seat").to_owned())
        .collect()
}

/// The text of the cells of seat `seat`'s row.
fn row(stage: &Value, seat: &str) -> Vec<String> {
    stage["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["seat"] == seat)
        .unwrap_or_else(|| panic!("no row for seat {seat}: {stage}"))["cells"]
        .as_array()
        .expect("cells")
        .iter()
        .map(|c| c.as_str().unwrap_or_default().to_owned())
        .collect()
}

fn stage(page: &App, name: &str) -> Value {
    page.json_lines()
        .into_iter()
        .find(|v| v["stage"] == name)
        .unwrap_or_else(|| panic!("no {name} stage\n{}", page.tail()))
}

/// Node 1's page lists seats 1 to 3 and names the leader as the API does; seat 3, revoked (the last thing
/// done to this mesh), leaves it without a reload.
pub(crate) fn shows_the_mesh_and_the_leader_and_drops_a_revoked_seat_without_a_reload(
    steps: &Steps,
    lan: &Lan,
    cluster: &Cluster<'_>,
    agents: &[Agent<'_>],
) {
    let headers = lan
        .node(1)
        .exec_ok(&[
            "curl",
            "-sS",
            "-m",
            "5",
            "-D",
            "-",
            "-o",
            "/dev/null",
            &format!("http://{API}/"),
        ])
        .to_ascii_lowercase();
    assert!(headers.starts_with("http/1.1 200"), "{headers}");
    assert!(headers.contains("content-type: text/html"), "{headers}");
    assert!(
        headers.contains("content-security-policy: default-src 'none'; script-src 'sha256-"),
        "{headers}"
    );

    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let shot_arg = shot.to_str().expect("utf-8 path").to_owned();
    let url = format!("http://{API}/");
    let mut page = App::start(
        lan.node(1),
        "netns-tests/browser/status_page.mjs",
        &[
            "--url",
            &url,
            "--seats",
            "1,2,3",
            "--gone",
            "3",
            "--screenshot",
            &shot_arg,
            "--timeout",
            &BROWSER_TIMEOUT.as_secs().to_string(),
        ],
        agents[0].api_socket(),
        &[],
    );
    page.wait_for("\"stage\":\"loaded\"", BROWSER_TIMEOUT);
    let loaded = stage(&page, "loaded");
    assert_eq!(seats(&loaded), ["1", "2", "3"], "{loaded}");
    let leader = agents[0].leader().expect("node 1's leader");
    assert_eq!(
        loaded["leader"]["seat"],
        leader.token_id.expect("a leader").to_string(),
        "the page names the leader the API names: {loaded}"
    );
    assert_eq!(
        loaded["leader"]["term"],
        leader.term.expect("a term").to_string(),
        "{loaded}"
    );
    assert_eq!(row(&loaded, "1")[2], "this node", "{loaded}");
    assert_eq!(
        loaded["chainPrefix"], DEFAULT_PREFIX,
        "the page names the cluster's mesh prefix: {loaded}"
    );
    for seat in ["2", "3"] {
        let cells = row(&loaded, seat);
        assert_eq!(cells[1], format!("10.0.1.{seat}"), "{loaded}");
        assert_eq!(
            (cells[2].as_str(), cells[3].as_str()),
            ("up", "direct"),
            "{loaded}"
        );
        // Its holder, shortened: seat N is held by anvil account N in these clusters.
        assert!(
            account_address(seat.parse().expect("a seat number"))
                .to_lowercase()
                .starts_with(
                    cells[11]
                        .trim_end_matches('\u{2026}')
                        .to_lowercase()
                        .as_str()
                )
                && cells[11].len() > 4,
            "seat {seat}'s holder: {loaded}"
        );
        // Until when the collateral its quote was verified under holds: a day, YYYY-MM-DD.
        let until = cells[8].as_bytes();
        assert!(
            until.len() == 10 && until[4] == b'-' && until[7] == b'-',
            "seat {seat}'s collateral date: {loaded}"
        );
    }
    assert_eq!(loaded["summary"], "3 seats, 2 of 2 peers up", "{loaded}");
    page.wait_for("\"stage\":\"filtered\"", BROWSER_TIMEOUT);
    let filtered = stage(&page, "filtered");
    assert_eq!(
        seats(&filtered),
        ["1", "2"],
        "a filter of 10.0.1.2 keeps this node and seat 2: {filtered}"
    );
    steps.step(&format!(
        "the page in Chromium lists seats 1 to 3, up and direct, and names seat {} leader at term {}, as the API does",
        loaded["leader"]["seat"].as_str().unwrap_or("?"),
        loaded["leader"]["term"].as_str().unwrap_or("?")
    ));

    cluster.meshctl(0, &["revoke", "--token", "3", "--yes"]);
    page.wait_for("\"stage\":\"gone\"", BROWSER_TIMEOUT);
    let gone = stage(&page, "gone");
    assert_eq!(seats(&gone), ["1", "2"], "{gone}");
    assert_eq!(gone["navigations"], 1, "the page was reloaded: {gone}");
    let events = gone["events"].as_array().expect("events");
    assert!(
        events.iter().any(|e| e == "seat 3 left"),
        "the event feed says seat 3 left: {gone}"
    );
    assert!(shot.exists(), "no screenshot at {}", shot.display());
    steps.step(&format!(
        "seat 3 revoked: its row left the page with no reload; screenshot at {}",
        shot.display()
    ));
}

//! The mock PCCS that signs its own collateral (`dstack-simulator --serve-pccs`): what an operator rehearsing
//! a TCB downgrade or a failing PCCS changes with `curl`, over plain HTTP.
#![cfg(feature = "pccs")]

use std::io::{Read as _, Write as _};
use std::net::TcpStream;

use tdx_mock::pccs::MockPccs;
use tdx_mock::{MockPki, TcbStatus};

/// One HTTP/1.1 request to `pccs`: the status code and the body.
fn request(pccs: &MockPccs, method: &str, path: &str, body: &str) -> (u16, String) {
    let addr = pccs.url().trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&addr).expect("the mock PCCS answers");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let code = text[9..12].parse().expect("a status line");
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (code, body)
}

/// The TCB info the PCCS serves, as JSON.
fn tcb_info(pccs: &MockPccs, pki: &MockPki) -> serde_json::Value {
    let fmspc = hex::encode_upper(pki.fmspc());
    let (code, body) = request(
        pccs,
        "GET",
        &format!("/tdx/certification/v4/tcb?fmspc={fmspc}"),
        "",
    );
    assert_eq!(code, 200, "{body}");
    serde_json::from_str::<serde_json::Value>(&body).unwrap()["tcbInfo"].clone()
}

fn status_of(info: &serde_json::Value) -> String {
    info["tcbLevels"][0]["tcbStatus"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn an_operator_downgrades_expires_and_fails_the_pccs_while_it_runs() {
    let pki = MockPki::from_seed([9; 32]);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let pccs = MockPccs::signing(
        listener,
        pki.clone(),
        std::time::Duration::from_secs(30 * 86_400),
        TcbStatus::UpToDate,
    );
    assert_eq!(status_of(&tcb_info(&pccs, &pki)), "UpToDate");

    let (code, said) = request(&pccs, "PUT", "/mock/tcb-status", "OutOfDate");
    assert_eq!(
        (code, said.as_str()),
        (200, "serving OutOfDate collateral\n")
    );
    assert_eq!(status_of(&tcb_info(&pccs, &pki)), "OutOfDate");

    let (code, _) = request(&pccs, "PUT", "/mock/expired", "true");
    assert_eq!(code, 200);
    let next_update = tcb_info(&pccs, &pki)["nextUpdate"]
        .as_str()
        .unwrap()
        .to_owned();
    let issue_date = tcb_info(&pccs, &pki)["issueDate"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(next_update > issue_date, "a window, but one in the past");
    let (_, state) = request(&pccs, "GET", "/mock", "");
    assert_eq!(
        state,
        "{\"tcbStatus\":\"OutOfDate\",\"expired\":true,\"down\":false}\n"
    );

    let (code, _) = request(&pccs, "PUT", "/mock/down", "true");
    assert_eq!(code, 200);
    let fmspc = hex::encode_upper(pki.fmspc());
    let (code, _) = request(
        &pccs,
        "GET",
        &format!("/tdx/certification/v4/tcb?fmspc={fmspc}"),
        "",
    );
    assert_eq!(code, 503, "down answers nothing but 503");
    request(&pccs, "PUT", "/mock/down", "false");
    request(&pccs, "PUT", "/mock/expired", "false");
    assert_eq!(status_of(&tcb_info(&pccs, &pki)), "OutOfDate");

    // What it cannot take is refused, naming what it takes.
    let (code, said) = request(&pccs, "PUT", "/mock/tcb-status", "Fine");
    assert_eq!(code, 400);
    assert!(said.contains("UpToDate, SWHardeningNeeded"), "{said}");
    let (code, said) = request(&pccs, "PUT", "/mock/expired", "yes");
    assert_eq!(
        (code, said.as_str()),
        (400, "\"yes\" is neither true nor false\n")
    );
}

#[test]
fn a_pccs_a_test_publishes_to_takes_no_orders() {
    let pki = MockPki::from_seed([9; 32]);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let opts = tdx_mock::CollateralOptions::valid_from(1_750_000_000, 30);
    let pccs = MockPccs::start(listener, pki.collateral(&opts));
    let (code, said) = request(&pccs, "PUT", "/mock/tcb-status", "OutOfDate");
    assert_eq!(code, 404, "{said}");
}

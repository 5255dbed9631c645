//! `POST /v1/leader/handoff` and `POST /v1/drain`: what the server passes to the agent, and how it answers,
//! over a real loopback listener.

use std::time::Duration;

use mesh_api::{ClientError, Command, Routes, Source, serve};
use netns_tests::in_process::api::example_snapshot;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

/// A server on loopback whose commands go to the returned receiver (none: it takes no commands).
async fn server(
    commands: bool,
) -> (
    std::net::SocketAddr,
    Option<mpsc::Receiver<Command>>,
    owned_task::Task<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (_tx, snapshot) = watch::channel(example_snapshot(1_700_000_000));
    let (tx, rx) = mpsc::channel(4);
    let source = Source {
        snapshot,
        app_health: None,
        commands: commands.then_some(tx),
        readers: None,
    };
    let served = owned_task::Task::spawn("api", async move {
        let _keep = _tx;
        serve(listener, Routes::Api, source, std::future::pending()).await;
    });
    (addr, commands.then_some(rx), served)
}

fn http_error(r: Result<Value, ClientError>) -> (u16, String) {
    match r {
        Err(ClientError::Http {
            status, message, ..
        }) => (status.as_u16(), message),
        other => panic!("not an HTTP error: {other:?}"),
    }
}

#[tokio::test]
async fn a_handoff_is_passed_to_the_agent_and_its_answer_is_the_reply() {
    let (addr, rx, _served) = server(true).await;
    let mut rx = rx.expect("commands");
    let agent = owned_task::Task::spawn("agent", async move {
        let mut asked = Vec::new();
        while let Some(cmd) = rx.recv().await {
            match cmd {
                Command::HandOff { to, reply } => {
                    asked.push(format!("handoff {to:?}"));
                    let _ = reply.send(match to {
                        Some(9) => Err("seat 9 cannot take the lead".into()),
                        _ => Ok("this node released term 4 and hands it to seat 2".into()),
                    });
                }
                Command::Drain { on, reply } => {
                    asked.push(format!("drain {on}"));
                    let _ = reply.send(Ok("drained".into()));
                }
                Command::Stop { .. } => panic!("never through HTTP"),
            }
            if asked.len() == 5 {
                return asked;
            }
        }
        asked
    });
    let done: Value = mesh_api::post(addr, "/v1/leader/handoff", &json!({"to": 2}))
        .await
        .expect("a hand-off");
    assert_eq!(
        done["done"],
        "this node released term 4 and hands it to seat 2"
    );
    let (status, message) =
        http_error(mesh_api::post(addr, "/v1/leader/handoff", &json!({"to": 9})).await);
    assert_eq!(
        (status, message.as_str()),
        (409, "seat 9 cannot take the lead")
    );
    let (status, message) =
        http_error(mesh_api::post(addr, "/v1/leader/handoff", &json!({"too": 2})).await);
    assert_eq!(status, 400);
    assert!(message.contains(r#"{"to": <seat>}"#), "{message}");
    let _: Value = mesh_api::post(addr, "/v1/drain", &json!({}))
        .await
        .expect("a drain, on by default");
    let _: Value = mesh_api::post(addr, "/v1/drain", &json!({"drain": false}))
        .await
        .expect("undone");
    let (status, _) = http_error(mesh_api::post(addr, "/v1/drain", &json!({"drain": "yes"})).await);
    assert_eq!(status, 400);
    let _: Value = mesh_api::post(addr, "/v1/leader/handoff", &json!({}))
        .await
        .expect("to the best-placed seat");
    let asked = tokio::time::timeout(Duration::from_secs(5), agent)
        .await
        .expect("in time")
        .expect("the agent");
    assert_eq!(
        asked,
        [
            "handoff Some(2)",
            "handoff Some(9)",
            "drain true",
            "drain false",
            "handoff None"
        ],
        "malformed bodies never reach the agent"
    );
}

#[tokio::test]
async fn a_server_without_commands_or_an_agent_that_went_says_so() {
    let (addr, _, _served) = server(false).await;
    let (status, message) = http_error(mesh_api::post(addr, "/v1/drain", &json!({})).await);
    assert_eq!(
        (status, message.as_str()),
        (503, "this server takes no commands")
    );

    let (addr, rx, _also_served) = server(true).await;
    drop(rx);
    let (status, message) =
        http_error(mesh_api::post(addr, "/v1/leader/handoff", &json!({})).await);
    assert_eq!(status, 503);
    assert!(message.contains("try again shortly"), "{message}");
}

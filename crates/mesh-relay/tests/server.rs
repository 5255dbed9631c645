//! The relay endpoint over loopback TCP, as the gateway forwards to it after TLS.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use mesh_relay::{Inbound, Limits, Metrics, frame, serve, upgrade};
use owned_task::Task;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The endpoint under test; it stops when this is dropped.
struct Endpoint {
    addr: std::net::SocketAddr,
    inbound: mpsc::Receiver<Inbound>,
    metrics: Arc<Metrics>,
    _serving: Task<()>,
}

async fn endpoint(limits: Limits) -> Endpoint {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, inbound) = mpsc::channel(16);
    let metrics = Arc::new(Metrics::default());
    let serving = Task::spawn(
        "relay-endpoint",
        serve(
            listener,
            tx,
            limits,
            Arc::clone(&metrics),
            CancellationToken::new(),
        ),
    );
    Endpoint {
        addr,
        inbound,
        metrics,
        _serving: serving,
    }
}

async fn upgraded(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(upgrade::request("abcdef12-51820.mesh.test").as_bytes())
        .await
        .unwrap();
    let head = upgrade::read_head(&mut s).await.unwrap();
    upgrade::check_response(&head).unwrap();
    s
}

fn keepalive(n: u8) -> Vec<u8> {
    let mut m = vec![n; 32];
    m[..4].copy_from_slice(&[4, 0, 0, 0]);
    m
}

async fn send(s: &mut TcpStream, datagram: &[u8]) {
    let mut out = BytesMut::new();
    frame::encode(datagram, &mut out);
    s.write_all(&out).await.unwrap();
}

async fn next(inbound: &mut mpsc::Receiver<Inbound>) -> Inbound {
    tokio::time::timeout(Duration::from_secs(5), inbound.recv())
        .await
        .expect("a datagram in time")
        .expect("the endpoint is running")
}

/// Reads until the stream closes, within 5 s; what was read before is returned.
async fn until_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut all))
        .await
        .expect("the endpoint closed the stream in time")
        .ok();
    all
}

#[tokio::test]
async fn datagrams_go_to_wireguard_and_answers_come_back_on_the_same_stream() {
    let mut ep = endpoint(Limits::default()).await;
    let mut s = upgraded(ep.addr).await;
    send(&mut s, &keepalive(1)).await;
    let first = next(&mut ep.inbound).await;
    assert_eq!(&first.datagram[..], &keepalive(1)[..]);
    send(&mut s, &keepalive(2)).await;
    let second = next(&mut ep.inbound).await;
    assert_eq!(first.link, second.link, "one stream, one link");

    assert!(first.link.send(&keepalive(9)));
    let got = frame::read(&mut s).await.unwrap();
    assert_eq!(&got[..], &keepalive(9)[..]);
    assert_eq!(Metrics::get(&ep.metrics.accepted), 1);
    assert_eq!(Metrics::get(&ep.metrics.frames_in), 2);
    assert_eq!(Metrics::get(&ep.metrics.frames_out), 1);
}

#[tokio::test]
async fn a_malformed_frame_closes_that_stream_and_no_other() {
    let mut ep = endpoint(Limits::default()).await;
    let mut good = upgraded(ep.addr).await;
    let mut bad = upgraded(ep.addr).await;
    send(&mut good, &keepalive(1)).await;
    let kept = next(&mut ep.inbound).await;

    bad.write_all(&[0, 5, b'h', b'e', b'l', b'l', b'o'])
        .await
        .unwrap();
    until_closed(&mut bad).await;
    assert_eq!(Metrics::get(&ep.metrics.malformed), 1);

    send(&mut good, &keepalive(2)).await;
    assert_eq!(next(&mut ep.inbound).await.link, kept.link);
}

#[tokio::test]
async fn a_request_that_is_not_an_upgrade_is_told_what_the_port_is() {
    let ep = endpoint(Limits::default()).await;
    let mut s = TcpStream::connect(ep.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let reply = String::from_utf8(until_closed(&mut s).await).unwrap();
    assert!(reply.starts_with("HTTP/1.1 404"), "{reply}");
    assert!(reply.contains("dstack-mesh relay endpoint"), "{reply}");
}

#[tokio::test]
async fn streams_over_the_limit_are_refused() {
    let mut ep = endpoint(Limits {
        max_streams: 1,
        ..Limits::default()
    })
    .await;
    let mut first = upgraded(ep.addr).await;
    send(&mut first, &keepalive(1)).await;
    let _held = next(&mut ep.inbound).await;

    let mut second = TcpStream::connect(ep.addr).await.unwrap();
    second
        .write_all(upgrade::request("x").as_bytes())
        .await
        .unwrap();
    let reply = String::from_utf8(until_closed(&mut second).await).unwrap();
    assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
    assert_eq!(Metrics::get(&ep.metrics.refused), 1);
}

#[tokio::test]
async fn an_idle_stream_is_closed() {
    let ep = endpoint(Limits {
        idle: Duration::from_millis(300),
        ..Limits::default()
    })
    .await;
    let mut s = upgraded(ep.addr).await;
    until_closed(&mut s).await;
    assert_eq!(Metrics::get(&ep.metrics.open), 0);
}

/// A stream whose datagrams nobody keeps a link for (WireGuard found no peer for them) closes.
#[tokio::test]
async fn a_stream_nobody_answers_on_is_closed() {
    let mut ep = endpoint(Limits::default()).await;
    let mut s = upgraded(ep.addr).await;
    send(&mut s, &keepalive(1)).await;
    drop(next(&mut ep.inbound).await);
    until_closed(&mut s).await;
}

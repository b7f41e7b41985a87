//! Connection handling on a real server: clients that are slow to send (or
//! send nothing) are closed after `server.header_read_timeout_secs`, a body
//! that does not arrive within `server.body_read_timeout_secs` gets 408, and
//! connection slots (`server.max_connections`) are given back when
//! connections close.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{TestServer, breast_cancer_features, classifier_request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Long enough for any timeout under test to fire on a loaded machine; the
/// tests assert what happens, never how fast.
const PATIENCE: Duration = Duration::from_secs(60);

/// Reads until the server closes the connection; what it sent.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut got))
        .await
        .expect("the server closes the connection")
        .expect("a clean read");
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_are_closed() {
    let ts = TestServer::start_with(
        "header_read_timeout_secs = 1\nbody_read_timeout_secs = 1",
        "",
    )
    .await;

    // Headers cut off mid-way.
    let mut partial = TcpStream::connect(ts.addr).await.expect("connect");
    partial
        .write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    // Nothing sent at all.
    let mut silent = TcpStream::connect(ts.addr).await.expect("connect");
    // A keep-alive connection left idle after one request.
    let mut idle = TcpStream::connect(ts.addr).await.expect("connect");
    idle.write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    // A body that stops short of its Content-Length.
    let mut slow_body = TcpStream::connect(ts.addr).await.expect("connect");
    slow_body
        .write_all(
            b"POST /v2/models/breast_cancer/infer HTTP/1.1\r\nHost: x\r\n\
              Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"inputs\"",
        )
        .await
        .expect("write");

    assert!(read_until_closed(&mut partial).await.is_empty());
    assert!(read_until_closed(&mut silent).await.is_empty());
    let answered = String::from_utf8(read_until_closed(&mut idle).await).expect("UTF-8");
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    assert_eq!(answered.matches("HTTP/1.1").count(), 1, "{answered}");
    let timed_out = String::from_utf8(read_until_closed(&mut slow_body).await).expect("UTF-8");
    assert!(timed_out.starts_with("HTTP/1.1 408"), "{timed_out}");
    let body: Value = serde_json::from_str(
        timed_out
            .split("\r\n\r\n")
            .nth(1)
            .expect("a body after the headers"),
    )
    .expect("a V2 error body");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("server.body_read_timeout_secs")),
        "{body}"
    );

    // The server still answers.
    let (status, body) = ts
        .post_json(
            "/v2/models/breast_cancer/infer",
            &classifier_request(&breast_cancer_features()[..1]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    ts.stop().await;
}

/// With one connection slot, connections one after another are all served:
/// each gives its slot back when it closes. (The harness's own keep-alive
/// connection holds the slot until the header timeout closes it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_slots_are_given_back() {
    let ts = TestServer::start_with("max_connections = 1\nheader_read_timeout_secs = 1", "").await;
    for i in 0..20 {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .expect("a client");
        let r = client
            .post(ts.url("/v2/models/breast_cancer/infer"))
            .json(&classifier_request(&breast_cancer_features()[..1]))
            .send()
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(r.status(), 200, "request {i}");
    }
    ts.stop().await;
}

#[test]
fn timeouts_and_the_connection_cap_must_be_positive() {
    for key in [
        "header_read_timeout_secs",
        "body_read_timeout_secs",
        "max_connections",
    ] {
        let text = support::config_toml(&format!("{key} = 0"), "");
        let err = contender::config::Config::from_toml(&text, &support::repo_root())
            .expect_err("0 is refused");
        assert_eq!(err.key, format!("server.{key}"), "{err}");
    }
}

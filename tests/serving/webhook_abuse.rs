//! The webhook under abuse, over real TLS on 127.0.0.1: handshakes that never
//! finish, headers or bodies dripped byte by byte, connections held idle,
//! oversized headers, an HTTP/2 rapid-reset flood. Each is cut off by its limit
//! (short ones here, so the tests are quick) while real reviews on other
//! connections are answered and `/readyz` stays true.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use distroless_guard::admission::{Admission, NameOnly};
use distroless_guard::policy::PolicySet;
use distroless_guard::webhook::server::ServerLimits;
use hyper::StatusCode;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::support::webhook::TestWebhook;

/// Far below the defaults, so a limit is seen within a test.
fn limits() -> ServerLimits {
    ServerLimits {
        handshake: Duration::from_secs(1),
        header_read: Duration::from_secs(1),
        body_read: Duration::from_secs(1),
        max_connections: 32,
        max_header_bytes: 16 * 1024,
        h2_max_streams: 32,
        h2_max_pending_resets: 20,
    }
}

async fn webhook() -> TestWebhook {
    webhook_with(limits()).await
}

async fn webhook_with(limits: ServerLimits) -> TestWebhook {
    TestWebhook::start_limited(Admission::new(PolicySet::builtin_default(), Arc::new(NameOnly)), limits).await
}

fn review_body() -> Vec<u8> {
    std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/pod-compliant.json")).unwrap()
}

/// A real review on a new connection is answered, and /readyz says ready.
async fn still_serving(w: &TestWebhook) {
    let answer = tokio::time::timeout(Duration::from_secs(10), w.review("/validate", review_body()))
        .await
        .expect("a review answered while the abuse goes on");
    assert_eq!(answer["allowed"], true, "{answer}");
    let (status, _) = w.connect().await.get("/readyz").await;
    assert_eq!(status, StatusCode::OK);
}

async fn tls(w: &TestWebhook, alpn: &[&[u8]]) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut config = (*w.ca.client_config()).clone();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(w.server.local_addr).await.unwrap();
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// Reads until the server closes the connection (EOF or reset); what it sent.
async fn until_closed(stream: &mut (impl AsyncReadExt + Unpin)) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(15), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the server kept the connection open: {}", String::from_utf8_lossy(&out)),
        }
    }
}

#[tokio::test]
async fn a_tls_handshake_that_never_finishes_is_dropped() {
    let w = webhook().await;
    let mut silent = TcpStream::connect(w.server.local_addr).await.unwrap();
    // Half a ClientHello, then nothing.
    silent.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await.unwrap();
    still_serving(&w).await;
    until_closed(&mut silent).await;
}

#[tokio::test]
async fn headers_dripped_byte_by_byte_are_cut_off_at_the_header_timeout() {
    let w = webhook().await;
    let mut conn = tls(&w, &[b"http/1.1"]).await;
    let head = b"POST /validate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\nx-pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let mut sent = 0;
    for byte in head {
        if conn.write_all(&[*byte]).await.is_err() || conn.flush().await.is_err() {
            break;
        }
        sent += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
        if sent == 5 {
            still_serving(&w).await;
        }
    }
    // 150 bytes at 10 a second would take 15 s; the server hangs up after about 1.
    assert!(sent < head.len(), "all {sent} bytes were taken");
    until_closed(&mut conn).await;
}

#[tokio::test]
async fn a_body_dripped_byte_by_byte_gets_408_at_the_body_timeout() {
    let w = webhook().await;
    let mut conn = tls(&w, &[b"http/1.1"]).await;
    conn.write_all(b"POST /validate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{")
        .await
        .unwrap();
    let dripping = async {
        for _ in 0..100 {
            if conn.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(1500), dripping).await;
    still_serving(&w).await;
    let answer = String::from_utf8_lossy(&until_closed(&mut conn).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within"), "{answer}");
}

#[tokio::test]
async fn connections_held_idle_are_closed_and_reviews_get_through() {
    let w = webhook().await;
    // As many idle connections as the server takes at once.
    let mut idle = Vec::new();
    for _ in 0..limits().max_connections {
        idle.push(tls(&w, &[b"http/1.1"]).await);
    }
    still_serving(&w).await;
    for mut conn in idle {
        until_closed(&mut conn).await;
    }
}

#[tokio::test]
async fn oversized_headers_get_431_on_http1_and_a_goaway_on_http2_and_reviews_go_on() {
    let w = webhook().await;
    let mut conn = tls(&w, &[b"http/1.1"]).await;
    let huge = "a".repeat(64 * 1024);
    let request =
        format!("POST /validate HTTP/1.1\r\nhost: localhost\r\nx-huge: {huge}\r\ncontent-length: 2\r\n\r\n{{}}");
    let _ = conn.write_all(request.as_bytes()).await;
    let answer = String::from_utf8_lossy(&until_closed(&mut conn).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    still_serving(&w).await;

    // HTTP/2: the header list is refused too.
    let conn = tls(&w, &[b"h2"]).await;
    let (mut client, connection) = h2::client::handshake(conn).await.unwrap();
    tokio::spawn(connection);
    let request = http::Request::post("https://localhost/validate")
        .header("x-huge", huge.as_str())
        .body(())
        .unwrap();
    let refused = async {
        let (response, mut body) = client.send_request(request, false)?;
        let _ = body.send_data(Bytes::from_static(b"{}"), true);
        response.await
    }
    .await;
    // Four times the limit is not worth a 431: the connection is ended with a GOAWAY that says why.
    let e = refused.expect_err("a 64 KiB header list on a 16 KiB limit was answered");
    assert!(
        e.is_go_away() && e.to_string().contains("header_list_way_too_large"),
        "{e}"
    );
    still_serving(&w).await;
}

#[tokio::test]
async fn an_http2_rapid_reset_flood_ends_that_connection_and_reviews_go_on() {
    // Idle connections are kept for a minute here, so only the reset limit can end this one.
    let w = webhook_with(ServerLimits {
        header_read: Duration::from_secs(60),
        ..limits()
    })
    .await;
    let conn = tls(&w, &[b"h2"]).await;
    assert_eq!(conn.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (client, connection) = h2::client::handshake(conn).await.unwrap();
    let ended = tokio::spawn(connection);
    let mut sent = 0;
    // The client buffers what it sends, so the server's answer may come after the loop.
    for _ in 0..20_000 {
        let Ok(mut client) = client.clone().ready().await else {
            break;
        };
        let request = http::Request::post("https://localhost/validate").body(()).unwrap();
        let Ok((_, mut stream)) = client.send_request(request, false) else {
            break;
        };
        stream.send_reset(h2::Reason::CANCEL);
        sent += 1;
    }
    let outcome = tokio::time::timeout(Duration::from_secs(15), ended)
        .await
        .expect("the flooded connection ends")
        .unwrap();
    let e = outcome.expect_err("the server ends the flooding connection with an error");
    eprintln!("after {sent} streams sent and reset: {e:?}");
    // A GOAWAY (ENHANCE_YOUR_CALM), or the socket closed under the client's
    // writes (the server ended it while 20,000 resets were still being sent).
    let closed = e.get_io().is_some_and(|io| {
        matches!(
            io.kind(),
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
        )
    });
    assert!(e.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) || closed, "{e:?}");
    still_serving(&w).await;
}

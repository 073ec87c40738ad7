//! WebSocket upgrades take the socket off the HTTP dispatcher
//! (`src/websocket.rs`): what a client sends right behind its request, large
//! frames read in several pieces, and upgrade requests the app refuses or
//! that name a plain endpoint.

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// A masked client text frame.
fn client_text_frame(text: &str) -> Vec<u8> {
    let payload = text.as_bytes();
    let mut frame = vec![0x81];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = [0x12, 0x34, 0x56, 0x78];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Reads an HTTP response head; returns it and whatever came after it.
async fn read_head(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            return (head, buf[end + 4..].to_vec());
        }
        let n = tokio::time::timeout(HTTP_TIMEOUT, stream.read(&mut chunk))
            .await
            .expect("response head timed out")
            .expect("read");
        assert!(n > 0, "connection closed before a response head: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads everything until the server closes the connection.
async fn read_to_close(stream: &mut TcpStream, mut got: Vec<u8>) -> Vec<u8> {
    tokio::time::timeout(HTTP_TIMEOUT, stream.read_to_end(&mut got))
        .await
        .expect("the server must close the connection after refusing an upgrade")
        .expect("read");
    got
}

#[tokio::test]
async fn frames_sent_right_behind_the_upgrade_request_reach_the_session() {
    let server = Server::start();
    let mut stream = TcpStream::connect(server.addr()).await.expect("connect");
    // Request and first frame in one write: the server reads both at once and
    // must hand the frame on to the session, not drop it with the HTTP buffer.
    let mut bytes =
        upgrade_request(&format!("/ws?token={}", token("u-early", "early"))).into_bytes();
    bytes.extend(client_text_frame(r#"{"type":"join","room":"early-room"}"#));
    stream.write_all(&bytes).await.expect("write");
    let (head, rest) = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let ws = WebSocketStream::from_partially_read(
        MaybeTlsStream::Plain(stream),
        rest,
        Role::Client,
        None,
    )
    .await;
    let mut client = Client {
        ws,
        welcome: None,
        closed: None,
    };
    assert_eq!(client.recv_json().await["type"], "welcome");
    let joined = client.recv_type("joined").await;
    assert_eq!(joined["room"], "early-room", "{joined}");
}

#[tokio::test]
async fn a_message_larger_than_one_read_arrives_whole() {
    let server = Server::start();
    let mut alice = server.ws_user("u-big-a", "alice").await;
    let mut bob = server.ws_user("u-big-b", "bob").await;
    alice.join("big").await;
    bob.join("big").await;
    // 2,000 four-byte characters: an 8 KB frame, several reads on the server.
    let content = "😀".repeat(2000);
    let ack = alice.send_msg("big", &content, "r-big").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let message = bob.recv_type("message").await;
    assert_eq!(message["content"], content.as_str());
    // The connection keeps working with small frames after the large one.
    let ack = alice.send_msg("big", "small again", "r-small").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(bob.recv_type("message").await["content"], "small again");
}

#[tokio::test]
async fn a_refused_upgrade_gets_its_error_and_the_connection_closes() {
    let server = Server::start();
    let mut stream = TcpStream::connect(server.addr()).await.expect("connect");
    stream
        .write_all(upgrade_request("/ws").as_bytes())
        .await
        .expect("write");
    let (head, rest) = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    let body = read_to_close(&mut stream, rest).await;
    let body: serde_json::Value = serde_json::from_slice(&body).expect("JSON error body");
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");
}

#[tokio::test]
async fn an_upgrade_request_to_a_plain_endpoint_gets_the_plain_answer() {
    let server = Server::start();
    let mut stream = TcpStream::connect(server.addr()).await.expect("connect");
    stream
        .write_all(upgrade_request("/healthz").as_bytes())
        .await
        .expect("write");
    let (head, rest) = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    read_to_close(&mut stream, rest).await;

    let mut stream = TcpStream::connect(server.addr()).await.expect("connect");
    stream
        .write_all(upgrade_request("/no/such/endpoint").as_bytes())
        .await
        .expect("write");
    let (head, rest) = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let body = read_to_close(&mut stream, rest).await;
    let body: serde_json::Value = serde_json::from_slice(&body).expect("JSON error body");
    assert_eq!(body["error"]["code"], "not_found", "{body}");
}

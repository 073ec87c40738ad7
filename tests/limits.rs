//! Send limits: per-user rate limit, prohibited words and spam.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_is_per_user_across_connections() {
    let s = Server::builder()
        .set("limits", "messages_per_sec", "1")
        .set("limits", "message_burst", "2")
        .start();
    let alice = uid("alice");
    let mut one = s.ws_user(&alice, "alice").await;
    let mut two = s.ws_user(&alice, "alice").await;
    one.join("rl").await;
    two.join("rl").await;
    one.send_msg("rl", "first", "r1").await;
    two.send_msg("rl", "second", "r2").await;
    // The burst is spent, whichever connection sends.
    one.send_json(json!({"type":"send","room":"rl","content":"third","ref":"r3"}))
        .await;
    let e = one.recv_type("error").await;
    assert_eq!(
        (&e["code"], &e["ref"], &e["room"]),
        (&json!("rate_limited"), &json!("r3"), &json!("rl")),
        "{e}"
    );
    let wait = e["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!(wait > 0 && wait <= 1000, "{e}");
    // A known ref is still answered with its ack, before the rate limit.
    let again = one.send_msg("rl", "first", "r1").await;
    assert_eq!(again["seq"], 1);
    // Other users are not affected.
    let mut bob = s.ws_user(&uid("bob"), "bob").await;
    bob.join("rl").await;
    bob.send_msg("rl", "bob's", "b1").await;
    // After the advertised wait, alice may send again.
    tokio::time::sleep(Duration::from_millis(wait + 50)).await;
    two.send_msg("rl", "third, later", "r3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prohibited_words_are_refused_as_whole_words() {
    let s = Server::builder()
        .set("moderation", "prohibited_words", r#"["darn", "no way"]"#)
        .start();
    let mut c = s.ws_user(&uid("u"), "u").await;
    c.join("mod").await;
    for (content, r) in [("Oh DARN!", "p1"), ("no way, really", "p2")] {
        c.send_json(json!({"type":"send","room":"mod","content":content,"ref":r}))
            .await;
        let e = c.recv_type("error").await;
        assert_eq!(
            (&e["code"], &e["ref"]),
            (&json!("prohibited_content"), &json!(r)),
            "{e}"
        );
    }
    c.send_msg("mod", "darned socks, no-way-ish", "ok").await;
    let history = s.history_all("mod", &token(&uid("r"), "r")).await;
    assert_eq!(history.len(), 1, "refused messages are not stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeating_the_same_content_is_spam_per_user_and_room() {
    let s = Server::builder()
        .set("moderation", "spam_repeats", "2")
        .set("moderation", "spam_window_secs", "60")
        .start();
    let mut c = s.ws_user(&uid("u"), "u").await;
    c.join("a").await;
    c.join("b").await;
    c.send_msg("a", "buy now", "s1").await;
    c.send_msg("a", "buy now", "s2").await;
    c.send_json(json!({"type":"send","room":"a","content":"buy now","ref":"s3"}))
        .await;
    let e = c.recv_type("error").await;
    assert_eq!(
        (&e["code"], &e["ref"], &e["room"]),
        (&json!("spam"), &json!("s3"), &json!("a")),
        "{e}"
    );
    // Other content, another room and another user are fine.
    c.send_msg("a", "buy later", "s4").await;
    c.send_msg("b", "buy now", "s5").await;
    let mut other = s.ws_user(&uid("v"), "v").await;
    other.join("a").await;
    other.send_msg("a", "buy now", "o1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_ip_are_capped_before_the_upgrade() {
    let s = Server::builder()
        .set("limits", "connections_per_ip", "2")
        .start();
    let tok = token(&uid("u"), "u");
    let first = s.ws(&tok).await;
    let _second = s.ws(&tok).await;
    let refused = match s.ws_connect(&format!("/ws?token={tok}"), &[]).await {
        Err(refused) => refused,
        Ok(_) => panic!("a third connection from one address must be refused"),
    };
    assert_eq!(refused.status, 429, "{refused:?}");
    let body: serde_json::Value = serde_json::from_str(&refused.body).expect("JSON error body");
    assert_eq!(body["error"]["code"], "too_many_connections", "{body}");
    // A closed connection frees its place.
    first.close().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match s.ws_connect(&format!("/ws?token={tok}"), &[]).await {
            Ok(_) => break,
            Err(r) if r.status == 429 && std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(r) => panic!("still refused after a close: {r:?}"),
        }
    }
}

/// Typing has its own throttle (one relayed per 2 s): a user whose send
/// budget is spent can still say they are typing, and typing never spends
/// the send budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_is_throttled_apart_from_the_send_rate_limit() {
    let s = Server::builder()
        .set("limits", "messages_per_sec", "1")
        .set("limits", "message_burst", "1")
        .start();
    let mut alice = s.ws_user(&uid("alice"), "alice").await;
    let mut bob = s.ws_user(&uid("bob"), "bob").await;
    alice.join("tp").await;
    bob.join("tp").await;
    // Typing many times first: none of it counts against the send budget.
    for _ in 0..5 {
        alice.send_json(json!({"type":"typing","room":"tp"})).await;
    }
    let t = bob.recv_type("typing").await;
    assert_eq!(t["user"], "alice", "{t}");
    alice.send_msg("tp", "one", "t1").await;
    // The send budget is now spent...
    alice
        .send_json(json!({"type":"send","room":"tp","content":"two","ref":"t2"}))
        .await;
    let e = alice.recv_type("error").await;
    assert_eq!(e["code"], "rate_limited", "{e}");
    // Once typing's own 2 s throttle allows it, spend the send budget again
    // and type at once: typing is relayed although sends are refused.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    alice.send_msg("tp", "three", "t3").await;
    alice.send_json(json!({"type":"typing","room":"tp"})).await;
    let t = bob.recv_type("typing").await;
    assert_eq!(t["user"], "alice", "{t}");
}

//! Seed-compatible endpoint `/ws/chat/{room}`.

mod common;

use common::*;
use serde_json::{json, Value};

const SEED_KEYS: [&str; 7] = [
    "client_id",
    "room_id",
    "message",
    "timestamp",
    "seq",
    "id",
    "user",
];

async fn seed(s: &Server, path: &str) -> Client {
    s.ws_connect(path, &[])
        .await
        .unwrap_or_else(|e| panic!("seed connect {path} refused: {e:?}"))
}

fn assert_seed_message(v: &Value, room: &str, message: &str) {
    assert_keys(v, &SEED_KEYS);
    assert_eq!(v["room_id"], room, "{v}");
    assert_eq!(v["message"], message, "{v}");
    assert!(v["seq"].is_i64(), "{v}");
    assert!(v["client_id"].is_string(), "{v}");
    assert!(v["user"].is_string(), "{v}");
    uuid::Uuid::parse_str(v["id"].as_str().unwrap()).expect("id is a uuid");
    assert_timestamp(v);
}

#[tokio::test]
async fn seed_round_trip_hello_world_and_empty_error() {
    let s = Server::start();
    let mut c = seed(&s, "/ws/chat/lobby").await;
    // No welcome: nothing arrives before the first message.
    c.expect_silence(300).await;
    c.send_text("Hello, world!").await;
    let v = c.recv_json().await;
    assert_seed_message(&v, "lobby", "Hello, world!");
    assert_eq!(v["seq"], 1);
    assert!(
        v["user"].as_str().unwrap().starts_with("guest-"),
        "default name guest-xxxx: {v}"
    );

    c.send_text("").await;
    let e = c.recv_json().await;
    assert_keys(&e, &["error", "code"]);
    assert!(e["error"].is_string(), "{e}");
    assert_eq!(e["code"], "empty_message", "{e}");

    c.send_text("   \n ").await;
    assert_eq!(c.recv_json().await["code"], "empty_message");

    // Still usable; rejected messages took no seq.
    c.send_text("  second, spaced  ").await;
    let v = c.recv_json().await;
    assert_seed_message(&v, "lobby", "  second, spaced  ");
    assert_eq!(v["seq"], 2);

    let hist = s.history_all("lobby", &token("r", "r")).await;
    let contents: Vec<&str> = hist
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, vec!["Hello, world!", "  second, spaced  "]);
    assert_eq!(hist[1]["id"], v["id"]);
    assert_eq!(hist[1]["seq"], v["seq"]);
    assert_eq!(hist[1]["timestamp"], v["timestamp"]);
}

#[tokio::test]
async fn seed_and_ws_clients_interoperate_with_one_seq() {
    let s = Server::start();
    let ua = uid("a");
    let mut a = s.ws(&token(&ua, "alice")).await;
    a.join("mixed").await;
    let mut sc = seed(&s, "/ws/chat/mixed?name=carol").await;

    // seed -> both
    sc.send_text("from seed <b>x</b>").await;
    let sv = sc.recv_json().await;
    assert_seed_message(&sv, "mixed", "from seed <b>x</b>");
    assert_eq!(sv["seq"], 1);
    assert_eq!(sv["user"], "carol", "?name= sets the display name");
    let m = a.recv_type("message").await;
    assert_eq!(m["seq"], 1);
    assert_eq!(m["content"], "from seed <b>x</b>");
    assert_eq!(m["user"], "carol");
    assert_eq!(m["user_id"], sv["client_id"], "client_id is the user id");
    assert_eq!(m["id"], sv["id"]);
    assert_eq!(m["timestamp"], sv["timestamp"]);

    // ws -> both
    let (ack, _) = a.send_and_echo("mixed", "from ws", "w1").await;
    assert_eq!(ack["seq"], 2);
    let sv = sc.recv_json().await;
    assert_seed_message(&sv, "mixed", "from ws");
    assert_eq!(sv["seq"], 2);
    assert_eq!(sv["client_id"], ua.as_str());
    assert_eq!(sv["user"], "alice");
    assert_eq!(sv["id"], ack["id"]);
    assert_eq!(sv["timestamp"], ack["timestamp"]);

    // A second seed client in the same room sees both endpoints' messages.
    let mut sc2 = seed(&s, "/ws/chat/mixed?name=dave").await;
    sc2.expect_silence(200).await;
    sc.send_text("third").await;
    assert_eq!(sc.recv_json().await["seq"], 3);
    let v = sc2.recv_json().await;
    assert_seed_message(&v, "mixed", "third");
    assert_eq!(v["seq"], 3);
    let m = a.recv_type("message").await;
    assert_eq!(m["seq"], 3);
}

#[tokio::test]
async fn seed_history_param_replays_newest_n() {
    let s = Server::start();
    let sent = populate(&s, "replay", 5, "m").await;
    let mut c = seed(&s, "/ws/chat/replay?history=3").await;
    for want in &sent[2..] {
        let v = c.recv_json().await;
        assert_seed_message(&v, "replay", want["content"].as_str().unwrap());
        assert_eq!(v["seq"], want["seq"]);
        assert_eq!(v["id"], want["id"]);
        assert_eq!(v["client_id"], want["user_id"]);
        assert_eq!(v["user"], want["user"]);
    }
    c.expect_silence(300).await;

    // Default: no replay.
    let mut d = seed(&s, "/ws/chat/replay").await;
    d.expect_silence(400).await;
    // Live after replay continues at 6.
    d.send_text("live").await;
    assert_eq!(d.recv_json().await["seq"], 6);
    assert_eq!(c.recv_json().await["seq"], 6);
}

#[tokio::test]
async fn seed_errors_use_seed_shape() {
    let s = Server::builder()
        .set("limits", "max_message_chars", "10")
        .start();
    let mut c = seed(&s, "/ws/chat/errs").await;
    c.send_text("this is longer than ten").await;
    let e = c.recv_json().await;
    assert_keys(&e, &["error", "code"]);
    assert_eq!(e["code"], "message_too_long");
    c.send_text("ten chars!").await;
    assert_eq!(c.recv_json().await["message"], "ten chars!");
}

#[tokio::test]
async fn seed_bad_room_is_http_400() {
    let s = Server::start();
    for path in [
        format!("/ws/chat/{}", "a".repeat(65)),
        "/ws/chat/bad%20room".to_string(),
        "/ws/chat/semi;colon".to_string(),
    ] {
        match s.ws_connect(&path, &[]).await {
            Ok(_) => panic!("{path}: must be refused"),
            Err(e) => assert_eq!(e.status, 400, "{path}: {e:?}"),
        }
    }
}

#[tokio::test]
async fn seed_auth_with_guest_off_and_rooms_claim() {
    let s = Server::builder().set("auth", "guest", "false").start();
    match s.ws_connect("/ws/chat/lobby", &[]).await {
        Ok(_) => panic!("guest off: token required"),
        Err(e) => assert_eq!(e.status, 401, "{e:?}"),
    }
    let forged = sign_claims(
        &json!({"sub":"x","name":"x","exp": now_secs() + 60}),
        "wrong",
    );
    match s
        .ws_connect(&format!("/ws/chat/lobby?token={forged}"), &[])
        .await
    {
        Ok(_) => panic!("forged token"),
        Err(e) => assert_eq!(e.status, 401, "{e:?}"),
    }
    let sub = uid("t");
    let tok = token(&sub, "tina");
    let mut c = seed(&s, &format!("/ws/chat/lobby?token={tok}")).await;
    c.send_text("hi").await;
    let v = c.recv_json().await;
    assert_eq!(v["client_id"], sub.as_str());
    assert_eq!(v["user"], "tina");

    let limited = token_rooms(&uid("t"), "lim", &["team-*"]);
    match s
        .ws_connect(&format!("/ws/chat/lobby?token={limited}"), &[])
        .await
    {
        Ok(_) => panic!("rooms claim excludes lobby"),
        Err(e) => assert_eq!(e.status, 403, "{e:?}"),
    }
    let bearer = format!("Bearer {limited}");
    let mut c = s
        .ws_connect("/ws/chat/team-1", &[("Authorization", &bearer)])
        .await
        .expect("prefix entry allows team-1");
    c.send_text("team msg").await;
    assert_eq!(c.recv_json().await["message"], "team msg");
}

#[tokio::test]
async fn seed_presented_bad_token_is_401_even_with_guest_on() {
    let s = Server::start();
    let expired = sign_claims(&json!({"sub":"x","name":"x","exp": now_secs() - 5}), SECRET);
    match s
        .ws_connect(&format!("/ws/chat/lobby?token={expired}"), &[])
        .await
    {
        Ok(_) => panic!("a presented token is always verified"),
        Err(e) => assert_eq!(e.status, 401, "{e:?}"),
    }
}

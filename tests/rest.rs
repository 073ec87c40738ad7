//! REST endpoints: login, rooms, history pagination, health.

mod common;

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn healthz_and_readyz() {
    let s = Server::start();
    let r = s.get("/healthz").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json(), json!({"status":"ok"}));
    let r = s.get("/readyz").await;
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test]
async fn guest_login_issues_working_token() {
    let s = Server::start();
    let r = s.post_json("/api/login", &json!({"name":"alice"})).await;
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    let tok = v["token"].as_str().expect("token").to_string();
    let id = v["user"]["id"].as_str().expect("user.id").to_string();
    assert!(id.starts_with("guest:"), "{v}");
    uuid::Uuid::parse_str(&id["guest:".len()..]).expect("guest:<uuid>");
    assert_eq!(v["user"]["name"], "alice");
    let claims = jwt_payload(&tok);
    assert_eq!(claims["sub"], id.as_str());
    assert_eq!(claims["name"], "alice");
    let exp = claims["exp"].as_u64().expect("exp");
    let ttl = exp as i64 - now_secs() as i64;
    assert!(
        (86000..=86500).contains(&ttl),
        "token_ttl_secs default 86400: {ttl}"
    );

    let c = s.ws(&tok).await;
    assert_eq!(
        c.welcome.as_ref().unwrap()["user"],
        json!({"id": id, "name": "alice"})
    );

    // Two logins are two users.
    let v2 = s
        .post_json("/api/login", &json!({"name":"alice"}))
        .await
        .json();
    assert_ne!(v2["user"]["id"], v["user"]["id"]);
}

#[tokio::test]
async fn guest_login_ttl_follows_config() {
    let s = Server::builder()
        .set("auth", "token_ttl_secs", "120")
        .start();
    let v = s.post_json("/api/login", &json!({"name":"t"})).await.json();
    let exp = jwt_payload(v["token"].as_str().unwrap())["exp"]
        .as_u64()
        .unwrap();
    let ttl = exp as i64 - now_secs() as i64;
    assert!((100..=125).contains(&ttl), "ttl {ttl}");
}

#[tokio::test]
async fn guest_login_bad_name_is_400_invalid_name() {
    let s = Server::start();
    let long = "x".repeat(33);
    for body in [
        json!({"name":""}),
        json!({"name":"   "}),
        json!({"name": long}),
        json!({"name":"bad\u{0007}bell"}),
        json!({"name":"new\nline"}),
        json!({"name": 5}),
        json!({}),
    ] {
        let r = s.post_json("/api/login", &body).await;
        assert_eq!(r.status, 400, "{body} -> {r:?}");
        assert_eq!(r.error_code(), "invalid_name", "{body}");
    }
    // Boundaries: 32 characters (not bytes) is fine.
    let r = s
        .post_json("/api/login", &json!({"name": "😀".repeat(32)}))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = s
        .post_json("/api/login", &json!({"name": "y".repeat(32)}))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test]
async fn guest_login_non_json_body_is_400_invalid_json() {
    let s = Server::start();
    let r = s
        .request(
            "POST",
            "/api/login",
            &[("Content-Type", "application/json")],
            Some(b"{name: alice"),
        )
        .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.error_code(), "invalid_json");
}

#[tokio::test]
async fn guest_login_off_is_403() {
    let s = Server::builder().set("auth", "guest", "false").start();
    let r = s.post_json("/api/login", &json!({"name":"alice"})).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.error_code(), "forbidden");
}

fn find_room(rooms: &Value, name: &str) -> Value {
    rooms["rooms"]
        .as_array()
        .unwrap_or_else(|| panic!("{{\"rooms\":[..]}} expected: {rooms}"))
        .iter()
        .find(|r| r["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("room {name} not listed: {rooms}"))
}

/// GET /api/rooms until `pred` holds (at most ~3 s); returns the last body.
async fn rooms_until(s: &Server, pred: impl Fn(&Value) -> bool) -> Value {
    let mut v = Value::Null;
    for _ in 0..30 {
        let r = s.get("/api/rooms").await;
        assert_eq!(r.status, 200, "{r:?}");
        v = r.json();
        if pred(&v) {
            break;
        }
        sleep_ms(100).await;
    }
    v
}

#[tokio::test]
async fn rooms_lists_name_last_seq_online() {
    let s = Server::start();
    populate(&s, "alpha", 3, "a").await;
    populate(&s, "beta", 1, "b").await;
    let mut c = s.ws(&token(&uid("u"), "watcher")).await;
    c.join_with(json!({"type":"join","room":"alpha","history":0}))
        .await;

    // The populators' disconnects are processed asynchronously: poll briefly.
    let want_alpha = json!({"name":"alpha","last_seq":3,"online":1});
    let want_beta = json!({"name":"beta","last_seq":1,"online":0});
    let v = rooms_until(&s, |v| {
        find_room(v, "alpha") == want_alpha && find_room(v, "beta") == want_beta
    })
    .await;
    assert_eq!(find_room(&v, "alpha"), want_alpha, "{v}");
    assert_eq!(find_room(&v, "beta"), want_beta, "{v}");

    c.send_json(json!({"type":"leave","room":"alpha"})).await;
    assert_eq!(c.recv_main().await["type"], "left");
    let v = rooms_until(&s, |v| find_room(v, "alpha")["online"] == 0).await;
    assert_eq!(find_room(&v, "alpha")["online"], 0, "{v}");

    // With a token too.
    let r = s.get_auth("/api/rooms", &token("x", "x")).await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn history_default_page_before_limit_and_next_before() {
    let s = Server::start();
    let sent = populate(&s, "pg", 120, "m").await;
    let tok = token("reader", "reader");

    // Default: newest 50, oldest first.
    let r = s.history("pg", "", &tok).await;
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!(v["room"], "pg");
    let msgs = v["messages"].as_array().unwrap();
    assert_eq!(seqs(msgs), (71..=120).collect::<Vec<_>>());
    assert_eq!(v["next_before"], 71);
    for m in msgs {
        let i = m["seq"].as_i64().unwrap() as usize - 1;
        assert_eq!(
            m,
            &strip_type(&sent[i]),
            "REST entry = live frame minus type"
        );
    }

    let v = s.history("pg", "before=71&limit=10", &tok).await.json();
    assert_eq!(
        seqs(v["messages"].as_array().unwrap()),
        (61..=70).collect::<Vec<_>>()
    );
    assert_eq!(v["next_before"], 61);

    // before_id is an alias of before (a seq).
    let v2 = s.history("pg", "before_id=71&limit=10", &tok).await.json();
    assert_eq!(v2, v);

    // Last page: next_before null, including the exact boundary.
    let v = s.history("pg", "before=11&limit=10", &tok).await.json();
    assert_eq!(
        seqs(v["messages"].as_array().unwrap()),
        (1..=10).collect::<Vec<_>>()
    );
    assert!(v["next_before"].is_null(), "{v}");
    let v = s.history("pg", "before=5&limit=10", &tok).await.json();
    assert_eq!(seqs(v["messages"].as_array().unwrap()), vec![1, 2, 3, 4]);
    assert!(v["next_before"].is_null(), "{v}");
    let v = s.history("pg", "before=1", &tok).await.json();
    assert_eq!(v["messages"], json!([]));
    assert!(v["next_before"].is_null(), "{v}");

    // before beyond the newest = the newest.
    let v = s.history("pg", "before=100000&limit=3", &tok).await.json();
    assert_eq!(seqs(v["messages"].as_array().unwrap()), vec![118, 119, 120]);

    // Default max 100: larger limits are clamped, not refused.
    let r = s.history("pg", "limit=1000", &tok).await;
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!(
        seqs(v["messages"].as_array().unwrap()),
        (21..=120).collect::<Vec<_>>()
    );
    assert_eq!(v["next_before"], 21);

    // Empty room.
    let v = s.history("never-used", "", &tok).await.json();
    assert_eq!(v["messages"], json!([]));
    assert!(v["next_before"].is_null());
}

#[tokio::test]
async fn history_limit_clamped_to_history_page_max() {
    let s = Server::builder()
        .set("limits", "history_page_max", "10")
        .start();
    populate(&s, "cl", 25, "m").await;
    let tok = token("reader", "reader");
    let r = s.history("cl", "limit=50", &tok).await;
    assert_eq!(r.status, 200, "clamped, not refused: {r:?}");
    let v = r.json();
    assert_eq!(
        seqs(v["messages"].as_array().unwrap()),
        (16..=25).collect::<Vec<_>>()
    );
    assert_eq!(v["next_before"], 16);
    // Default 50 is also clamped to the maximum.
    let v = s.history("cl", "", &tok).await.json();
    assert_eq!(v["messages"].as_array().unwrap().len(), 10);
}

#[tokio::test]
async fn history_bad_cursor_is_400_invalid_cursor() {
    let s = Server::start();
    populate(&s, "bc", 3, "m").await;
    let tok = token("reader", "reader");
    for q in [
        "before=0",
        "before=abc",
        "before=-1",
        "before=1.5",
        "before=",
        "limit=0",
        "limit=-1",
        "limit=abc",
        "before_id=0",
        "before_id=xyz",
    ] {
        let r = s.history("bc", q, &tok).await;
        assert_eq!(r.status, 400, "{q} -> {r:?}");
        assert_eq!(r.error_code(), "invalid_cursor", "{q}");
    }
}

#[tokio::test]
async fn history_invalid_room_is_400() {
    let s = Server::start();
    let r = s
        .history(&"a".repeat(65), "", &token("reader", "reader"))
        .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.error_code(), "invalid_room");
    let r = s
        .history("bad%20room", "", &token("reader", "reader"))
        .await;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.error_code(), "invalid_room");
}

#[tokio::test]
async fn pagination_walk_exact_while_new_messages_arrive() {
    let s = Server::start();
    populate(&s, "walk", 95, "old").await;
    let tok = token("reader", "reader");
    let mut writer = s.ws(&token(&uid("w"), "writer")).await;
    writer
        .join_with(json!({"type":"join","room":"walk","history":0}))
        .await;

    let mut before: Option<i64> = None;
    let mut seen: Vec<i64> = Vec::new();
    let mut inserted = 0;
    loop {
        let q = match before {
            Some(b) => format!("before={b}&limit=10"),
            None => "limit=10".to_string(),
        };
        let v = s.history("walk", &q, &tok).await.json();
        let page = seqs(v["messages"].as_array().unwrap());
        let mut sorted = page.clone();
        sorted.sort();
        assert_eq!(page, sorted, "oldest first");
        let mut merged = page;
        merged.append(&mut seen);
        seen = merged;
        // New messages arrive between page requests.
        for _ in 0..3 {
            inserted += 1;
            writer
                .send_msg(
                    "walk",
                    &format!("new {inserted}"),
                    &format!("new-{inserted}"),
                )
                .await;
        }
        match v["next_before"].as_i64() {
            Some(b) => {
                assert_eq!(Some(&b), seen.first(), "next_before = oldest seq on page");
                before = Some(b);
            }
            None => break,
        }
    }
    assert_eq!(
        seen,
        (1..=95).collect::<Vec<_>>(),
        "every old message once, no duplicates or gaps while {inserted} arrived"
    );
    // And the new ones are all there on the newest page.
    let v = s
        .history("walk", &format!("before={}", 96 + inserted), &tok)
        .await
        .json();
    let newest = seqs(v["messages"].as_array().unwrap());
    assert_eq!(*newest.last().unwrap(), 95 + inserted as i64);
}

#[tokio::test]
async fn acked_message_is_in_rest_history_at_once() {
    let s = Server::start();
    let mut c = s.ws(&token(&uid("u"), "u")).await;
    c.join("now").await;
    let tok = token("reader", "reader");
    for i in 0..20 {
        let ack = c.send_msg("now", &format!("m{i}"), &format!("r{i}")).await;
        let v = s.history("now", "limit=1", &tok).await.json();
        let m = &v["messages"][0];
        assert_eq!(m["seq"], ack["seq"], "acked message is in history at once");
        assert_eq!(m["id"], ack["id"]);
        assert_eq!(m["timestamp"], ack["timestamp"]);
    }
}

#[tokio::test]
async fn rest_reads_token_rules() {
    // Guest login on: token optional, but a presented bad token is 401.
    let s = Server::start();
    populate(&s, "tr", 2, "m").await;
    let r = s.get("/api/rooms/tr/messages").await;
    assert_eq!(r.status, 200, "guest on: token optional: {r:?}");
    let forged = sign_claims(
        &json!({"sub":"x","name":"x","exp": now_secs() + 3600}),
        "some-other-secret",
    );
    let r = s.get_auth("/api/rooms/tr/messages", &forged).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.error_code(), "unauthorized");
    let r = s.get_auth("/api/rooms", &forged).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.error_code(), "unauthorized");

    // Guest login off: token required.
    let s = Server::builder().set("auth", "guest", "false").start();
    let r = s.get("/api/rooms").await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.error_code(), "unauthorized");
    let r = s.get("/api/rooms/tr/messages").await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.error_code(), "unauthorized");
    let r = s.get_auth("/api/rooms/tr/messages", &token("u", "u")).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = s.get_auth("/api/rooms", &token("u", "u")).await;
    assert_eq!(r.status, 200, "{r:?}");
    // Cookie works for REST too.
    let cookie = format!("confab_token={}", token("u", "u"));
    let r = s
        .request("GET", "/api/rooms", &[("Cookie", &cookie)], None)
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    // Query token.
    let r = s
        .get(&format!("/api/rooms?token={}", token("u", "u")))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test]
async fn rest_history_enforces_rooms_claim() {
    let s = Server::start();
    populate(&s, "team-a", 2, "m").await;
    populate(&s, "secret", 2, "m").await;
    let tok = token_rooms("u", "u", &["lobby", "team-*"]);
    let r = s.history("team-a", "", &tok).await;
    assert_eq!(r.status, 200, "prefix entry: {r:?}");
    assert_eq!(r.json()["messages"].as_array().unwrap().len(), 2);
    let r = s.history("lobby", "", &tok).await;
    assert_eq!(r.status, 200, "{r:?}");
    let r = s.history("secret", "", &tok).await;
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.error_code(), "forbidden_room");
    let r = s.history("team", "", &tok).await;
    assert_eq!(r.status, 403, "`team-*` does not cover `team`: {r:?}");
    assert_eq!(r.error_code(), "forbidden_room");
}

#[tokio::test]
async fn unknown_path_is_404_json_error() {
    let s = Server::start();
    let r = s.get("/api/does-not-exist").await;
    assert_eq!(r.status, 404, "{r:?}");
    r.error_code();
}

//! Cluster mode: several real confab processes sharing one Postgres database
//! and one Redis namespace, with clients on different instances.

mod common;

use common::cluster::{ClusterEnv, RedisServer};
use common::*;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Reads until `messages` message frames and `acks` acks arrived (presence
/// and typing skipped; anything else fails).
async fn collect(c: &mut Client, messages: usize, acks: usize) -> (Vec<Value>, Vec<Value>) {
    let (mut got, mut acked) = (Vec::new(), Vec::new());
    while got.len() < messages || acked.len() < acks {
        let v = c.recv_main().await;
        match v["type"].as_str() {
            Some("message") => got.push(v),
            Some("ack") => acked.push(v),
            _ => panic!("unexpected frame {v}"),
        }
    }
    (got, acked)
}

/// Polls REST history on `server` until it holds at least `n` messages and
/// every seq up to its newest (entries a dead instance left are written later
/// than newer ones, so history can have a hole for a while).
async fn history_with(server: &Server, room: &str, n: usize, within: Duration) -> Vec<Value> {
    let tok = token(&uid("reader"), "reader");
    let deadline = Instant::now() + within;
    loop {
        let resp = server.history(room, "limit=1", &tok).await;
        if resp.status == 200 {
            let newest = resp.json()["messages"][0]["seq"].as_i64().unwrap_or(0);
            if newest as usize >= n {
                let all = server.history_all(room, &tok).await;
                if all.len() >= n && all.len() as i64 == newest {
                    return all;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "history of {room} did not reach {n} messages within {within:?}; log:\n{}",
            server.log_text()
        );
        sleep_ms(100).await;
    }
}

fn assert_gap_free(msgs: &[Value]) {
    let s = seqs(msgs);
    let want: Vec<i64> = (1..=s.len() as i64).collect();
    assert_eq!(s, want, "seqs must be 1..=n without gaps or duplicates");
}

async fn wait_ready(server: &Server, want: u16, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let status = server.get("/readyz").await.status;
        if status == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz stayed {status}, wanted {want}; log:\n{}",
            server.log_text()
        );
        sleep_ms(100).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_seq_sequence_and_history() {
    let env = ClusterEnv::new();
    let (a, b) = (env.instance(), env.instance());
    let mut alice = a.ws_user(&uid("alice"), "alice").await;
    let mut bob = b.ws_user(&uid("bob"), "bob").await;
    alice.join("shared").await;
    bob.join("shared").await;

    const EACH: usize = 50;
    for i in 0..EACH {
        alice
            .send_json(json!({"type":"send","room":"shared","content":format!("a{i}"),"ref":format!("a{i}")}))
            .await;
        bob.send_json(
            json!({"type":"send","room":"shared","content":format!("b{i}"),"ref":format!("b{i}")}),
        )
        .await;
    }
    let (seen_a, acks_a) = collect(&mut alice, 2 * EACH, EACH).await;
    let (seen_b, acks_b) = collect(&mut bob, 2 * EACH, EACH).await;
    assert_gap_free(&seen_a);
    assert_eq!(seen_a, seen_b, "both instances deliver the same sequence");

    // Each sender's messages keep their order, and acks match the messages.
    let by_seq: HashMap<i64, &Value> = seen_a
        .iter()
        .map(|m| (m["seq"].as_i64().unwrap(), m))
        .collect();
    for (acks, prefix) in [(&acks_a, "a"), (&acks_b, "b")] {
        let mut last = 0;
        for i in 0..EACH {
            let r = format!("{prefix}{i}");
            let ack = acks
                .iter()
                .find(|x| x["ref"] == r.as_str())
                .expect("ack per ref");
            let seq = ack["seq"].as_i64().unwrap();
            assert!(seq > last, "{prefix}: sends keep their order");
            last = seq;
            let m = by_seq[&seq];
            assert_eq!((&m["id"], &m["content"]), (&ack["id"], &json!(r)));
            assert_eq!(m["timestamp"], ack["timestamp"]);
        }
    }

    // History through either instance is the same as what was delivered.
    let via_b = history_with(&b, "shared", 2 * EACH, Duration::from_secs(10)).await;
    let via_a = history_with(&a, "shared", 2 * EACH, Duration::from_secs(10)).await;
    let delivered: Vec<Value> = seen_a.iter().map(strip_type).collect();
    assert_eq!(via_b, delivered);
    assert_eq!(via_a, delivered);
    assert_eq!(
        env.db
            .query("SELECT last_seq FROM rooms WHERE name = 'shared'"),
        "100"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_with_since_on_another_instance() {
    let env = ClusterEnv::new();
    let (a, b) = (env.instance(), env.instance());
    let alice_id = uid("alice");
    let mut alice = a.ws_user(&alice_id, "alice").await;
    alice.join("rec").await;
    for i in 0..5 {
        alice
            .send_and_echo("rec", &format!("early {i}"), &format!("e{i}"))
            .await;
    }
    alice.close().await;

    let mut bob = b.ws_user(&uid("bob"), "bob").await;
    bob.join_with(json!({"type":"join","room":"rec","history":0}))
        .await;
    for i in 0..7 {
        bob.send_and_echo("rec", &format!("missed {i}"), &format!("m{i}"))
            .await;
    }

    // Back on instance B (whose room sequenced the missed ones) ...
    let mut again = b.ws_user(&alice_id, "alice").await;
    let joined = again
        .join_with(json!({"type":"join","room":"rec","since":5}))
        .await;
    assert_eq!(joined["recovered"], true, "{joined}");
    assert_eq!(joined["last_seq"], 12, "{joined}");
    let replayed = again.recv_messages(7).await;
    assert_eq!(seqs(&replayed), (6..=12).collect::<Vec<i64>>());
    assert_eq!(replayed[0]["content"], "missed 0");

    // ... and on instance A, whose room only heard them through Redis.
    let mut on_a = a.ws_user(&alice_id, "alice").await;
    let joined = on_a
        .join_with(json!({"type":"join","room":"rec","since":3}))
        .await;
    assert_eq!(joined["recovered"], true, "{joined}");
    let last = joined["last_seq"].as_i64().unwrap();
    let mut got = on_a.recv_messages((last - 3) as usize).await;
    if last < 12 {
        // Whatever was still on its way arrives live, right after the replay.
        got.extend(on_a.recv_messages((12 - last) as usize).await);
    }
    assert_eq!(seqs(&got), (4..=12).collect::<Vec<i64>>());
    on_a.expect_no_type("message", 300).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_typing_span_instances() {
    let env = ClusterEnv::new();
    let (a, b) = (env.instance(), env.instance());
    let (alice_id, bob_id) = (uid("alice"), uid("bob"));
    let mut alice = a.ws_user(&alice_id, "alice").await;
    alice.join("p").await;

    let mut bob = b.ws_user(&bob_id, "bob").await;
    let joined = bob.join("p").await;
    let members: HashSet<String> = joined["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        members,
        HashSet::from([alice_id.clone(), bob_id.clone()]),
        "{joined}"
    );
    let p = alice.recv_type("presence").await;
    assert_eq!(p["joined"][0]["id"], bob_id.as_str(), "{p}");

    // Online counts users across instances.
    let rooms = b
        .get_auth("/api/rooms", &token(&uid("x"), "x"))
        .await
        .json();
    let room = rooms["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "p")
        .cloned();
    assert_eq!(room.map(|r| r["online"].clone()), Some(json!(2)), "{rooms}");

    // Typing crosses instances (and is not echoed to the typist).
    bob.send_json(json!({"type":"typing","room":"p"})).await;
    let t = alice.recv_type("typing").await;
    assert_eq!(t["user_id"], bob_id.as_str());

    // A second connection of bob on A adds nobody; bob leaving B removes nobody.
    let mut bob2 = a.ws_user(&bob_id, "bob").await;
    bob2.join("p").await;
    alice.expect_no_type("presence", 600).await;
    bob.send_json(json!({"type":"leave","room":"p"})).await;
    bob.recv_type("left").await;
    alice.expect_no_type("presence", 600).await;
    // His last connection leaving does.
    bob2.send_json(json!({"type":"leave","room":"p"})).await;
    let p = alice.recv_type("presence").await;
    assert_eq!(p["left"][0]["id"], bob_id.as_str(), "{p}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_instances_users_disappear() {
    let env = ClusterEnv::new();
    let (a, mut b) = (env.instance(), env.instance());
    let mut alice = a.ws_user(&uid("alice"), "alice").await;
    alice.join("crash").await;
    let bob_id = uid("bob");
    let mut bob = b.ws_user(&bob_id, "bob").await;
    bob.join("crash").await;
    let p = alice.recv_type("presence").await;
    assert_eq!(p["joined"][0]["id"], bob_id.as_str());

    b.kill();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(35);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match alice.next_frame(left).await {
            Some(Frame::Json(v))
                if v["type"] == "presence" && v["left"][0]["id"] == bob_id.as_str() =>
            {
                break
            }
            Some(Frame::Json(_)) => {}
            _ => panic!("no presence left for the crashed instance's user within 35 s"),
        }
    }
    assert!(
        started.elapsed() <= Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_one_instance_loses_no_acked_message() {
    const SENT: usize = 300;
    const KILL_AFTER: usize = 150;
    let env = ClusterEnv::new();
    let (mut a, b) = (env.instance(), env.instance());
    let mut writer = a.ws_user(&uid("w"), "writer").await;
    writer
        .join_with(json!({"type":"join","room":"kill","history":0}))
        .await;
    // Sends keep going while A is killed: some are acked, some are in flight.
    let mut content_of = HashMap::new();
    let mut acks = Vec::new();
    let mut sent = 0;
    while sent < SENT && acks.len() < KILL_AFTER {
        let r = format!("k{sent}");
        content_of.insert(r.clone(), format!("message {sent}"));
        writer
            .send_json(json!({"type":"send","room":"kill","content":content_of[&r],"ref":r}))
            .await;
        sent += 1;
        while let Some(Frame::Json(v)) = writer.next_frame(Duration::from_millis(1)).await {
            if v["type"] == "ack" {
                acks.push(v);
            }
        }
    }
    a.kill();
    while let Some(Frame::Json(v)) = writer.next_frame(Duration::from_millis(500)).await {
        if v["type"] == "ack" {
            acks.push(v);
        }
    }
    assert!(acks.len() >= KILL_AFTER, "only {} acks", acks.len());

    // Instance B writes what A accepted but never persisted (it takes over
    // A's pending stream entries after they sat idle).
    let newest = acks
        .iter()
        .map(|a| a["seq"].as_i64().unwrap())
        .max()
        .unwrap() as usize;
    let history = history_with(&b, "kill", newest, Duration::from_secs(60)).await;
    assert_gap_free(&history);
    let by_seq: HashMap<i64, &Value> = history
        .iter()
        .map(|m| (m["seq"].as_i64().unwrap(), m))
        .collect();
    for ack in &acks {
        let m = by_seq
            .get(&ack["seq"].as_i64().unwrap())
            .unwrap_or_else(|| panic!("acked message missing from history: {ack}"));
        assert_eq!(m["id"], ack["id"]);
        assert_eq!(m["timestamp"], ack["timestamp"]);
        assert_eq!(
            m["content"],
            content_of[ack["ref"].as_str().unwrap()].as_str()
        );
    }
    eprintln!(
        "sent {sent}, acked {}; history holds {}; B took over: {}",
        acks.len(),
        history.len(),
        b.log_text().contains("took over")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ref_is_idempotent_across_instances() {
    let env = ClusterEnv::new();
    let (a, b) = (env.instance(), env.instance());
    let alice_id = uid("alice");
    let mut watcher = b.ws_user(&uid("watch"), "watcher").await;
    watcher.join("idem").await;
    let mut on_a = a.ws_user(&alice_id, "alice").await;
    on_a.join("idem").await;
    let (ack, _) = on_a.send_and_echo("idem", "first", "once").await;
    assert_eq!(watcher.recv_messages(1).await[0]["content"], "first");

    // The same send again through the other instance (even with other content).
    let mut on_b = b.ws_user(&alice_id, "alice").await;
    // Known refs are answered before any other check: not joined there yet,
    // and even with content that would be refused.
    for content in ["not joined here", " "] {
        on_b.send_json(json!({"type":"send","room":"idem","content":content,"ref":"once"}))
            .await;
        let early = on_b.recv_main().await;
        assert_eq!(
            (&early["type"], &early["seq"], &early["id"]),
            (&json!("ack"), &ack["seq"], &ack["id"]),
            "{early}"
        );
    }
    on_b.join_with(json!({"type":"join","room":"idem","history":0}))
        .await;
    let again = on_b.send_msg("idem", "second", "once").await;
    assert_eq!(
        (&again["seq"], &again["id"], &again["timestamp"]),
        (&ack["seq"], &ack["id"], &ack["timestamp"])
    );
    // Named from another room, it is still the original send.
    on_b.join_with(json!({"type":"join","room":"idem-2","history":0}))
        .await;
    let elsewhere = on_b.send_msg("idem-2", "third", "once").await;
    assert_eq!(
        (&elsewhere["room"], &elsewhere["seq"]),
        (&json!("idem"), &ack["seq"])
    );
    watcher.expect_no_type("message", 500).await;
    let history = history_with(&a, "idem", 1, Duration::from_secs(10)).await;
    assert_eq!(history.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarting_empty_is_survived() {
    let mut redis = RedisServer::start();
    let env = ClusterEnv::with_redis(&redis.url());
    let (a, b) = (env.instance(), env.instance());
    let alice_id = uid("alice");
    let mut alice = a.ws_user(&alice_id, "alice").await;
    alice.join("r").await;
    let mut bob = b.ws_user(&uid("bob"), "bob").await;
    bob.join("r").await;
    alice.send_and_echo("r", "before", "r1").await;
    assert_eq!(bob.recv_messages(1).await[0]["seq"], 1);
    history_with(&b, "r", 1, Duration::from_secs(10)).await;

    redis.stop();
    wait_ready(&a, 503, Duration::from_secs(10)).await;
    alice
        .send_json(json!({"type":"send","room":"r","content":"while down","ref":"r2"}))
        .await;
    let e = alice.recv_error().await;
    assert_eq!(
        (&e["code"], &e["ref"]),
        (&json!("unavailable"), &json!("r2")),
        "{e}"
    );

    redis.start_again();
    wait_ready(&a, 200, Duration::from_secs(20)).await;
    wait_ready(&b, 200, Duration::from_secs(20)).await;
    // The seq continues from the store (never reused) and B hears it again.
    let (ack, _) = alice.send_and_echo("r", "after", "r3").await;
    assert_eq!(ack["seq"], 2, "{ack}");
    let got = bob.recv_messages(1).await;
    assert_eq!(
        (&got[0]["seq"], &got[0]["content"]),
        (&json!(2), &json!("after"))
    );
    let history = history_with(&a, "r", 2, Duration::from_secs(10)).await;
    assert_eq!(seqs(&history), vec![1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_delays_history_but_loses_nothing() {
    let env = ClusterEnv::new();
    let a = env.instance();
    let mut alice = a.ws_user(&uid("alice"), "alice").await;
    alice.join("pg").await;
    alice.send_and_echo("pg", "before", "p0").await;
    history_with(&a, "pg", 1, Duration::from_secs(10)).await;

    let b = env.instance();
    env.db.block();
    wait_ready(&a, 503, Duration::from_secs(10)).await;
    // Sends are still acked: the Redis stream holds them until Postgres is back.
    for i in 1..=20 {
        alice
            .send_and_echo("pg", &format!("during {i}"), &format!("p{i}"))
            .await;
    }
    let resp = a.history("pg", "", &token(&uid("r"), "r")).await;
    assert_eq!(
        (resp.status, resp.error_code()),
        (503, "unavailable".to_string())
    );
    // The 20 acked messages wait in the persist stream: that is the lag.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = a.get("/metrics").await.text();
        let lag = text
            .lines()
            .find_map(|l| l.strip_prefix("confab_persist_lag "))
            .and_then(|v| v.parse::<f64>().ok());
        if lag.is_some_and(|lag| lag >= 20.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "confab_persist_lag never showed the 20 waiting messages:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Recovery doesn't need Postgres: an instance that never opened the room
    // replays from the room's stream.
    let mut late = b.ws_user(&uid("late"), "late").await;
    let joined = late
        .join_with(json!({"type":"join","room":"pg","since":1}))
        .await;
    assert_eq!(
        (&joined["recovered"], &joined["last_seq"]),
        (&json!(true), &json!(21)),
        "{joined}"
    );
    assert_eq!(
        seqs(&late.recv_messages(20).await),
        (2..=21).collect::<Vec<i64>>()
    );

    env.db.unblock();
    wait_ready(&a, 200, Duration::from_secs(15)).await;
    let history = history_with(&a, "pg", 21, Duration::from_secs(30)).await;
    assert_gap_free(&history);
    assert_eq!(history[20]["content"], "during 20");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_starting_together_on_an_empty_database() {
    let env = ClusterEnv::new();
    let builders = vec![env.builder(), env.builder(), env.builder()];
    let servers: Vec<Server> = std::thread::scope(|scope| {
        let handles: Vec<_> = builders
            .into_iter()
            .map(|b| scope.spawn(move || b.start()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("instance starts"))
            .collect()
    });
    let mut c = servers[2].ws_user(&uid("u"), "u").await;
    c.join("fresh").await;
    c.send_and_echo("fresh", "hello", "h").await;
    history_with(&servers[0], "fresh", 1, Duration::from_secs(10)).await;
}

fn redis_cli(redis: &RedisServer, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_pubsub_connection_per_process_subscribed_to_local_rooms_only() {
    let redis = RedisServer::start();
    let env = ClusterEnv::with_redis(&redis.url());
    let (a, b) = (env.instance(), env.instance());
    let channel = |room: &str| format!("{}:room:{room}", env.ns.0);
    let subscribers = |room: &str| -> String {
        let out = redis_cli(&redis, &["PUBSUB", "NUMSUB", &channel(room)]);
        out.lines().nth(1).unwrap_or("").to_string()
    };

    let mut clients = Vec::new();
    for i in 0..5 {
        let mut c = a.ws_user(&uid("u"), "u").await;
        c.join(&format!("room-{i}")).await;
        clients.push(c);
    }
    let mut on_b = b.ws_user(&uid("v"), "v").await;
    on_b.join("room-0").await;
    let pubsub_clients = redis_cli(&redis, &["CLIENT", "LIST", "TYPE", "pubsub"]);
    assert_eq!(
        pubsub_clients.lines().count(),
        2,
        "one per instance:\n{pubsub_clients}"
    );
    assert_eq!(subscribers("room-0"), "2");
    assert_eq!(subscribers("room-3"), "1", "only A has members in room-3");

    // When the last local member leaves, the instance unsubscribes (after the
    // room's short idle linger).
    on_b.send_json(json!({"type":"leave","room":"room-0"}))
        .await;
    on_b.recv_type("left").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while subscribers("room-0") != "1" {
        assert!(Instant::now() < deadline, "B still subscribed to room-0");
        sleep_ms(200).await;
    }
    assert_eq!(subscribers("room-3"), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_instance_says_goodbye_for_its_users() {
    let env = ClusterEnv::new();
    let (a, mut b) = (env.instance(), env.instance());
    let mut alice = a.ws_user(&uid("alice"), "alice").await;
    alice.join("bye").await;
    let bob_id = uid("bob");
    let mut bob = b.ws_user(&bob_id, "bob").await;
    bob.join("bye").await;
    alice.recv_type("presence").await;

    let status = b.terminate(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    // Far sooner than the presence expiry: the leave was published on the way out.
    let p = alice.recv_type("presence").await;
    assert_eq!(p["left"][0]["id"], bob_id.as_str(), "{p}");
}

/// The cluster-only metrics: the sequencing script's round trip is timed,
/// and the persist lag is the persist stream's length (back to 0 once the
/// messages are in Postgres).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_metrics_time_redis_and_report_the_persist_lag() {
    let env = ClusterEnv::new();
    let a = env.instance();
    let mut c = a.ws_user(&uid("m"), "m").await;
    c.join("metered").await;
    for i in 0..5 {
        c.send_msg("metered", &format!("m{i}"), &format!("r{i}"))
            .await;
    }
    history_with(&a, "metered", 5, Duration::from_secs(10)).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let scrape = loop {
        let text = a.get("/metrics").await.text();
        if text.lines().any(|l| l == "confab_persist_lag 0") {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the persist lag never went back to 0:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let roundtrips: f64 = scrape
        .lines()
        .find_map(|l| l.strip_prefix("confab_redis_roundtrip_seconds_count "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no redis round-trip histogram:\n{scrape}"));
    assert!(roundtrips >= 5.0, "{scrape}");
    assert!(
        scrape
            .lines()
            .any(|l| l == "confab_messages_accepted_total 5"),
        "{scrape}"
    );
}

/// Abuse limits hold in cluster mode too (per instance, see
/// docs/operations.md): the rate limit with retry_after_ms, prohibited words
/// and spam; a known ref is still answered with its ack first, even from
/// another instance and while the user is rate limited there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abuse_limits_apply_on_every_instance() {
    let env = ClusterEnv::new();
    let limited = |b: ServerBuilder| {
        b.set("limits", "messages_per_sec", "1")
            .set("limits", "message_burst", "3")
            .set("moderation", "spam_repeats", "1")
            .set("moderation", "prohibited_words", r#"["darn"]"#)
            .start()
    };
    let a = limited(env.builder());
    let b = limited(env.builder());
    let user = uid("u");
    let mut on_a = a.ws_user(&user, "u").await;
    let mut on_b = b.ws_user(&user, "u").await;
    on_a.join("abuse").await;
    on_b.join("abuse").await;

    let first = on_a.send_msg("abuse", "hello", "a1").await;
    on_a.send_json(json!({"type":"send","room":"abuse","content":"hello","ref":"a2"}))
        .await;
    let e = on_a.recv_type("error").await;
    assert_eq!(
        (&e["code"], &e["ref"]),
        (&json!("spam"), &json!("a2")),
        "{e}"
    );
    on_a.send_json(json!({"type":"send","room":"abuse","content":"oh darn","ref":"a3"}))
        .await;
    let e = on_a.recv_type("error").await;
    assert_eq!(e["code"], "prohibited_content", "{e}");
    on_a.send_msg("abuse", "second", "a4").await;
    on_a.send_json(json!({"type":"send","room":"abuse","content":"third","ref":"a5"}))
        .await;
    let e = on_a.recv_type("error").await;
    assert_eq!(e["code"], "rate_limited", "{e}");
    assert!(e["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0), "{e}");

    // Instance b counts on its own: the burst is there, and the known ref is
    // answered with the original ack (from Redis), not stored twice.
    let again = on_b.send_msg("abuse", "hello", "a1").await;
    assert_eq!(
        (&again["seq"], &again["id"]),
        (&first["seq"], &first["id"]),
        "{again}"
    );
    on_b.send_msg("abuse", "from b", "b1").await;
    let history = history_with(&a, "abuse", 3, Duration::from_secs(10)).await;
    assert_gap_free(&history);
}

//! The Postgres store against a real server: `$CONFAB_TEST_PG`, else
//! 127.0.0.1:5432 with trust auth for user `postgres` (tests/common/cluster.rs).
//! Every test gets its own database, dropped at the end.

mod common;

use confab::chat::ChatMessage;
use confab::config::Config;
use confab::store::postgres::PgStore;
use confab::store::{RoomSummary, Store, StoreError};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::TestDb;

fn msg(room: &str, seq: u64, content: &str, client_ref: Option<&str>) -> Arc<ChatMessage> {
    Arc::new(ChatMessage {
        room: room.into(),
        seq,
        id: format!("id-{room}-{seq}"),
        user_id: format!("u{}", seq % 3),
        user_name: format!("User {}", seq % 3),
        content: content.into(),
        timestamp_ms: 1_700_000_000_000 + seq as i64,
        client_ref: client_ref.map(str::to_string),
        ..ChatMessage::default()
    })
}

fn seqs(messages: &[ChatMessage]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

fn migration_count() -> usize {
    std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().join("up.sql").exists())
        .count()
}

const TRICKY: [&str; 6] = [
    "it's \"quoted\" and back\\slashed",
    "line one\nline two\r\n\ttabbed",
    "héllo wörld — ünïcødé, 中文, العربية",
    "emoji 😀👍🏽 and a ZWJ 👩‍👩‍👧",
    "'); DROP TABLE messages; --",
    "$1 $$ %s {} ? :name",
];

#[tokio::test(flavor = "multi_thread")]
async fn round_trip_through_every_read() {
    let db = TestDb::create();
    let store = PgStore::open(&db.url(), 4).await.expect("open");

    // Empty database.
    assert_eq!(store.last_seq("general").await.unwrap(), 0);
    assert!(store.rooms().await.unwrap().is_empty());
    assert!(store.range("general", 0, 100).await.unwrap().is_empty());
    assert!(store.page("general", None, 10).await.unwrap().is_empty());
    store.ping().await.unwrap();
    store.insert_batch(Vec::new()).await.unwrap();

    // One batch, two rooms interleaved, tricky content, some refs.
    let mut batch = Vec::new();
    for seq in 1..=6u64 {
        let content = TRICKY[seq as usize - 1];
        let r = format!("c-{seq}");
        batch.push(msg(
            "general",
            seq,
            content,
            (seq % 2 == 0).then_some(r.as_str()),
        ));
        if seq <= 3 {
            batch.push(msg("team-a", seq, &format!("team {seq}"), None));
        }
    }
    store.insert_batch(batch.clone()).await.unwrap();

    let all = store.range("general", 0, u64::MAX).await.unwrap();
    assert_eq!(seqs(&all), vec![1, 2, 3, 4, 5, 6]);
    let expected: Vec<ChatMessage> = batch
        .iter()
        .filter(|m| m.room == "general")
        .map(|m| (**m).clone())
        .collect();
    assert_eq!(all, expected, "every field survives the round trip");
    assert_eq!(seqs(&store.range("general", 2, 4).await.unwrap()), [3, 4]);
    assert!(store.range("general", 6, 10).await.unwrap().is_empty());

    assert_eq!(
        seqs(&store.page("general", None, 4).await.unwrap()),
        [3, 4, 5, 6]
    );
    assert_eq!(
        seqs(&store.page("general", Some(4), 2).await.unwrap()),
        [2, 3]
    );
    assert_eq!(
        seqs(&store.page("general", Some(2), 10).await.unwrap()),
        [1]
    );
    assert!(store.page("general", Some(1), 10).await.unwrap().is_empty());
    assert_eq!(
        seqs(&store.page("general", Some(u64::MAX), 100).await.unwrap()),
        [1, 2, 3, 4, 5, 6]
    );
    assert!(store.page("general", None, 0).await.unwrap().is_empty());

    assert_eq!(store.last_seq("general").await.unwrap(), 6);
    assert_eq!(store.last_seq("team-a").await.unwrap(), 3);
    assert_eq!(store.last_seq("nobody").await.unwrap(), 0);
    assert_eq!(
        store.rooms().await.unwrap(),
        vec![
            RoomSummary {
                name: "general".into(),
                last_seq: 6
            },
            RoomSummary {
                name: "team-a".into(),
                last_seq: 3
            },
        ]
    );

    let refs = store.recent_refs(0).await.unwrap();
    let refs: Vec<(String, u64, Option<String>)> = refs
        .into_iter()
        .map(|r| (r.message.room, r.message.seq, r.message.client_ref))
        .collect();
    assert_eq!(
        refs,
        vec![
            ("general".into(), 2, Some("c-2".into())),
            ("general".into(), 4, Some("c-4".into())),
            ("general".into(), 6, Some("c-6".into())),
        ]
    );
    let since = 1_700_000_000_000 + 4;
    assert_eq!(store.recent_refs(since).await.unwrap().len(), 2);

    // Batches of one (the benchmark's batch_max = 1) append in order.
    for seq in 7..=20u64 {
        store
            .insert_batch(vec![msg("general", seq, "one by one", None)])
            .await
            .unwrap();
    }
    assert_eq!(store.last_seq("general").await.unwrap(), 20);
    assert_eq!(
        seqs(&store.range("general", 6, 20).await.unwrap()),
        (7..=20).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_larger_than_one_statement_commits_whole() {
    let db = TestDb::create();
    let store = PgStore::open(&db.url(), 2).await.expect("open");
    // 8 columns a row: 20 000 rows need three INSERT statements (65 535 binds each).
    let batch: Vec<_> = (1..=20_000u64)
        .map(|seq| msg(if seq % 2 == 0 { "even" } else { "odd" }, seq, "bulk", None))
        .collect();
    store.insert_batch(batch).await.unwrap();
    assert_eq!(db.query("SELECT count(*) FROM messages"), "20000");
    assert_eq!(store.last_seq("even").await.unwrap(), 20_000);
    assert_eq!(store.last_seq("odd").await.unwrap(), 19_999);
}

#[tokio::test(flavor = "multi_thread")]
async fn replayed_batches_are_no_ops_and_heads_never_go_back() {
    let db = TestDb::create();
    let store = PgStore::open(&db.url(), 4).await.expect("open");

    let first: Vec<_> = (1..=10u64)
        .map(|s| msg("general", s, &format!("m{s}"), Some(&format!("r{s}"))))
        .collect();
    store.insert_batch(first.clone()).await.unwrap();
    store
        .insert_batch(first.clone())
        .await
        .expect("the same batch again is not an error");
    assert_eq!(
        db.query("SELECT count(*) FROM messages WHERE room = 'general'"),
        "10"
    );

    let second: Vec<_> = (11..=20u64)
        .map(|s| msg("general", s, &format!("m{s}"), None))
        .collect();
    store.insert_batch(second).await.unwrap();
    assert_eq!(store.last_seq("general").await.unwrap(), 20);

    // An older batch re-delivered after a crash: nothing changes, the head stays.
    store.insert_batch(first.clone()).await.unwrap();
    assert_eq!(
        db.query("SELECT last_seq FROM rooms WHERE name = 'general'"),
        "20"
    );
    assert_eq!(store.last_seq("general").await.unwrap(), 20);
    assert_eq!(
        store.rooms().await.unwrap(),
        vec![RoomSummary {
            name: "general".into(),
            last_seq: 20
        }]
    );

    // A replay that overlaps new entries inserts only the new ones, and a
    // duplicate never overwrites what was stored first.
    let mut overlap: Vec<_> = (18..=25u64)
        .map(|s| msg("general", s, &format!("m{s}"), None))
        .collect();
    overlap[0] = msg("general", 18, "a different body for seq 18", None);
    store.insert_batch(overlap).await.unwrap();
    let all = store.range("general", 0, 100).await.unwrap();
    assert_eq!(seqs(&all), (1..=25).collect::<Vec<_>>());
    assert_eq!(all[17].content, "m18");
    assert_eq!(store.last_seq("general").await.unwrap(), 25);
    assert_eq!(
        db.query("SELECT last_seq FROM rooms WHERE name = 'general'"),
        "25"
    );

    // The rooms row keeps its first created_at_ms.
    assert_eq!(
        db.query("SELECT created_at_ms FROM rooms WHERE name = 'general'"),
        (1_700_000_000_000i64 + 1).to_string()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_writers_replaying_overlapping_batches_do_not_fail() {
    let db = TestDb::create();
    let store = Arc::new(PgStore::open(&db.url(), 8).await.expect("open"));
    let rooms = ["a", "b", "c", "d"];
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..10u64 {
                // Every writer covers the same keys, rooms in a writer-specific order.
                let mut batch = Vec::new();
                for i in 0..rooms.len() {
                    let room = rooms[(i + w as usize) % rooms.len()];
                    for seq in round * 5 + 1..=round * 5 + 5 {
                        batch.push(msg(room, seq, "x", None));
                    }
                }
                store.insert_batch(batch).await?;
            }
            Ok::<_, StoreError>(())
        }));
    }
    for t in tasks {
        t.await.unwrap().expect("no deadlock or conflict error");
    }
    assert_eq!(db.query("SELECT count(*) FROM messages"), "200");
    for room in rooms {
        assert_eq!(store.last_seq(room).await.unwrap(), 50);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn store_open_and_migrate_use_postgres_from_the_config() {
    let db = TestDb::create();
    let config = Config::from_toml_and_env(
        "",
        "test",
        [
            ("CONFAB__STORAGE__URL".to_string(), db.url()),
            ("CONFAB__STORAGE__POOL_SIZE".to_string(), "3".to_string()),
        ],
    )
    .expect("config");
    confab::store::migrate(&config).await.expect("migrate");
    confab::store::migrate(&config)
        .await
        .expect("migrate again is a no-op");
    assert_eq!(
        db.query("SELECT count(*) FROM __diesel_schema_migrations"),
        migration_count().to_string()
    );
    let store = confab::store::open(&config).await.expect("open");
    store
        .insert_batch(vec![msg("general", 1, "hi", None)])
        .await
        .unwrap();
    assert_eq!(store.last_seq("general").await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn racing_migrate_processes_apply_the_schema_once() {
    const RACERS: usize = 4;
    let db = TestDb::create();
    let cwd = tempfile::tempdir().unwrap();
    let children: Vec<_> = (0..RACERS)
        .map(|i| {
            let data_dir = cwd.path().join(format!("data-{i}"));
            Command::new(env!("CARGO_BIN_EXE_confab"))
                .arg("migrate")
                .current_dir(cwd.path())
                .env_remove("CONFAB_CONFIG")
                .env("CONFAB__STORAGE__URL", db.url())
                .env("CONFAB__STORAGE__DATA_DIR", &data_dir)
                .env("CONFAB__AUTH__JWT_SECRET", common::SECRET)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn confab migrate")
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "confab migrate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        db.query("SELECT count(*) FROM __diesel_schema_migrations"),
        migration_count().to_string()
    );
    assert_eq!(
        db.query(
            "SELECT count(*) FROM information_schema.tables \
             WHERE table_schema = 'public' AND table_name IN ('messages', 'rooms')"
        ),
        "2"
    );
    // The migrated schema works.
    let store = PgStore::open(&db.url(), 2).await.unwrap();
    store
        .insert_batch(vec![msg("general", 1, "after the race", None)])
        .await
        .unwrap();
    assert_eq!(store.last_seq("general").await.unwrap(), 1);
}

fn assert_connect_error(e: StoreError, started: Instant, within: Duration) {
    let elapsed = started.elapsed();
    assert!(elapsed < within, "took {elapsed:?}");
    let text = e.to_string();
    assert!(
        matches!(e, StoreError::Connect(_)),
        "expected a Connect error, got {text}"
    );
    assert!(
        text.starts_with("cannot connect to the database: "),
        "{text}"
    );
    assert!(!text.contains('\n'), "one line: {text:?}");
    assert!(!text.contains("sekrit"), "password leaked: {text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_closed_port_fails_fast_instead_of_hanging() {
    let url = "postgres://postgres:sekrit@127.0.0.1:1/confab";

    let started = Instant::now();
    let e = PgStore::open(url, 2).await.err().expect("open fails");
    assert_connect_error(e, started, Duration::from_secs(3));

    let config = Config::from_toml_and_env(
        "",
        "test",
        [("CONFAB__STORAGE__URL".to_string(), url.to_string())],
    )
    .unwrap();
    let started = Instant::now();
    let e = confab::store::migrate(&config)
        .await
        .expect_err("migrate fails");
    assert_connect_error(e, started, Duration::from_secs(3));

    // A pool built without connecting: every query reports the outage.
    let store = PgStore::connect(url, 2).expect("the pool builds lazily");
    let started = Instant::now();
    let e = store.ping().await.expect_err("ping fails");
    assert_connect_error(e, started, Duration::from_secs(3));
    let e = store
        .insert_batch(vec![msg("general", 1, "lost", None)])
        .await
        .expect_err("insert fails");
    assert!(matches!(e, StoreError::Connect(_)), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_never_answers_times_out() {
    // Accepts TCP connections (the kernel's backlog) but never speaks.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "postgres://postgres:sekrit@{}/confab",
        silent.local_addr().unwrap()
    );

    let started = Instant::now();
    let e = PgStore::open(&url, 2).await.err().expect("open fails");
    assert_connect_error(e, started, Duration::from_secs(10));

    let store = PgStore::connect(&url, 2).unwrap();
    let started = Instant::now();
    let e = store.ping().await.expect_err("ping fails");
    assert_connect_error(e, started, Duration::from_secs(10));
    drop(silent);
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_the_server_closed_are_replaced() {
    let db = TestDb::create();
    let store = Arc::new(PgStore::open(&db.url(), 4).await.expect("open"));
    // Check out several connections at once so the pool holds more than one.
    let pings: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.ping().await })
        })
        .collect();
    for p in pings {
        p.await.unwrap().unwrap();
    }
    // What a database restart or an idle-session kill does to pooled connections.
    let killed = db.query(&format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = '{}' AND pid <> pg_backend_pid()",
        db.name
    ));
    assert_ne!(killed, "0", "the pool had open connections");
    tokio::time::sleep(Duration::from_millis(300)).await;
    for seq in 1..=8 {
        store
            .insert_batch(vec![msg("general", seq, "after the kill", None)])
            .await
            .expect("a closed connection is dropped, not handed out");
    }
    assert_eq!(store.last_seq("general").await.unwrap(), 8);
}

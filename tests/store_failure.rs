//! A store that refuses writes (here: another process holds SQLite's write
//! lock longer than the busy timeout) fails the affected sends with
//! `unavailable`, keeps the server serving, and leaves no gap in the seqs.

mod common;

use common::*;
use diesel::connection::SimpleConnection;
use diesel::{Connection, SqliteConnection};
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_database_refuses_sends_without_crashing_or_gaps() {
    let s = Server::start();
    let mut c = s.ws_user(&uid("u"), "u").await;
    c.join("locked").await;
    let (first, _) = c.send_and_echo("locked", "before", "l1").await;
    assert_eq!(first["seq"], 1);

    // Another writer takes the database's write lock and keeps it.
    let db = s.dir().join("confab.db"); // data_dir is the test's folder
    let mut locker = SqliteConnection::establish(&db.display().to_string()).expect("open db");
    locker
        .batch_execute("BEGIN EXCLUSIVE")
        .expect("take the write lock");

    c.send_json(json!({"type":"send","room":"locked","content":"while locked","ref":"l2"}))
        .await;
    let e = c.recv_json_within(Duration::from_secs(15)).await;
    assert_eq!(
        (&e["type"], &e["code"], &e["ref"]),
        (&json!("error"), &json!("unavailable"), &json!("l2")),
        "{e}"
    );
    assert_eq!(s.get("/healthz").await.status, 200, "still serving");

    locker.batch_execute("COMMIT").expect("release the lock");
    drop(locker);
    // The refused send was not accepted: resending its ref stores it now,
    // with the next seq (no gap where the failed attempt was).
    let (ack, msg) = c.send_and_echo("locked", "while locked", "l2").await;
    assert_eq!((&ack["seq"], &msg["seq"]), (&json!(2), &json!(2)), "{ack}");
    let history = s.history_all("locked", &token(&uid("r"), "r")).await;
    assert_eq!(seqs(&history), vec![1, 2]);
    assert_eq!(history[1]["content"], "while locked");
}

//! Edits, deletes and reactions applied by the stores themselves (protocol
//! section 7a), on SQLite and on a real Postgres: a change is applied in the
//! transaction that stores it, in seq order, once; a delete erases the text
//! of the message and of its edits; history pages show the current state.

mod common;

use confab::chat::{ChatMessage, Kind};
use confab::store::postgres::PgStore;
use confab::store::sqlite::SqliteStore;
use confab::store::{Pipeline, Store};
use std::sync::Arc;

use common::cluster::TestDb;

const ROOM: &str = "general";

fn entry(
    seq: u64,
    kind: Kind,
    user: &str,
    content: &str,
    target: Option<&str>,
) -> Arc<ChatMessage> {
    Arc::new(ChatMessage {
        room: ROOM.into(),
        seq,
        id: format!("e{seq}"),
        user_id: user.into(),
        user_name: user.to_uppercase(),
        content: content.into(),
        timestamp_ms: 1_795_428_000_000 + seq as i64,
        kind,
        target: target.map(str::to_string),
        ..ChatMessage::default()
    })
}

/// The log the scenario writes, in batches as a room would.
fn batches() -> Vec<Vec<Arc<ChatMessage>>> {
    let mut reply = (*entry(2, Kind::Message, "bob", "replying", None)).clone();
    reply.reply_to = Some("e1".into());
    vec![
        vec![
            entry(1, Kind::Message, "ann", "first secret", None),
            Arc::new(reply),
            entry(3, Kind::Message, "bob", "kept", None),
        ],
        vec![
            entry(4, Kind::Edit, "ann", "second secret", Some("e1")),
            entry(5, Kind::React, "bob", "👍", Some("e1")),
            entry(6, Kind::React, "cat", "👍", Some("e3")),
            entry(7, Kind::React, "ann", "🎉", Some("e3")),
            entry(8, Kind::React, "cat", "🎉", Some("e3")),
            // A repeat sequenced in a race is one reaction.
            entry(9, Kind::React, "cat", "👍", Some("e3")),
            entry(10, Kind::Unreact, "ann", "🎉", Some("e3")),
            // Not the author's: changes nothing.
            entry(11, Kind::Edit, "bob", "hijack", Some("e3")),
            entry(12, Kind::Edit, "bob", "kept, edited", Some("e3")),
        ],
        vec![entry(13, Kind::Delete, "ann", "", Some("e1"))],
        // Sequenced after the delete (a cluster race): no effect, no text kept.
        vec![
            entry(14, Kind::Edit, "ann", "third secret", Some("e1")),
            entry(15, Kind::React, "bob", "😂", Some("e1")),
        ],
    ]
}

async fn check(store: &(impl Store + Pipeline), raw_contents: impl Fn() -> String) {
    for batch in batches() {
        store.insert_batch(batch).await.expect("batch");
    }
    let page = store.page(ROOM, None, 50).await.unwrap();
    assert_eq!(
        page.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [1, 2, 3],
        "history pages messages only"
    );
    let (deleted, reply, kept) = (&page[0], &page[1], &page[2]);
    assert!(deleted.deleted && deleted.content.is_empty());
    assert!(deleted.reactions.is_empty() && deleted.edited_at_ms.is_none());
    assert_eq!(reply.reply_to.as_deref(), Some("e1"));
    assert_eq!(kept.content, "kept, edited");
    assert_eq!(kept.edited_at_ms, Some(1_795_428_000_012));
    let reactions: Vec<(&str, u64, Vec<&str>)> = kept
        .reactions
        .iter()
        .map(|r| {
            (
                r.emoji.as_str(),
                r.count,
                r.users.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    assert_eq!(
        reactions,
        [("👍", 1, vec!["cat"]), ("🎉", 1, vec!["cat"])],
        "oldest emoji first; a repeat and a removed reaction don't count"
    );

    // The log keeps every entry; the deleted text is nowhere.
    let log = store.range(ROOM, 0, 100).await.unwrap();
    assert_eq!(log.len(), 15);
    assert!(log.iter().all(|m| !m.content.contains("secret")), "{log:?}");
    assert_eq!(
        log[10].content, "hijack",
        "an edit that changed nothing keeps its own row"
    );
    let raw = raw_contents();
    assert!(
        !raw.contains("secret"),
        "the database still holds deleted text: {raw}"
    );

    // The rules' view of stored messages.
    let targets = store
        .targets(
            ROOM,
            vec!["e1".into(), "e3".into(), "e4".into(), "nope".into()],
            vec!["cat".into()],
        )
        .await
        .unwrap();
    assert_eq!(targets.len(), 2, "events and unknown ids are not messages");
    let e3 = targets.iter().find(|t| t.id == "e3").unwrap();
    assert_eq!(
        (e3.author.as_str(), e3.deleted, e3.emoji.len()),
        ("bob", false, 2)
    );
    assert!(e3.reacted.contains(&("cat".to_string(), "👍".to_string())));
    assert!(targets.iter().find(|t| t.id == "e1").unwrap().deleted);

    // A re-delivered entry is not applied twice.
    store
        .import_batch(vec![entry(5, Kind::React, "bob", "👍", Some("e3"))])
        .await
        .unwrap();
    store
        .import_batch(vec![entry(10, Kind::React, "ann", "🎉", Some("e3"))])
        .await
        .unwrap();
    let kept = store.page(ROOM, None, 50).await.unwrap().remove(2);
    assert_eq!(kept.reactions.len(), 2, "{:?}", kept.reactions);
    assert_eq!(kept.reactions[1].count, 1);

    // Retention takes a message's reactions with it: the same (room, seq)
    // stored again (an import) shows none.
    let gone = store.delete_older_than(i64::MAX, 1000).await.unwrap();
    assert_eq!(gone, 15);
    store
        .import_batch(vec![entry(3, Kind::Message, "bob", "kept", None)])
        .await
        .unwrap();
    let page = store.page(ROOM, None, 50).await.unwrap();
    assert_eq!(page.len(), 1);
    assert!(page[0].reactions.is_empty(), "{:?}", page[0].reactions);
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_applies_changes_where_it_stores_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("confab.db");
    let store = SqliteStore::open(&path, 2).await.expect("open");
    let files = dir.path().to_path_buf();
    check(&store, move || {
        // Every byte of the database file and of its write-ahead log.
        ["confab.db", "confab.db-wal"]
            .iter()
            .map(|f| {
                String::from_utf8_lossy(&std::fs::read(files.join(f)).unwrap_or_default())
                    .into_owned()
            })
            .collect()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_applies_changes_where_it_stores_them() {
    let db = TestDb::create();
    let store = PgStore::open(&db.url(), 4).await.expect("open");
    check(&store, || {
        db.query("SELECT string_agg(content, '|') FROM messages")
    })
    .await;
}

/// Cluster mode: instances write parts of the persist stream, so changes may
/// commit before earlier ones and before their message. The end state is the
/// same as in seq order.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_changes_committed_out_of_order_end_the_same() {
    let db = TestDb::create();
    let store = PgStore::open(&db.url(), 4).await.expect("open");
    let log: Vec<Arc<ChatMessage>> = batches().into_iter().flatten().collect();
    // Newest first, one entry per transaction: every change before its message.
    for e in log.iter().rev() {
        store.insert_batch(vec![e.clone()]).await.expect("entry");
    }
    // React, unreact, react again by one user, committed 5, 7, 6.
    let more = [
        entry(16, Kind::React, "dan", "🔥", Some("e3")),
        entry(18, Kind::React, "dan", "🔥", Some("e3")),
        entry(17, Kind::Unreact, "dan", "🔥", Some("e3")),
        // Two edits committed newest first.
        entry(20, Kind::Edit, "bob", "kept, edited twice", Some("e3")),
        entry(19, Kind::Edit, "bob", "kept, edited once", Some("e3")),
    ];
    for e in more {
        store.insert_batch(vec![e]).await.expect("entry");
    }
    let page = store.page(ROOM, None, 50).await.unwrap();
    assert!(
        page[0].deleted && page[0].content.is_empty(),
        "{:?}",
        page[0]
    );
    assert_eq!(page[2].content, "kept, edited twice");
    assert_eq!(page[2].edited_at_ms, Some(1_795_428_000_020));
    let emoji: Vec<(&str, u64)> = page[2]
        .reactions
        .iter()
        .map(|r| (r.emoji.as_str(), r.count))
        .collect();
    assert_eq!(
        emoji,
        [("👍", 1), ("🎉", 1), ("🔥", 1)],
        "{:?}",
        page[2].reactions
    );
    let raw = db.query("SELECT string_agg(content, '|') FROM messages");
    assert!(!raw.contains("secret"), "{raw}");
}

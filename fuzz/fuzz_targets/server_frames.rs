//! Fuzzes the server-frame encoders (several are hand-written with `write!`)
//! and `finish_page` with arbitrary field values: every frame must be valid
//! JSON that carries the fields exactly as given.
//!
//! Run with `cargo +nightly fuzz run server_frames` (see docs/fuzzing.md).

#![no_main]

use confab::chat::ChatMessage;
use confab::history::finish_page;
use confab::protocol::{
    format_timestamp, history_json, joined_json, presence_json, typing_json, welcome_json,
    UserInfo,
};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

#[derive(Debug, Arbitrary)]
struct Input {
    room: String,
    seq: u64,
    id: String,
    user_id: String,
    user_name: String,
    content: String,
    timestamp_ms: i64,
    client_ref: Option<String>,
    next_before: Option<u64>,
    page_rows: u8,
    page_limit: u8,
}

fuzz_target!(|input: Input| {
    let m = ChatMessage {
        room: input.room.clone(),
        seq: input.seq,
        id: input.id.clone(),
        user_id: input.user_id.clone(),
        user_name: input.user_name.clone(),
        content: input.content.clone(),
        timestamp_ms: input.timestamp_ms,
        client_ref: input.client_ref.clone(),
        ..ChatMessage::default()
    };
    let ts = m.timestamp();
    assert_eq!(ts, format_timestamp(input.timestamp_ms));
    check_timestamp(input.timestamp_ms, &ts);

    let frame = parse(&m.frame_json());
    assert_eq!(frame["type"], "message");
    check_message_fields(&frame, &m, &ts);
    let object = parse(&m.object_json());
    assert_eq!(object.get("type"), None);
    check_message_fields(&object, &m, &ts);

    let ack = parse(&m.ack_json(m.client_ref.as_deref()));
    assert_eq!(ack["type"], "ack");
    assert_eq!(
        ack.get("ref").and_then(Value::as_str),
        m.client_ref.as_deref()
    );
    assert_eq!(ack["room"], m.room.as_str());
    assert_eq!(ack["seq"], m.seq);
    assert_eq!(ack["id"], m.id.as_str());
    assert_eq!(ack["timestamp"], ts.as_str());

    let seed = parse(&m.seed_frame_json().expect("a message has a seed frame"));
    assert_eq!(seed["client_id"], m.user_id.as_str());
    assert_eq!(seed["room_id"], m.room.as_str());
    assert_eq!(seed["message"], m.content.as_str());
    assert_eq!(seed["seq"], m.seq);

    for as_frame in [false, true] {
        let page = parse(&history_json(
            &m.room,
            std::slice::from_ref(&m),
            input.next_before,
            as_frame,
        ));
        assert_eq!(page.get("type").is_some(), as_frame);
        assert_eq!(page["room"], m.room.as_str());
        assert_eq!(page["messages"][0], object);
        assert_eq!(page["next_before"].as_u64(), input.next_before);
    }

    let user = UserInfo {
        id: m.user_id.clone(),
        name: m.user_name.clone(),
    };
    let other = UserInfo {
        id: m.id.clone(),
        name: m.content.clone(),
    };
    let joined = parse(&joined_json(&m.room, m.seq, Some(true), &[&user, &other]));
    assert_eq!(joined["members"][1]["name"], other.name.as_str());
    assert_eq!(joined["last_seq"], m.seq);
    let presence = parse(&presence_json(&m.room, &[&user], &[&other]));
    assert_eq!(presence["left"][0]["id"], other.id.as_str());
    let typing = parse(&typing_json(&m.room, &user));
    assert_eq!(typing["user"], user.name.as_str());
    let welcome = parse(&welcome_json(&m.content, &user));
    assert_eq!(welcome["session"], m.content.as_str());

    check_finish_page(input.page_rows, input.page_limit);
});

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
}

fn check_message_fields(v: &Value, m: &ChatMessage, ts: &str) {
    assert_eq!(v["room"], m.room.as_str());
    assert_eq!(v["seq"], m.seq);
    assert_eq!(v["id"], m.id.as_str());
    assert_eq!(v["user"], m.user_name.as_str());
    assert_eq!(v["user_id"], m.user_id.as_str());
    assert_eq!(v["content"], m.content.as_str());
    assert_eq!(v["timestamp"], ts);
}

/// RFC 3339 UTC with milliseconds; exact for every instant in years 0000-9999.
fn check_timestamp(ms: i64, ts: &str) {
    assert!(ts.ends_with('Z'), "{ts}");
    const YEAR_0: i64 = -62_167_219_200_000;
    const YEAR_10000: i64 = 253_402_300_800_000;
    if (YEAR_0..YEAR_10000).contains(&ms) {
        assert_eq!(ts.len(), "2026-11-23T10:00:00.123Z".len(), "{ts}");
        let back = chrono::DateTime::parse_from_rfc3339(ts).expect("timestamp parses");
        assert_eq!(back.timestamp_millis(), ms);
    }
}

/// `finish_page` on `rows` consecutive messages fetched with one more than `limit`.
fn check_finish_page(rows: u8, limit: u8) {
    let limit = usize::from(limit.max(1));
    let rows: Vec<ChatMessage> = (1..=u64::from(rows))
        .map(|seq| ChatMessage {
            room: "r".into(),
            seq,
            id: String::new(),
            user_id: String::new(),
            user_name: String::new(),
            content: String::new(),
            timestamp_ms: 0,
            client_ref: None,
            ..ChatMessage::default()
        })
        .collect();
    let n = rows.len();
    let (page, next) = finish_page(rows, limit);
    let seqs: Vec<u64> = page.iter().map(|m| m.seq).collect();
    let expected: Vec<u64> = (1..=n as u64).skip(n.saturating_sub(limit)).collect();
    assert_eq!(seqs, expected);
    assert_eq!(
        next,
        if n > limit {
            seqs.first().copied()
        } else {
            None
        }
    );
}

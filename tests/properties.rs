//! Property tests (proptest) for the `/ws` client-frame parser, the validators
//! and history paging. The rules come from the protocol (docs/protocol.md and
//! the contract it restates); docs/fuzzing.md lists what each property covers.
//!
//! Case counts are kept modest so the file runs in a few seconds in debug.

use async_trait::async_trait;
use confab::chat::ChatMessage;
use confab::history;
use confab::protocol::{
    check_content, check_display_name, check_room, is_valid_room, parse_client_frame,
    parse_cursor_param, ClientFrame, ErrorCode, MAX_JOIN_HISTORY, MAX_NAME_CHARS, MAX_REF_CHARS,
};
use confab::store::sqlite::SqliteStore;
use confab::store::{RecentRef, RoomSummary, SharedStore, Store, StoreError};
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

// ------------------------------------------------------------------ strategies

/// Every Unicode White_Space character (what "non-whitespace" is measured against).
const WHITE_SPACE: &[char] = &[
    '\u{9}', '\u{A}', '\u{B}', '\u{C}', '\u{D}', ' ', '\u{85}', '\u{A0}', '\u{1680}', '\u{2000}',
    '\u{2001}', '\u{2002}', '\u{2003}', '\u{2004}', '\u{2005}', '\u{2006}', '\u{2007}', '\u{2008}',
    '\u{2009}', '\u{200A}', '\u{2028}', '\u{2029}', '\u{202F}', '\u{205F}', '\u{3000}',
];

const FRAME_TYPES: &[&str] = &["join", "leave", "send", "typing", "history", "ping"];
/// The frame types that name a room.
const ROOM_FRAME_TYPES: &[&str] = &["join", "leave", "send", "typing", "history"];

fn is_room_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')
}

/// A room name matching `^[A-Za-z0-9_.:-]{1,64}$`.
fn room() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.:-]{1,64}"
}

/// A string that does not match the room rule: empty, too long, or with a
/// character outside the set (spaces, non-ASCII, NUL, `/`, …).
fn bad_room() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[A-Za-z0-9_.:-]{65,100}",
        (
            "[A-Za-z0-9_.:-]{0,40}",
            any::<char>().prop_filter("outside the room set", |c| !is_room_char(*c)),
            "[A-Za-z0-9_.:-]{0,23}",
        )
            .prop_map(|(a, c, b)| format!("{a}{c}{b}")),
    ]
}

fn whitespace() -> impl Strategy<Value = char> {
    proptest::sample::select(WHITE_SPACE)
}

fn whitespace_string(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(whitespace(), 0..=max).prop_map(String::from_iter)
}

/// Characters that are neither whitespace, control nor NUL, with plenty of
/// multi-byte ones so byte lengths and code point counts differ.
fn visible_char() -> impl Strategy<Value = char> {
    prop_oneof![
        proptest::char::range('!', '~'),
        proptest::sample::select(vec!['é', 'ß', 'Ω', '中', '😀', '🦀', 'ж', 'ا']),
        proptest::char::range('\u{4E00}', '\u{9FFF}'),
    ]
}

/// Characters a display name may hold but that are not visible on their
/// own: a name needs at least one `visible_char` too.
fn invisible_but_allowed_char() -> impl Strategy<Value = char> {
    proptest::sample::select(vec!['\u{301}', ' ', '\u{3000}'])
}

/// A Unicode control character (general category Cc).
fn control_char() -> impl Strategy<Value = char> {
    prop_oneof![
        proptest::char::range('\0', '\u{1F}'),
        proptest::char::range('\u{7F}', '\u{9F}'),
    ]
}

/// A valid `ref`: 1-64 code points, no NUL.
fn client_ref() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        any::<char>().prop_filter("no NUL", |c| *c != '\0'),
        1..=MAX_REF_CHARS,
    )
    .prop_map(String::from_iter)
}

/// Any JSON value, a few levels deep.
fn json_value() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from), // NaN/inf become null
        any::<String>().prop_map(Value::from),
        proptest::sample::select(FRAME_TYPES).prop_map(Value::from),
        room().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    "[a-z]{1,8}",
                    proptest::sample::select(vec![
                        "type", "room", "content", "ref", "history", "since", "before", "limit",
                    ])
                    .prop_map(str::to_string),
                ],
                inner,
                0..6,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

/// An object that looks like a frame: a (mostly) known type and the frame
/// fields with random values of any JSON type.
fn frame_like() -> impl Strategy<Value = Value> {
    let field = proptest::option::of(json_value());
    (
        prop_oneof![
            4 => proptest::sample::select(FRAME_TYPES).prop_map(Value::from),
            1 => json_value(),
        ],
        [
            field.clone(),
            field.clone(),
            field.clone(),
            field.clone(),
            field.clone(),
            field.clone(),
            field,
        ],
    )
        .prop_map(|(kind, fields)| {
            let mut obj = Map::new();
            obj.insert("type".into(), kind);
            let keys = [
                "room", "content", "ref", "history", "since", "before", "limit",
            ];
            for (key, value) in keys.iter().zip(fields) {
                if let Some(v) = value {
                    obj.insert((*key).into(), v);
                }
            }
            Value::Object(obj)
        })
}

/// A well-formed frame from the protocol's grammar, with the frame the parser
/// must produce for it. Optional fields are sometimes absent, sometimes null.
fn well_formed() -> impl Strategy<Value = (Value, ClientFrame)> {
    let opt_u64 = || proptest::option::of(any::<u64>());
    let opt_cursor = || proptest::option::of(1..=u64::MAX);
    let nulls = any::<bool>();
    prop_oneof![
        Just((json!({"type": "ping"}), ClientFrame::Ping)),
        (room(), opt_u64(), opt_u64(), nulls).prop_map(|(room, history, since, nulls)| {
            let mut v = json!({"type": "join", "room": room});
            put(&mut v, "history", history, nulls);
            put(&mut v, "since", since, nulls);
            let history = history.map(|h| h.min(u64::from(MAX_JOIN_HISTORY)) as u32);
            (
                v,
                ClientFrame::Join {
                    room,
                    history,
                    since,
                },
            )
        }),
        room().prop_map(|room| (
            json!({"type": "leave", "room": room}),
            ClientFrame::Leave { room }
        )),
        room().prop_map(|room| (
            json!({"type": "typing", "room": room}),
            ClientFrame::Typing { room }
        )),
        (
            room(),
            any::<String>(),
            proptest::option::of(client_ref()),
            nulls
        )
            .prop_map(|(room, content, client_ref, nulls)| {
                let mut v = json!({"type": "send", "room": room, "content": content});
                put(&mut v, "ref", client_ref.clone(), nulls);
                (
                    v,
                    ClientFrame::Send {
                        room,
                        content,
                        client_ref,
                        reply_to: None,
                    },
                )
            }),
        (room(), opt_cursor(), opt_cursor(), nulls).prop_map(|(room, before, limit, nulls)| {
            let mut v = json!({"type": "history", "room": room});
            put(&mut v, "before", before, nulls);
            put(&mut v, "limit", limit, nulls);
            let limit = limit.map(|l| l.min(u64::from(u32::MAX)) as u32);
            (
                v,
                ClientFrame::History {
                    room,
                    before,
                    limit,
                },
            )
        }),
    ]
}

/// Sets an optional field: absent or `null` when `None` (the parser treats both alike).
fn put<T: Into<Value>>(v: &mut Value, key: &str, value: Option<T>, null_when_none: bool) {
    match value {
        Some(x) => v[key] = x.into(),
        None if null_when_none => v[key] = Value::Null,
        None => {}
    }
}

/// A JSON value that is not a non-negative integer (for `history`/`since`).
fn not_uint() -> impl Strategy<Value = Value> {
    prop_oneof![
        (i64::MIN..0).prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite, not integral", |f| f.is_finite()
                && f.fract() != 0.0)
            .prop_map(Value::from),
        Just(json!(1.0)),
        Just(json!(18446744073709551616.0)),
        any::<String>().prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        Just(json!([1])),
        Just(json!({"n": 1})),
    ]
}

// ----------------------------------------------------------- parser properties

/// What any outcome of `parse_client_frame` must be consistent with.
fn check_outcome(text: &str) {
    let parsed = parse_client_frame(text);
    match serde_json::from_str::<Value>(text) {
        Err(_) => {
            let e = parsed.expect_err("accepted text that is not JSON");
            assert_eq!(e.code, ErrorCode::InvalidJson);
            assert_eq!((e.client_ref, e.room), (None, None));
        }
        Ok(value) => {
            let obj = value.as_object();
            let text_field = |k: &str| obj.and_then(|o| o.get(k)).and_then(Value::as_str);
            match parsed {
                Err(e) => {
                    assert!(
                        matches!(
                            e.code,
                            ErrorCode::InvalidFrame
                                | ErrorCode::InvalidRoom
                                | ErrorCode::InvalidCursor
                        ),
                        "{:?}",
                        e.code
                    );
                    // Errors echo `ref` and `room` exactly when the frame had them.
                    assert_eq!(e.client_ref.as_deref(), text_field("ref"));
                    assert_eq!(e.room.as_deref(), text_field("room"));
                    let frame: Value = serde_json::from_str(&e.to_v1_frame()).unwrap();
                    assert_eq!(frame["code"], e.code.as_str());
                }
                Ok(frame) => {
                    let obj = obj.expect("accepted a frame that is not an object");
                    if let Some(room) = frame_room(&frame) {
                        assert!(is_valid_room(room), "accepted room {room:?}");
                        assert_eq!(text_field("room"), Some(room));
                    }
                    match &frame {
                        ClientFrame::Send {
                            client_ref: Some(r),
                            ..
                        } => {
                            assert!((1..=MAX_REF_CHARS).contains(&r.chars().count()));
                            assert!(!r.contains('\0'));
                        }
                        ClientFrame::Join {
                            history: Some(h), ..
                        } => {
                            assert!(*h <= MAX_JOIN_HISTORY)
                        }
                        ClientFrame::History { before, limit, .. } => {
                            assert!(before.is_none_or(|b| b >= 1));
                            assert!(limit.is_none_or(|l| l >= 1));
                        }
                        _ => {}
                    }
                    assert_eq!(
                        obj.get("type").and_then(Value::as_str),
                        Some(frame_type(&frame))
                    );
                }
            }
        }
    }
}

fn frame_room(frame: &ClientFrame) -> Option<&str> {
    match frame {
        ClientFrame::Ping => None,
        ClientFrame::Join { room, .. }
        | ClientFrame::Leave { room }
        | ClientFrame::Send { room, .. }
        | ClientFrame::Change { room, .. }
        | ClientFrame::Typing { room }
        | ClientFrame::Read { room, .. }
        | ClientFrame::History { room, .. } => Some(room),
    }
}

fn frame_type(frame: &ClientFrame) -> &'static str {
    match frame {
        ClientFrame::Ping => "ping",
        ClientFrame::Join { .. } => "join",
        ClientFrame::Leave { .. } => "leave",
        ClientFrame::Send { .. } => "send",
        ClientFrame::Change { change, .. } => match change {
            confab::protocol::Change::Edit { .. } => "edit",
            confab::protocol::Change::Delete { .. } => "delete",
            confab::protocol::Change::React { .. } => "react",
            confab::protocol::Change::Unreact { .. } => "unreact",
        },
        ClientFrame::Typing { .. } => "typing",
        ClientFrame::Read { .. } => "read",
        ClientFrame::History { .. } => "history",
    }
}

proptest! {
    #![proptest_config(Config { cases: 1024, ..Config::default() })]

    #[test]
    fn parse_never_panics_on_strings(text in any::<String>()) {
        check_outcome(&text);
    }

    #[test]
    fn parse_never_panics_on_json_ish_strings(text in r#"[{}\[\]":,. a-z0-9\\-]{0,80}"#) {
        check_outcome(&text);
    }

    #[test]
    fn parse_never_panics_on_json_values(value in json_value()) {
        check_outcome(&value.to_string());
    }

    #[test]
    fn parse_never_panics_on_frame_like_objects(value in frame_like()) {
        check_outcome(&value.to_string());
    }

    #[test]
    fn non_objects_are_invalid_frame(value in json_value().prop_filter("not an object", |v| !v.is_object())) {
        let e = parse_client_frame(&value.to_string()).unwrap_err();
        prop_assert_eq!(e.code, ErrorCode::InvalidFrame);
    }

    #[test]
    fn well_formed_frames_parse_to_their_fields(
        (value, expected) in well_formed(),
        extra in proptest::collection::btree_map("x_[a-z]{1,6}", json_value(), 0..3),
    ) {
        prop_assert_eq!(parse_client_frame(&value.to_string()), Ok(expected.clone()));
        // Keys the frame does not use are ignored (current behaviour, forward-compatible).
        let mut with_extra = value;
        for (k, v) in extra {
            with_extra[k] = v;
        }
        prop_assert_eq!(parse_client_frame(&with_extra.to_string()), Ok(expected));
    }

    #[test]
    fn bad_room_is_invalid_room_and_echoed(
        kind in proptest::sample::select(ROOM_FRAME_TYPES),
        room in bad_room(),
        r in client_ref(),
    ) {
        let v = json!({"type": kind, "room": room, "content": "hi", "ref": r});
        let e = parse_client_frame(&v.to_string()).unwrap_err();
        prop_assert_eq!(e.code, ErrorCode::InvalidRoom);
        prop_assert_eq!(e.room.as_deref(), Some(room.as_str()));
        prop_assert_eq!(e.client_ref.as_deref(), Some(r.as_str()));
        prop_assert!(!is_valid_room(&room));
    }

    #[test]
    fn room_of_another_json_type_is_invalid_frame(
        kind in proptest::sample::select(ROOM_FRAME_TYPES),
        room in json_value().prop_filter("not a string", |v| !v.is_string()),
    ) {
        let v = json!({"type": kind, "room": room, "content": "hi"});
        let e = parse_client_frame(&v.to_string()).unwrap_err();
        let expected = if room.is_null() { "missing" } else { "mistyped" };
        prop_assert_eq!(e.code, ErrorCode::InvalidFrame, "{} room", expected);
        prop_assert_eq!(e.room, None);
    }

    #[test]
    fn join_counts_must_be_non_negative_integers(
        room in room(),
        key in proptest::sample::select(vec!["history", "since"]),
        bad in not_uint(),
    ) {
        let v = json!({"type": "join", "room": room, key: bad});
        let e = parse_client_frame(&v.to_string()).unwrap_err();
        prop_assert_eq!(e.code, ErrorCode::InvalidFrame);
        prop_assert_eq!(e.room.as_deref(), Some(room.as_str()));
    }

    #[test]
    fn history_cursors_must_be_integers_from_one(
        room in room(),
        key in proptest::sample::select(vec!["before", "limit"]),
        bad in prop_oneof![Just(json!(0)), not_uint()],
    ) {
        let v = json!({"type": "history", "room": room, key: bad});
        let e = parse_client_frame(&v.to_string()).unwrap_err();
        prop_assert_eq!(e.code, ErrorCode::InvalidCursor);
        prop_assert_eq!(e.room.as_deref(), Some(room.as_str()));
    }

    #[test]
    fn bad_ref_is_invalid_frame_and_echoed(
        room in room(),
        r in prop_oneof![
            Just(String::new()),
            proptest::collection::vec(any::<char>(), MAX_REF_CHARS + 1..=MAX_REF_CHARS + 20)
                .prop_map(String::from_iter),
            (client_ref(), client_ref()).prop_map(|(a, b)| {
                let mut s: String = a.chars().take(31).collect();
                s.push('\0');
                s.extend(b.chars().take(31));
                s
            }),
        ],
    ) {
        let v = json!({"type": "send", "room": room, "content": "hi", "ref": r});
        let e = parse_client_frame(&v.to_string()).unwrap_err();
        prop_assert_eq!(e.code, ErrorCode::InvalidFrame);
        prop_assert_eq!(e.client_ref.as_deref(), Some(r.as_str()));
        prop_assert_eq!(e.room.as_deref(), Some(room.as_str()));
    }

    #[test]
    fn send_needs_string_content(
        room in room(),
        content in proptest::option::of(json_value().prop_filter("not a string", |v| !v.is_string())),
    ) {
        let mut v = json!({"type": "send", "room": room, "ref": "c-1"});
        if let Some(c) = content {
            v["content"] = c;
        }
        let e = parse_client_frame(&v.to_string()).unwrap_err();
        prop_assert_eq!(e.code, ErrorCode::InvalidFrame);
        prop_assert_eq!(e.client_ref.as_deref(), Some("c-1"));
    }
}

// ------------------------------------------------------- validator properties

proptest! {
    #![proptest_config(Config { cases: 1024, ..Config::default() })]

    #[test]
    fn room_rule(good in room(), bad in bad_room(), any_text in any::<String>()) {
        prop_assert!(is_valid_room(&good));
        prop_assert!(check_room(&good).is_ok());
        prop_assert!(!is_valid_room(&bad));
        prop_assert_eq!(check_room(&bad).unwrap_err().code, ErrorCode::InvalidRoom);
        let rule = (1..=64).contains(&any_text.chars().count()) && any_text.chars().all(is_room_char);
        prop_assert_eq!(is_valid_room(&any_text), rule);
    }

    #[test]
    fn whitespace_only_content_is_empty_message(ws in whitespace_string(40), max in 1usize..3000) {
        prop_assert_eq!(check_content(&ws, max).unwrap_err().code, ErrorCode::EmptyMessage);
    }

    /// Length counts code points (not bytes or UTF-16 units), whitespace included,
    /// and content with one non-whitespace character is not empty.
    #[test]
    fn content_length_is_in_code_points(
        lead in whitespace_string(5),
        body in proptest::collection::vec(prop_oneof![visible_char(), whitespace()], 0..30),
        core in visible_char(),
        trail in whitespace_string(5),
        max in 1usize..80,
    ) {
        let content: String = lead.chars().chain(body).chain([core]).chain(trail.chars()).collect();
        let n = content.chars().count();
        let result = check_content(&content, max);
        if n <= max {
            prop_assert!(result.is_ok(), "{} code points, max {}: {:?}", n, max, result);
        } else {
            prop_assert_eq!(result.unwrap_err().code, ErrorCode::MessageTooLong);
        }
    }

    #[test]
    fn content_with_nul_is_refused(a in any::<String>(), b in any::<String>(), max in 1usize..3000) {
        let content = format!("{a}\0{b}");
        prop_assert_eq!(check_content(&content, max).unwrap_err().code, ErrorCode::InvalidFrame);
    }

    #[test]
    fn valid_display_names_are_trimmed(
        lead in whitespace_string(4),
        first in visible_char(),
        rest in proptest::collection::vec(
            prop_oneof![4 => visible_char(), 1 => invisible_but_allowed_char()],
            0..MAX_NAME_CHARS,
        ),
        trail in whitespace_string(4),
    ) {
        // Whitespace inside is kept; only the ends are trimmed.
        let mut core: String = std::iter::once(first).chain(rest).collect();
        while core.ends_with(|c: char| c.is_whitespace()) {
            core.pop();
        }
        let name = check_display_name(&format!("{lead}{core}{trail}")).unwrap();
        prop_assert_eq!(&name, &core);
        prop_assert_eq!(check_display_name(&name).unwrap(), name);
    }

    #[test]
    fn bad_display_names_are_invalid_name(
        name in prop_oneof![
            whitespace_string(6),
            proptest::collection::vec(visible_char(), MAX_NAME_CHARS + 1..=MAX_NAME_CHARS + 10)
                .prop_map(String::from_iter),
            (visible_char(), control_char(), visible_char())
                .prop_map(|(a, c, b)| format!("{a}{c}{b}")),
        ],
    ) {
        prop_assert_eq!(check_display_name(&name).unwrap_err().code, ErrorCode::InvalidName);
    }

    #[test]
    fn cursor_params_are_integers_from_one(n in 1..=u64::MAX, junk in "[^0-9]{1,4}", neg in 1..=u64::MAX) {
        prop_assert_eq!(parse_cursor_param("before", &n.to_string()), Ok(n));
        for bad in [
            "0".to_string(),
            String::new(),
            format!("-{neg}"),
            format!("{n}{junk}"),
            format!("{junk}{n}").replace('+', "x"),
            format!("{n}.0"),
            format!("{}0", u64::MAX),
        ] {
            let e = parse_cursor_param("before", &bad).unwrap_err();
            prop_assert_eq!(e.code, ErrorCode::InvalidCursor, "{:?}", bad);
        }
    }
}

// ---------------------------------------------------------- paging properties

/// An in-memory [`Store`] that answers `page` exactly as the trait documents it,
/// so paging can be checked without a database.
#[derive(Default)]
struct MemStore {
    rooms: Mutex<BTreeMap<String, BTreeMap<u64, ChatMessage>>>,
}

#[async_trait]
impl Store for MemStore {
    async fn insert_batch(&self, batch: Vec<Arc<ChatMessage>>) -> Result<(), StoreError> {
        let mut rooms = self.rooms.lock().unwrap();
        for m in batch {
            rooms
                .entry(m.room.clone())
                .or_default()
                .insert(m.seq, (*m).clone());
        }
        Ok(())
    }
    async fn last_seq(&self, room: &str) -> Result<u64, StoreError> {
        let rooms = self.rooms.lock().unwrap();
        Ok(rooms
            .get(room)
            .and_then(|r| r.keys().next_back().copied())
            .unwrap_or(0))
    }
    async fn range(
        &self,
        room: &str,
        after: u64,
        upto: u64,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let rooms = self.rooms.lock().unwrap();
        Ok(rooms
            .get(room)
            .map(|r| {
                r.range(after.saturating_add(1)..=upto)
                    .map(|(_, m)| m.clone())
                    .collect()
            })
            .unwrap_or_default())
    }
    async fn page(
        &self,
        room: &str,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<ChatMessage>, StoreError> {
        let rooms = self.rooms.lock().unwrap();
        let Some(r) = rooms.get(room) else {
            return Ok(Vec::new());
        };
        let mut rows: Vec<ChatMessage> = r
            .range(..before.unwrap_or(u64::MAX))
            .rev()
            .take(limit as usize)
            .map(|(_, m)| m.clone())
            .collect();
        rows.reverse();
        Ok(rows)
    }
    async fn targets(
        &self,
        _room: &str,
        _ids: Vec<String>,
        _users: Vec<String>,
    ) -> Result<Vec<confab::changes::TargetState>, StoreError> {
        Ok(Vec::new())
    }
    async fn rooms(&self) -> Result<Vec<RoomSummary>, StoreError> {
        Ok(Vec::new())
    }
    async fn recent_refs(&self, _since_ms: i64) -> Result<Vec<RecentRef>, StoreError> {
        Ok(Vec::new())
    }
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Rooms, members and markers are not part of what these properties check.
    async fn raw_query(
        &self,
        _: &'static str,
        _: Vec<confab::store::Param>,
    ) -> Result<Vec<confab::store::Row>, StoreError> {
        Ok(Vec::new())
    }

    async fn raw_exec(&self, steps: Vec<confab::store::Apply>) -> Result<Vec<usize>, StoreError> {
        Ok(vec![0; steps.len()])
    }
}

fn message(room: &str, seq: u64) -> Arc<ChatMessage> {
    Arc::new(ChatMessage {
        room: room.to_string(),
        seq,
        id: format!("id-{room}-{seq}"),
        user_id: "u-1".into(),
        user_name: "alice".into(),
        content: format!("message {seq}"),
        timestamp_ms: 1_795_428_000_000 + seq as i64,
        client_ref: None,
        ..ChatMessage::default()
    })
}

/// One paging scenario: the seqs a room holds (gaps allowed, as after retention
/// or a persist lag), the page sizes a client asks for, and new messages that
/// arrive while it pages.
#[derive(Debug, Clone)]
struct Scenario {
    seqs: BTreeSet<u64>,
    page_max: u32,
    limits: Vec<Option<u32>>,
    start_before: Option<u64>,
    arrivals_per_page: u64,
}

fn scenario(max_seq: u64) -> impl Strategy<Value = Scenario> {
    (
        prop_oneof![
            // Every seq from 1 (the normal case) …
            (0..=max_seq).prop_map(|n| (1..=n).collect::<BTreeSet<u64>>()),
            // … or any subset (old messages removed, holes).
            proptest::collection::btree_set(1..=max_seq, 0..=max_seq as usize / 2),
        ],
        1u32..=100,
        proptest::collection::vec(proptest::option::of(1u32..=150), 1..8),
        prop_oneof![
            3 => Just(None),
            1 => (1..=max_seq + 10).prop_map(Some),
            1 => Just(Some(u64::MAX)),
        ],
        0u64..3,
    )
        .prop_map(
            |(seqs, page_max, limits, start_before, arrivals_per_page)| Scenario {
                seqs,
                page_max,
                limits,
                start_before,
                arrivals_per_page,
            },
        )
}

/// Pages back through `room` from `start_before` until `next_before` is null,
/// checking each page against the protocol: the newest `limit` messages with
/// `seq < before`, oldest first, `next_before` = the page's oldest seq when an
/// older message exists. Every message that existed below the first cursor is
/// visited exactly once, pages come newest-first, and messages that arrive
/// meanwhile neither appear nor shift the pages.
async fn check_paging(store: &SharedStore, room: &str, s: &Scenario) {
    let batch: Vec<_> = s.seqs.iter().map(|&seq| message(room, seq)).collect();
    if !batch.is_empty() {
        store.insert_batch(batch).await.unwrap();
    }
    // A neighbour room with more messages must not leak into the pages.
    let neighbour = format!("{room}.x");
    let noise: Vec<_> = (1..=s.seqs.len() as u64 + 3)
        .map(|seq| message(&neighbour, seq))
        .collect();
    store.insert_batch(noise).await.unwrap();

    let cursor_top = s.start_before.map_or(u64::MAX, |b| b - 1);
    let expected_all: Vec<u64> = s.seqs.range(..=cursor_top).rev().copied().collect();
    let mut next_new = s.seqs.last().copied().unwrap_or(0) + 1;

    let mut before = s.start_before;
    let mut visited: Vec<u64> = Vec::new();
    for n in 0.. {
        assert!(n <= s.seqs.len(), "paging did not end: {s:?}");
        let limit = s.limits[n % s.limits.len()];
        let (page, next) = history::page(store, room, before, limit, s.page_max)
            .await
            .unwrap();
        let effective = limit.unwrap_or(history::DEFAULT_PAGE).clamp(1, s.page_max) as usize;

        let seqs: Vec<u64> = page.iter().map(|m| m.seq).collect();
        let remaining = &expected_all[visited.len()..];
        let mut expected: Vec<u64> = remaining.iter().take(effective).copied().collect();
        expected.reverse();
        assert_eq!(
            seqs, expected,
            "page {n} (before {before:?}, limit {limit:?}) of {s:?}"
        );
        assert!(page
            .iter()
            .all(|m| m.room == room && m.id == format!("id-{room}-{}", m.seq)));
        let older_exists = remaining.len() > effective;
        assert_eq!(
            next,
            if older_exists {
                seqs.first().copied()
            } else {
                None
            }
        );

        visited.extend(seqs.iter().rev());

        // New messages arrive between two page requests.
        if s.arrivals_per_page > 0 {
            let fresh: Vec<_> = (next_new..next_new + s.arrivals_per_page)
                .map(|seq| message(room, seq))
                .collect();
            next_new += s.arrivals_per_page;
            store.insert_batch(fresh).await.unwrap();
        }

        match next {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    // Newest-first across pages, each seq exactly once.
    assert_eq!(visited, expected_all);
}

#[test]
fn paging_visits_every_message_once_in_memory() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let rooms = AtomicU64::new(0);
    proptest!(Config { cases: 256, ..Config::default() }, |(s in scenario(300))| {
        let store: SharedStore = Arc::new(MemStore::default());
        let room = format!("r{}", rooms.fetch_add(1, Ordering::Relaxed));
        rt.block_on(check_paging(&store, &room, &s));
    });
}

/// The same property against the real embedded store (SQLite in a temp dir),
/// one fresh room per case.
#[test]
fn paging_visits_every_message_once_in_sqlite() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: SharedStore = rt
        .block_on(SqliteStore::open(&dir.path().join("confab.db"), 2))
        .map(Arc::new)
        .unwrap();
    let rooms = AtomicU64::new(0);
    proptest!(Config { cases: 48, ..Config::default() }, |(s in scenario(200))| {
        let room = format!("r{}", rooms.fetch_add(1, Ordering::Relaxed));
        rt.block_on(check_paging(&store, &room, &s));
    });
}

//! Fuzzes the `/ws` client-frame parser and the public validators with
//! arbitrary bytes, and checks the invariants the rest of the server relies on.
//!
//! Run with `cargo +nightly fuzz run client_frame` from the repository root
//! (see docs/fuzzing.md).

#![no_main]

use confab::protocol::{
    check_content, check_display_name, check_room, is_valid_room, parse_client_frame,
    parse_cursor_param, Change, ClientFrame, ErrorCode, Rejection, MAX_JOIN_HISTORY, MAX_NAME_CHARS,
    MAX_REF_CHARS, MAX_ROOM_LEN,
};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};

fuzz_target!(|data: &[u8]| {
    // The server only ever sees valid UTF-8 text frames (anything else is closed
    // with 1007), but the lossy text still makes a useful input.
    let text = String::from_utf8_lossy(data);
    let text = text.as_ref();

    check_parse(text);
    check_validators(text);
});

/// `parse_client_frame`: never panics, and what it returns is consistent with
/// the JSON it was given.
fn check_parse(text: &str) {
    let parsed = parse_client_frame(text);
    let value: Option<Value> = serde_json::from_str(text).ok();

    match (&parsed, &value) {
        (Err(r), None) => {
            // Not JSON: `invalid_json`, and nothing can be echoed.
            assert_eq!(r.code, ErrorCode::InvalidJson, "{text:?}");
            assert_eq!(r.client_ref, None);
            assert_eq!(r.room, None);
            check_error_frame(r);
        }
        (Ok(_), None) => panic!("accepted a frame that is not JSON: {text:?}"),
        (Err(r), Some(v)) => {
            assert_ne!(r.code, ErrorCode::InvalidJson, "{text:?}");
            assert!(
                matches!(
                    r.code,
                    ErrorCode::InvalidFrame | ErrorCode::InvalidRoom | ErrorCode::InvalidCursor
                ),
                "unexpected code {:?} for {text:?}",
                r.code
            );
            // The error echoes `ref` and `room` when the frame carried them as strings.
            let obj = v.as_object();
            let field = |k: &str| obj.and_then(|o| o.get(k)).and_then(Value::as_str);
            assert_eq!(r.client_ref.as_deref(), field("ref"), "{text:?}");
            assert_eq!(r.room.as_deref(), field("room"), "{text:?}");
            if r.code == ErrorCode::InvalidRoom {
                let room = field("room").expect("invalid_room without a room");
                assert!(!is_valid_room(room));
            }
            check_error_frame(r);
        }
        (Ok(frame), Some(v)) => {
            let obj = v
                .as_object()
                .expect("accepted a frame that is not an object");
            check_frame(frame, obj);
            // A frame written back out in canonical form parses to the same frame.
            let again = parse_client_frame(&to_wire(frame).to_string())
                .unwrap_or_else(|e| panic!("re-encoded {frame:?} was refused: {e:?}"));
            assert_eq!(&again, frame);
        }
    }
}

fn check_frame(frame: &ClientFrame, obj: &Map<String, Value>) {
    let kind = obj.get("type").and_then(Value::as_str);
    let room_field = obj.get("room").and_then(Value::as_str);
    let uint = |k: &str| obj.get(k).and_then(Value::as_u64);
    match frame {
        ClientFrame::Ping => assert_eq!(kind, Some("ping")),
        ClientFrame::Join {
            room,
            history,
            since,
        } => {
            assert_eq!(kind, Some("join"));
            assert_valid_room(room, room_field);
            assert!(history.is_none_or(|h| h <= MAX_JOIN_HISTORY));
            assert_eq!(
                *history,
                uint("history").map(|h| h.min(u64::from(MAX_JOIN_HISTORY)) as u32)
            );
            assert_eq!(*since, uint("since"));
        }
        ClientFrame::Leave { room } => {
            assert_eq!(kind, Some("leave"));
            assert_valid_room(room, room_field);
        }
        ClientFrame::Typing { room } => {
            assert_eq!(kind, Some("typing"));
            assert_valid_room(room, room_field);
        }
        ClientFrame::Change { room, change, .. } => {
            assert!(matches!(kind, Some("edit" | "delete" | "react" | "unreact")));
            assert_valid_room(room, room_field);
            let target = change.target();
            assert!(!target.is_empty() && target.chars().count() <= 64 && !target.contains('\0'));
            assert_eq!(Some(target), obj.get("id").and_then(Value::as_str));
        }
        ClientFrame::Send {
            room,
            content,
            client_ref,
            ..
        } => {
            assert_eq!(kind, Some("send"));
            assert_valid_room(room, room_field);
            // Content is passed through untouched; its rules (length, whitespace,
            // NUL) are `check_content`'s job, which the session runs next.
            assert_eq!(
                Some(content.as_str()),
                obj.get("content").and_then(Value::as_str)
            );
            if let Some(r) = client_ref {
                let n = r.chars().count();
                assert!((1..=MAX_REF_CHARS).contains(&n), "ref {r:?}");
                assert!(!r.contains('\0'), "ref with NUL {r:?}");
                assert_eq!(Some(r.as_str()), obj.get("ref").and_then(Value::as_str));
            } else {
                assert!(obj.get("ref").is_none_or(Value::is_null));
            }
        }
        ClientFrame::History {
            room,
            before,
            limit,
        } => {
            assert_eq!(kind, Some("history"));
            assert_valid_room(room, room_field);
            assert!(before.is_none_or(|b| b >= 1));
            assert!(limit.is_none_or(|l| l >= 1));
            assert_eq!(*before, uint("before"));
            assert_eq!(
                *limit,
                uint("limit").map(|l| l.min(u64::from(u32::MAX)) as u32)
            );
        }
    }
}

fn assert_valid_room(room: &str, from_json: Option<&str>) {
    assert!(is_valid_room(room), "accepted room {room:?}");
    assert!(check_room(room).is_ok());
    assert_eq!(Some(room), from_json);
}

/// The error frame sent back is valid JSON and carries exactly what the
/// rejection holds.
fn check_error_frame(r: &Rejection) {
    let frame: Value = serde_json::from_str(&r.to_v1_frame()).expect("error frame is JSON");
    assert_eq!(frame["type"], "error");
    assert_eq!(frame["code"], r.code.as_str());
    assert_eq!(
        frame.get("ref").and_then(Value::as_str),
        r.client_ref.as_deref()
    );
    assert_eq!(frame.get("room").and_then(Value::as_str), r.room.as_deref());
    let seed: Value = serde_json::from_str(&r.to_seed_frame()).expect("seed error is JSON");
    assert_eq!(seed["code"], r.code.as_str());
    let http: Value = serde_json::from_str(&r.to_http_body()).expect("http error is JSON");
    assert_eq!(http["error"]["code"], r.code.as_str());
}

/// The canonical wire form of a frame, as docs/protocol.md writes it.
fn to_wire(frame: &ClientFrame) -> Value {
    let mut v = match frame {
        ClientFrame::Ping => json!({"type": "ping"}),
        ClientFrame::Join {
            room,
            history,
            since,
        } => json!({"type": "join", "room": room, "history": history, "since": since}),
        ClientFrame::Leave { room } => json!({"type": "leave", "room": room}),
        ClientFrame::Typing { room } => json!({"type": "typing", "room": room}),
        ClientFrame::Send {
            room,
            content,
            client_ref,
            reply_to,
        } => {
            json!({"type": "send", "room": room, "content": content, "ref": client_ref, "reply_to": reply_to})
        }
        ClientFrame::Change {
            room,
            change,
            client_ref,
        } => match change {
            Change::Edit { target, content } => json!({"type": "edit", "room": room, "id": target, "content": content, "ref": client_ref}),
            Change::Delete { target } => json!({"type": "delete", "room": room, "id": target, "ref": client_ref}),
            Change::React { target, emoji } => json!({"type": "react", "room": room, "id": target, "emoji": emoji, "ref": client_ref}),
            Change::Unreact { target, emoji } => json!({"type": "unreact", "room": room, "id": target, "emoji": emoji, "ref": client_ref}),
        },
        ClientFrame::History {
            room,
            before,
            limit,
        } => json!({"type": "history", "room": room, "before": before, "limit": limit}),
    };
    // Absent and null are the same for optional fields; drop the nulls.
    if let Value::Object(obj) = &mut v {
        obj.retain(|_, v| !v.is_null());
    }
    v
}

/// The validators agree with the rules written in the protocol.
fn check_validators(text: &str) {
    // Room: ^[A-Za-z0-9_.:-]{1,64}$
    let room_rule = (1..=MAX_ROOM_LEN).contains(&text.chars().count())
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c));
    assert_eq!(is_valid_room(text), room_rule, "{text:?}");
    assert_eq!(check_room(text).is_ok(), room_rule);
    if let Err(e) = check_room(text) {
        assert_eq!(e.code, ErrorCode::InvalidRoom);
    }

    // Display name: 1-32 characters after trimming, no control characters.
    let trimmed = text.trim();
    let name_rule = (1..=MAX_NAME_CHARS).contains(&trimmed.chars().count())
        && !trimmed.chars().any(char::is_control);
    match check_display_name(text) {
        Ok(name) => {
            assert!(name_rule, "{text:?}");
            assert_eq!(name, trimmed);
            // Idempotent: a checked name passes again unchanged.
            assert_eq!(
                check_display_name(&name).ok().as_deref(),
                Some(name.as_str())
            );
        }
        Err(e) => {
            assert!(!name_rule, "{text:?}");
            assert_eq!(e.code, ErrorCode::InvalidName);
        }
    }

    // Content: no NUL, some non-whitespace, at most `max` code points.
    let chars = text.chars().count();
    for max in [1, 2, 7, 64, 2000] {
        let expected = if text.contains('\0') {
            Some(ErrorCode::InvalidFrame)
        } else if text.chars().all(char::is_whitespace) {
            Some(ErrorCode::EmptyMessage)
        } else if chars > max {
            Some(ErrorCode::MessageTooLong)
        } else {
            None
        };
        assert_eq!(
            check_content(text, max).err().map(|e| e.code),
            expected,
            "max {max}, {text:?}"
        );
    }

    // REST cursor parameters: integers >= 1. The whole input, and each line.
    for raw in std::iter::once(text).chain(text.lines()) {
        match parse_cursor_param("before", raw) {
            Ok(n) => {
                assert!(n >= 1);
                assert_eq!(raw.parse::<u64>().ok(), Some(n));
            }
            Err(e) => {
                assert_eq!(e.code, ErrorCode::InvalidCursor);
                assert!(!matches!(raw.parse::<u64>(), Ok(n) if n >= 1), "{raw:?}");
            }
        }
    }
}

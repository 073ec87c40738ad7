//! The wire protocol v1 (see docs/protocol.md): client frames, server frames,
//! error codes and the validation rules, in one place.

mod client;
mod names;
mod server;

pub use client::*;
pub use names::*;
pub use server::*;

use serde::Serialize;

/// Every error code a client can be answered with, over WebSocket and HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidJson,
    InvalidFrame,
    InvalidRoom,
    InvalidName,
    EmptyMessage,
    MessageTooLong,
    ProhibitedContent,
    Spam,
    RateLimited,
    NotJoined,
    ForbiddenRoom,
    InvalidCursor,
    Unauthorized,
    Forbidden,
    TooManyConnections,
    /// Over `limits.rooms_per_connection` or `limits.rooms_per_instance`.
    TooManyRooms,
    Unavailable,
    NotFound,
    /// A change or reply for a deleted message.
    MessageDeleted,
    /// A reaction that is not one grapheme cluster or a `:shortcode:`.
    InvalidEmoji,
    /// A reaction that would give a message more than [`MAX_EMOJI_PER_MESSAGE`] emoji.
    TooManyReactions,
    /// A stats `window` other than 1h, 24h or 7d.
    InvalidWindow,
    /// An HTTP request that took longer than `server.request_timeout_secs`.
    RequestTimeout,
    /// An HTTP request body over the size the endpoint takes.
    PayloadTooLarge,
    /// An HTTP request head over the parser's limit.
    HeadersTooLarge,
    /// An HTTP request the parser could not read.
    BadRequest,
    /// A post while muted in the room.
    Muted,
    /// Creating a room whose name is taken.
    RoomExists,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidFrame => "invalid_frame",
            ErrorCode::InvalidRoom => "invalid_room",
            ErrorCode::InvalidName => "invalid_name",
            ErrorCode::EmptyMessage => "empty_message",
            ErrorCode::MessageTooLong => "message_too_long",
            ErrorCode::ProhibitedContent => "prohibited_content",
            ErrorCode::Spam => "spam",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::ForbiddenRoom => "forbidden_room",
            ErrorCode::InvalidCursor => "invalid_cursor",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MessageDeleted => "message_deleted",
            ErrorCode::InvalidEmoji => "invalid_emoji",
            ErrorCode::TooManyReactions => "too_many_reactions",
            ErrorCode::InvalidWindow => "invalid_window",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::HeadersTooLarge => "headers_too_large",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Muted => "muted",
            ErrorCode::RoomExists => "room_exists",
        }
    }

    /// The HTTP status that goes with the code on REST endpoints.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden | ErrorCode::ForbiddenRoom | ErrorCode::Muted => 403,
            ErrorCode::RoomExists => 409,
            ErrorCode::NotFound => 404,
            ErrorCode::RequestTimeout => 408,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::HeadersTooLarge => 431,
            ErrorCode::RateLimited | ErrorCode::TooManyConnections | ErrorCode::TooManyRooms => 429,
            ErrorCode::Unavailable => 503,
            _ => 400,
        }
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// An error answer, with the context the protocol asks us to echo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: ErrorCode,
    pub message: String,
    pub client_ref: Option<String>,
    pub room: Option<String>,
    pub retry_after_ms: Option<u64>,
}

impl Rejection {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            client_ref: None,
            room: None,
            retry_after_ms: None,
        }
    }

    pub fn in_room(mut self, room: Option<&str>) -> Self {
        if self.room.is_none() {
            self.room = room.map(str::to_string);
        }
        self
    }

    pub fn with_ref(mut self, client_ref: Option<&str>) -> Self {
        if self.client_ref.is_none() {
            self.client_ref = client_ref.map(str::to_string);
        }
        self
    }

    /// `{"type":"error",...}` for `/ws`.
    pub fn to_v1_frame(&self) -> String {
        #[derive(Serialize)]
        struct Frame<'a> {
            r#type: &'static str,
            code: ErrorCode,
            message: &'a str,
            #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
            client_ref: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            room: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            retry_after_ms: Option<u64>,
        }
        to_json(&Frame {
            r#type: "error",
            code: self.code,
            message: &self.message,
            client_ref: self.client_ref.as_deref(),
            room: self.room.as_deref(),
            retry_after_ms: self.retry_after_ms,
        })
    }

    /// `{"error":"…","code":"…"}` for the seed-compatible endpoint.
    pub fn to_seed_frame(&self) -> String {
        to_json(&serde_json::json!({"error": self.message, "code": self.code}))
    }

    /// `{"error":{"code":…,"message":…}}` for HTTP bodies.
    pub fn to_http_body(&self) -> String {
        let mut error = serde_json::json!({"code": self.code, "message": self.message});
        if let Some(ms) = self.retry_after_ms {
            error["retry_after_ms"] = ms.into();
        }
        to_json(&serde_json::json!({ "error": error }))
    }
}

/// `code: message`, for logs and `actix_web::ResponseError` (src/http/errors.rs).
impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

pub(crate) fn to_json<T: Serialize>(value: &T) -> String {
    // Serializing our own plain structs cannot fail; fall back to a valid frame anyway.
    serde_json::to_string(value).unwrap_or_else(|_| {
        r#"{"type":"error","code":"unavailable","message":"internal encoding error"}"#.into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::ChatMessage;
    use serde_json::Value;

    fn err(text: &str) -> Rejection {
        parse_client_frame(text).unwrap_err()
    }

    #[test]
    fn room_names() {
        assert!(is_valid_room("general"));
        assert!(is_valid_room("a.b:c_d-1"));
        assert!(is_valid_room(&"x".repeat(64)));
        assert!(!is_valid_room(&"x".repeat(65)));
        assert!(!is_valid_room(""));
        assert!(!is_valid_room("has space"));
        assert!(!is_valid_room("é"));
    }

    #[test]
    fn content_rules() {
        assert_eq!(
            check_content(" \n\t\u{3000}", 10).unwrap_err().code,
            ErrorCode::EmptyMessage
        );
        assert!(check_content(" hi ", 10).is_ok());
        assert!(check_content(&"😀".repeat(10), 10).is_ok());
        assert_eq!(
            check_content(&"😀".repeat(11), 10).unwrap_err().code,
            ErrorCode::MessageTooLong
        );
    }

    #[test]
    fn names() {
        assert_eq!(check_display_name("  alice ").unwrap(), "alice");
        assert!(check_display_name("   ").is_err());
        assert!(check_display_name("a\u{7}b").is_err());
        assert!(check_display_name(&"n".repeat(33)).is_err());
    }

    #[test]
    fn names_without_a_visible_character_are_refused() {
        for name in [
            "\u{200B}",
            "\u{200B}\u{200B}\u{200B}",
            "\u{FEFF}",
            "\u{2800}",
            "\u{3164}",
            "\u{115F}\u{1160}",
            "\u{0301}",
            "\u{200D}",
            "\u{FE0F}",
            "\u{E0041}\u{E0042}",
            " \u{00AD} ",
        ] {
            assert!(check_display_name(name).is_err(), "{name:?}");
        }
    }

    #[test]
    fn names_with_bidi_or_invisible_characters_are_refused() {
        for name in [
            "alice\u{202E}",
            "\u{202E}ecila",
            "ali\u{200B}ce",
            "\u{FEFF}alice",
            "alice\u{200E}",
            "alice\u{200F}",
            "\u{061C}alice",
            "\u{202A}alice\u{202C}",
            "\u{2066}alice\u{2069}",
            "\u{2067}alice",
            "\u{2068}alice",
            "alice\u{E0001}",
            "alice\u{E0061}\u{E007F}",
            "al\u{00AD}ice",
            "ali\u{200C}ce",
            "ali\u{2060}ce",
            "al\u{034F}ice",
            "ali\u{180E}ce",
            "\u{0600}1",
            "a\u{FFF9}b",
            "alice\u{2028}bob",
            "a\u{2029}b",
            "a\u{E0100}",
        ] {
            assert!(check_display_name(name).is_err(), "{name:?}");
        }
    }

    #[test]
    fn zwj_and_variation_selectors_only_inside_emoji_like_sequences() {
        for name in [
            "👩\u{200D}💻",
            "alice 👩🏽\u{200D}💻",
            "🏳\u{FE0F}\u{200D}🌈",
            "❤\u{FE0F}",
            "I ❤\u{FE0F} rust",
            "1\u{FE0F}\u{20E3}",
            "क्\u{200D}ष",
            "José",
            "e\u{0301}",
            "Zoë",
            "李小龍",
            "Mary Ann",
            "\u{2800}x",
        ] {
            assert!(check_display_name(name).is_ok(), "{name:?}");
        }
        for name in [
            "\u{200D}alice",
            "alice\u{200D}",
            "ali\u{200D}\u{200D}ce",
            "ali\u{200D} ce",
            "\u{FE0F}alice",
            "ali \u{FE0F}ce",
            "👩\u{FE0F}\u{FE0F}",
        ] {
            assert!(check_display_name(name).is_err(), "{name:?}");
        }
    }

    #[test]
    fn query_names_decode_strictly() {
        let name = |q: &str| display_name_from_query(q).map(|r| r.map_err(|e| e.code));
        assert_eq!(name("history=3"), None);
        assert_eq!(name("name=carol"), Some(Ok("carol".into())));
        assert_eq!(name("name=Mary+Ann&x=1"), Some(Ok("Mary Ann".into())));
        assert_eq!(name("name=Zo%C3%AB"), Some(Ok("Zoë".into())));
        assert_eq!(name("name=a%2"), Some(Ok("a%2".into())));
        assert_eq!(name("name=a&name=b"), Some(Ok("b".into())));
        assert_eq!(name("%6Eame=c"), Some(Ok("c".into())));
        for bad in [
            "name=%FF%FE",
            "name=a%C3",
            "name=%E2%80%AE",
            "name=",
            "name",
        ] {
            assert_eq!(name(bad), Some(Err(ErrorCode::InvalidName)), "{bad}");
        }
    }

    #[test]
    fn parse_errors_echo_ref_and_room() {
        assert_eq!(err("{nope").code, ErrorCode::InvalidJson);
        assert_eq!(err("[1]").code, ErrorCode::InvalidFrame);
        let e = err(r#"{"type":"send","room":"r","ref":"c-1"}"#);
        assert_eq!(e.code, ErrorCode::InvalidFrame);
        assert_eq!(e.client_ref.as_deref(), Some("c-1"));
        assert_eq!(e.room.as_deref(), Some("r"));
        let e = err(r#"{"type":"send","room":"bad room","content":"x","ref":"c-2"}"#);
        assert_eq!(e.code, ErrorCode::InvalidRoom);
        assert_eq!(e.room.as_deref(), Some("bad room"));
        assert_eq!(err(r#"{"type":"dance"}"#).code, ErrorCode::InvalidFrame);
        assert_eq!(
            err(r#"{"type":"join","room":"r","since":-1}"#).code,
            ErrorCode::InvalidFrame
        );
        assert_eq!(
            err(r#"{"type":"history","room":"r","before":0}"#).code,
            ErrorCode::InvalidCursor
        );
        assert_eq!(
            err(r#"{"type":"history","room":"r","limit":"5"}"#).code,
            ErrorCode::InvalidCursor
        );
    }

    #[test]
    fn parse_frames() {
        assert_eq!(
            parse_client_frame(r#"{"type":"join","room":"g","history":500}"#).unwrap(),
            ClientFrame::Join {
                room: "g".into(),
                history: Some(100),
                since: None
            }
        );
        assert_eq!(
            parse_client_frame(r#"{"type":"send","room":"g","content":" hi ","ref":"c"}"#).unwrap(),
            ClientFrame::Send {
                room: "g".into(),
                content: " hi ".into(),
                client_ref: Some("c".into()),
                reply_to: None,
            }
        );
    }

    #[test]
    fn parse_changes_and_replies() {
        let change = |text: &str| match parse_client_frame(text) {
            Ok(ClientFrame::Change {
                change, client_ref, ..
            }) => (change, client_ref),
            other => panic!("{text}: {other:?}"),
        };
        assert_eq!(
            change(r#"{"type":"edit","room":"g","id":"m1","content":"x","ref":"c"}"#),
            (
                Change::Edit {
                    target: "m1".into(),
                    content: "x".into()
                },
                Some("c".into())
            )
        );
        assert_eq!(
            change(r#"{"type":"delete","room":"g","id":"m1"}"#).0,
            Change::Delete {
                target: "m1".into()
            }
        );
        assert_eq!(
            change(r#"{"type":"unreact","room":"g","id":"m1","emoji":"👍"}"#).0,
            Change::Unreact {
                target: "m1".into(),
                emoji: "👍".into()
            }
        );
        assert!(matches!(
            parse_client_frame(r#"{"type":"send","room":"g","content":"x","reply_to":"m1"}"#),
            Ok(ClientFrame::Send { reply_to: Some(r), .. }) if r == "m1"
        ));
        let long = "x".repeat(65);
        for bad in [
            r#"{"type":"edit","room":"g","content":"x"}"#.to_string(),
            r#"{"type":"edit","room":"g","id":"m1"}"#.to_string(),
            r#"{"type":"react","room":"g","id":"m1"}"#.to_string(),
            r#"{"type":"delete","room":"g","id":""}"#.to_string(),
            r#"{"type":"delete","room":"g","id":7}"#.to_string(),
            format!(r#"{{"type":"delete","room":"g","id":"{long}"}}"#),
            r#"{"type":"send","room":"g","content":"x","reply_to":5}"#.to_string(),
        ] {
            let e = parse_client_frame(&bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidFrame, "{bad}");
            assert_eq!(e.room.as_deref(), Some("g"));
        }
    }

    #[test]
    fn change_frames_carry_their_target() {
        let edit = ChatMessage {
            room: "g".into(),
            seq: 9,
            id: "e9".into(),
            user_id: "u-1".into(),
            user_name: "ann".into(),
            content: "new".into(),
            kind: crate::chat::Kind::Edit,
            target: Some("m1".into()),
            ..ChatMessage::default()
        };
        let f: Value = serde_json::from_str(&edit.frame_json()).unwrap();
        assert_eq!(
            (
                f["type"].as_str(),
                f["target"].as_str(),
                f["content"].as_str()
            ),
            (Some("edited"), Some("m1"), Some("new"))
        );
        assert!(
            edit.seed_frame_json().is_none(),
            "seed clients see messages only"
        );
        let react = ChatMessage {
            kind: crate::chat::Kind::Unreact,
            content: "👍".into(),
            ..edit.clone()
        };
        let f: Value = serde_json::from_str(&react.frame_json()).unwrap();
        assert_eq!(
            (
                f["type"].as_str(),
                f["emoji"].as_str(),
                f["added"].as_bool()
            ),
            (Some("reaction"), Some("👍"), Some(false))
        );
        assert!(f.get("content").is_none());
        let delete = ChatMessage {
            kind: crate::chat::Kind::Delete,
            content: String::new(),
            ..edit
        };
        let f: Value = serde_json::from_str(&delete.frame_json()).unwrap();
        assert_eq!(f["type"], "deleted");
        assert!(f.get("content").is_none());
        let ack: Value = serde_json::from_str(&delete.unchanged_ack_json(Some("r"))).unwrap();
        assert_eq!(ack["unchanged"], true);
        let ack: Value = serde_json::from_str(&delete.ack_json(Some("r"))).unwrap();
        assert!(ack.get("unchanged").is_none());
    }

    #[test]
    fn history_objects_show_state_only_when_it_applies() {
        let mut m = ChatMessage {
            room: "g".into(),
            seq: 1,
            id: "m1".into(),
            content: "hi".into(),
            ..ChatMessage::default()
        };
        let plain: Value = serde_json::from_str(&m.object_json()).unwrap();
        let frame: Value = serde_json::from_str(&m.frame_json()).unwrap();
        let mut frame = frame.as_object().unwrap().clone();
        frame.remove("type");
        assert_eq!(
            plain,
            Value::Object(frame),
            "a plain message's object is its frame"
        );
        m.reply_to = Some("m0".into());
        m.edited_at_ms = Some(1_795_428_000_000);
        m.reactions = vec![crate::chat::ReactionSummary {
            emoji: "👍".into(),
            count: 7,
            users: vec!["u-2".into()],
        }];
        let o: Value = serde_json::from_str(&m.object_json()).unwrap();
        assert_eq!(o["reply_to"], "m0");
        assert_eq!(o["edited_at"], "2026-11-23T10:00:00.000Z");
        assert_eq!(o["reactions"][0]["count"], 7);
        assert_eq!(o["reactions"][0]["users"][0], "u-2");
        let export: Value = serde_json::from_str(&m.export_json()).unwrap();
        assert!(
            export.get("reactions").is_none(),
            "exports rebuild reactions from entries"
        );
    }

    #[test]
    fn frames_are_valid_json_with_same_identity() {
        let m = ChatMessage {
            room: "g".into(),
            seq: 7,
            id: "0190".into(),
            user_id: "u-1".into(),
            user_name: "al\"ice".into(),
            content: "<b>hi</b>\n".into(),
            timestamp_ms: 1_795_428_000_123,
            ..ChatMessage::default()
        };
        let frame: Value = serde_json::from_str(&m.frame_json()).unwrap();
        let obj: Value = serde_json::from_str(&m.object_json()).unwrap();
        let ack: Value = serde_json::from_str(&m.ack_json(Some("r1"))).unwrap();
        assert_eq!(frame["type"], "message");
        assert_eq!(frame["content"], "<b>hi</b>\n");
        assert_eq!(frame["timestamp"], "2026-11-23T10:00:00.123Z");
        assert_eq!(obj.get("type"), None);
        assert_eq!(obj["seq"], frame["seq"]);
        assert_eq!(ack["timestamp"], frame["timestamp"]);
        assert_eq!(ack["id"], frame["id"]);
    }
}

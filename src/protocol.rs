//! The wire protocol v1 (see docs/protocol.md): client frames, server frames,
//! error codes and the validation rules, in one place.

use serde::Serialize;
use serde_json::{Map, Value};
use std::fmt::Write as _;

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
            ErrorCode::InvalidWindow => "invalid_window",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::HeadersTooLarge => "headers_too_large",
            ErrorCode::BadRequest => "bad_request",
        }
    }

    /// The HTTP status that goes with the code on REST endpoints.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden | ErrorCode::ForbiddenRoom => 403,
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

fn to_json<T: Serialize>(value: &T) -> String {
    // Serializing our own plain structs cannot fail; fall back to a valid frame anyway.
    serde_json::to_string(value).unwrap_or_else(|_| {
        r#"{"type":"error","code":"unavailable","message":"internal encoding error"}"#.into()
    })
}

// ---------------------------------------------------------------- validation

pub const MAX_ROOM_LEN: usize = 64;
pub const MAX_NAME_CHARS: usize = 32;
pub const MAX_REF_CHARS: usize = 64;
pub const MAX_JOIN_HISTORY: u32 = 100;

/// `^[A-Za-z0-9_.:-]{1,64}$`
pub fn is_valid_room(room: &str) -> bool {
    !room.is_empty()
        && room.len() <= MAX_ROOM_LEN
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

pub fn check_room(room: &str) -> Result<(), Rejection> {
    if is_valid_room(room) {
        Ok(())
    } else {
        Err(Rejection::new(
            ErrorCode::InvalidRoom,
            "room names are 1-64 characters of A-Z a-z 0-9 _ . : -",
        ))
    }
}

/// A display name: 1–32 characters after trimming, at least one of them
/// visible, and nothing invisible that could make it look empty, impersonate
/// another name or reorder the text around it (docs/protocol.md, "Names").
/// Returns the trimmed name.
pub fn check_display_name(name: &str) -> Result<String, Rejection> {
    let trimmed = name.trim();
    let chars = trimmed.chars().count();
    if chars == 0 || chars > MAX_NAME_CHARS || !name_chars_ok(trimmed) {
        return Err(Rejection::new(
            ErrorCode::InvalidName,
            "names are 1-32 characters, at least one visible, without control, \
             format or invisible characters",
        ));
    }
    Ok(trimmed.to_string())
}

/// How a character of a display name is judged.
#[derive(Clone, Copy, PartialEq, Eq)]
enum NameChar {
    /// A letter, number, punctuation, symbol or private-use character.
    Visible,
    /// A combining mark: fine, but it shows nothing by itself.
    Mark,
    /// Whitespace inside the name.
    Space,
    /// U+200D, allowed between two visible characters (emoji sequences).
    Joiner,
    /// U+FE00–U+FE0F, allowed right after a visible character (emoji style).
    Selector,
    /// Controls, format characters, default-ignorables, line separators.
    Refused,
}

fn classify_name_char(c: char) -> NameChar {
    use unicode_properties::{GeneralCategory as G, UnicodeGeneralCategory};
    match c {
        '\u{200D}' => return NameChar::Joiner,
        '\u{FE00}'..='\u{FE0F}' => return NameChar::Selector,
        // Line and paragraph separators break the line a name is shown on.
        '\u{2028}' | '\u{2029}' => return NameChar::Refused,
        // The Braille blank looks like a space but is not one: allowed,
        // but not as the visible part (the Hangul fillers are ignorable).
        '\u{2800}' => return NameChar::Mark,
        _ => {}
    }
    if c.is_control() || is_default_ignorable(c) {
        return NameChar::Refused;
    }
    if c.is_whitespace() {
        return NameChar::Space;
    }
    match c.general_category() {
        G::Format | G::Control | G::Surrogate => NameChar::Refused,
        G::NonspacingMark | G::SpacingMark | G::EnclosingMark => NameChar::Mark,
        // Not yet assigned: allowed, but it can't be the visible part.
        G::Unassigned => NameChar::Mark,
        _ => NameChar::Visible,
    }
}

/// The character rule of a display name: at least one visible character; no
/// control, format (bidi controls, BOM, tags, zero-width spaces…) or other
/// default-ignorable character, except a ZWJ between two visible characters
/// (a variation selector or mark may sit before it) and a variation selector right
/// after a visible character, so emoji sequences like 👩‍💻 and ❤️ stay valid.
fn name_chars_ok(name: &str) -> bool {
    let mut any_visible = false;
    let mut prev: Option<NameChar> = None;
    let mut chars = name.chars().map(classify_name_char).peekable();
    while let Some(class) = chars.next() {
        let ok = match class {
            NameChar::Visible => {
                any_visible = true;
                true
            }
            NameChar::Mark | NameChar::Space => true,
            NameChar::Selector => prev == Some(NameChar::Visible),
            // After a mark too: Indic scripts put ZWJ after a virama.
            NameChar::Joiner => {
                matches!(
                    prev,
                    Some(NameChar::Visible | NameChar::Selector | NameChar::Mark)
                ) && chars.peek() == Some(&NameChar::Visible)
            }
            NameChar::Refused => false,
        };
        if !ok {
            return false;
        }
        prev = Some(class);
    }
    any_visible
}

/// Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt): code
/// points that render as nothing when a font has no glyph for them — soft
/// hyphen, zero-width spaces and joiners, bidi controls, BOM, variation
/// selectors, tags, fillers. Used for names and for prohibited-word matching.
pub fn is_default_ignorable(c: char) -> bool {
    matches!(
        c as u32,
        0x00AD
            | 0x034F
            | 0x061C
            | 0x115F..=0x1160
            | 0x17B4..=0x17B5
            | 0x180B..=0x180F
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x206F
            | 0x3164
            | 0xFE00..=0xFE0F
            | 0xFEFF
            | 0xFFA0
            | 0xFFF0..=0xFFF8
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0000..=0xE0FFF
    )
}

/// The `name` parameter of a raw query string (the last one, as the other
/// parameters are read), checked as a display name. Percent-decoding is
/// strict: bytes that are not UTF-8 get `invalid_name` instead of turning
/// into U+FFFD, which would pass for a visible name nobody chose.
pub fn display_name_from_query(query: &str) -> Option<Result<String, Rejection>> {
    let raw = query
        .split('&')
        .rev()
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(key, _)| form_decode(key).as_deref() == Some("name"))
        .map(|(_, value)| value)?;
    Some(match form_decode(raw) {
        Some(name) => check_display_name(&name),
        None => Err(Rejection::new(
            ErrorCode::InvalidName,
            "the name is not valid UTF-8 once percent-decoded",
        )),
    })
}

/// `application/x-www-form-urlencoded` decoding ('+' is a space, `%XX` a
/// byte, a stray '%' stays), or `None` when the bytes are not UTF-8.
fn form_decode(s: &str) -> Option<String> {
    fn hex(b: Option<&u8>) -> Option<u8> {
        (*b? as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                if let (Some(high), Some(low)) = (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
                    out.push(high << 4 | low);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            _ => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Message content: some non-whitespace, at most `max_chars` code points, and
/// no U+0000 (Postgres text can't hold it, and both backends must agree).
pub fn check_content(content: &str, max_chars: usize) -> Result<(), Rejection> {
    if content.contains('\0') {
        return Err(Rejection::new(
            ErrorCode::InvalidFrame,
            "\"content\" must not contain the NUL character (U+0000)",
        ));
    }
    if !content.chars().any(|c| !c.is_whitespace()) {
        return Err(Rejection::new(
            ErrorCode::EmptyMessage,
            "a message needs at least one non-whitespace character",
        ));
    }
    // Byte length bounds the code point count from above: skip counting short ones.
    if content.len() > max_chars && content.chars().count() > max_chars {
        return Err(Rejection::new(
            ErrorCode::MessageTooLong,
            format!("a message is at most {max_chars} characters"),
        ));
    }
    Ok(())
}

// ------------------------------------------------------------ client frames

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    Join {
        room: String,
        history: Option<u32>,
        since: Option<u64>,
    },
    Leave {
        room: String,
    },
    Send {
        room: String,
        content: String,
        client_ref: Option<String>,
    },
    Typing {
        room: String,
    },
    History {
        room: String,
        before: Option<u64>,
        limit: Option<u32>,
    },
    Ping,
}

/// Parses and validates one text frame of `/ws`. Content rules that depend on
/// configuration (length) are checked by the caller; everything structural here.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, Rejection> {
    let value: Value = serde_json::from_str(text)
        .map_err(|_| Rejection::new(ErrorCode::InvalidJson, "the frame is not valid JSON"))?;
    let Value::Object(obj) = value else {
        return Err(Rejection::new(
            ErrorCode::InvalidFrame,
            "a frame is a JSON object with a \"type\"",
        ));
    };
    // Collect what we must echo before anything can fail.
    let client_ref = obj.get("ref").and_then(Value::as_str).map(str::to_string);
    let room_hint = obj.get("room").and_then(Value::as_str).map(str::to_string);
    parse_object(&obj).map_err(|r| {
        r.with_ref(client_ref.as_deref())
            .in_room(room_hint.as_deref())
    })
}

fn parse_object(obj: &Map<String, Value>) -> Result<ClientFrame, Rejection> {
    let kind = match obj.get("type") {
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(frame_error("\"type\" must be a string")),
        None => return Err(frame_error("missing \"type\"")),
    };
    match kind {
        "ping" => Ok(ClientFrame::Ping),
        "join" => {
            let room = room_field(obj)?;
            let history =
                opt_uint(obj, "history")?.map(|h| h.min(u64::from(MAX_JOIN_HISTORY)) as u32);
            let since = opt_uint(obj, "since")?;
            Ok(ClientFrame::Join {
                room,
                history,
                since,
            })
        }
        "leave" => Ok(ClientFrame::Leave {
            room: room_field(obj)?,
        }),
        "typing" => Ok(ClientFrame::Typing {
            room: room_field(obj)?,
        }),
        "send" => {
            let room = room_field(obj)?;
            let client_ref = match obj.get("ref") {
                None | Some(Value::Null) => None,
                Some(Value::String(r)) => {
                    let n = r.chars().count();
                    if n == 0 || n > MAX_REF_CHARS || r.contains('\0') {
                        return Err(frame_error(
                            "\"ref\" is a string of 1-64 characters (no NUL)",
                        ));
                    }
                    Some(r.clone())
                }
                Some(_) => return Err(frame_error("\"ref\" is a string of 1-64 characters")),
            };
            let content = match obj.get("content") {
                Some(Value::String(c)) => c.clone(),
                Some(_) => return Err(frame_error("\"content\" must be a string")),
                None => return Err(frame_error("missing \"content\"")),
            };
            Ok(ClientFrame::Send {
                room,
                content,
                client_ref,
            })
        }
        "history" => {
            let room = room_field(obj)?;
            let before = cursor_field(obj, "before")?;
            let limit = cursor_field(obj, "limit")?.map(|l| l.min(u64::from(u32::MAX)) as u32);
            Ok(ClientFrame::History {
                room,
                before,
                limit,
            })
        }
        other => Err(frame_error(format!("unknown frame type {other:?}"))),
    }
}

fn frame_error(message: impl Into<String>) -> Rejection {
    Rejection::new(ErrorCode::InvalidFrame, message)
}

fn room_field(obj: &Map<String, Value>) -> Result<String, Rejection> {
    match obj.get("room") {
        Some(Value::String(room)) => {
            check_room(room)?;
            Ok(room.clone())
        }
        Some(_) => Err(frame_error("\"room\" must be a string")),
        None => Err(frame_error("missing \"room\"")),
    }
}

/// An optional non-negative integer; present but anything else is `invalid_frame`.
fn opt_uint(obj: &Map<String, Value>, key: &str) -> Result<Option<u64>, Rejection> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| frame_error(format!("\"{key}\" must be a non-negative integer"))),
    }
}

/// History cursors: integers >= 1, else `invalid_cursor`.
fn cursor_field(obj: &Map<String, Value>, key: &str) -> Result<Option<u64>, Rejection> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 => Ok(Some(n)),
            _ => Err(Rejection::new(
                ErrorCode::InvalidCursor,
                format!("\"{key}\" must be an integer >= 1"),
            )),
        },
    }
}

/// Parses a REST cursor parameter (`before`, `limit`): an integer >= 1.
pub fn parse_cursor_param(key: &str, raw: &str) -> Result<u64, Rejection> {
    match raw.parse::<u64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(Rejection::new(
            ErrorCode::InvalidCursor,
            format!("{key} must be an integer >= 1"),
        )),
    }
}

// ------------------------------------------------------------ server frames

/// The message type moved to [`crate::chat`]; re-exported here until every
/// import names it there.
pub use crate::chat::ChatMessage;

/// A user as the protocol shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq, Hash)]
pub struct UserInfo {
    pub id: String,
    pub name: String,
}

/// The wire forms of a message: its history object, live frame, seed frame
/// and ack.
impl ChatMessage {
    pub fn timestamp(&self) -> String {
        format_timestamp(self.timestamp_ms)
    }

    /// The message object of history pages: `{"room",...,"timestamp"}`.
    pub fn object_json(&self) -> String {
        let mut out = String::with_capacity(128 + self.content.len());
        self.write_fields(&mut out);
        out.insert(0, '{');
        out.push('}');
        out
    }

    /// The live frame: the message object with `"type":"message"` first.
    pub fn frame_json(&self) -> String {
        let mut out = String::with_capacity(144 + self.content.len());
        out.push_str("{\"type\":\"message\",");
        self.write_fields(&mut out);
        out.push('}');
        out
    }

    fn write_fields(&self, out: &mut String) {
        let _ = write!(
            out,
            "\"room\":{},\"seq\":{},\"id\":{},\"user\":{},\"user_id\":{},\"content\":{},\"timestamp\":\"{}\"",
            json_str(&self.room),
            self.seq,
            json_str(&self.id),
            json_str(&self.user_name),
            json_str(&self.user_id),
            json_str(&self.content),
            self.timestamp()
        );
    }

    /// The seed-compatible frame.
    pub fn seed_frame_json(&self) -> String {
        to_json(&serde_json::json!({
            "client_id": self.user_id,
            "room_id": self.room,
            "message": self.content,
            "timestamp": self.timestamp(),
            "seq": self.seq,
            "id": self.id,
            "user": self.user_name,
        }))
    }

    /// The ack for the sender.
    pub fn ack_json(&self, client_ref: Option<&str>) -> String {
        #[derive(Serialize)]
        struct Ack<'a> {
            r#type: &'static str,
            #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
            client_ref: Option<&'a str>,
            room: &'a str,
            seq: u64,
            id: &'a str,
            timestamp: String,
        }
        to_json(&Ack {
            r#type: "ack",
            client_ref,
            room: &self.room,
            seq: self.seq,
            id: &self.id,
            timestamp: self.timestamp(),
        })
    }
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// RFC 3339 UTC with milliseconds: `2026-11-23T10:00:00.123Z`.
pub fn format_timestamp(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub fn welcome_json(session: &str, user: &UserInfo) -> String {
    to_json(&serde_json::json!({"type":"welcome","v":1,"session":session,"user":user}))
}

pub fn joined_json(
    room: &str,
    last_seq: u64,
    recovered: Option<bool>,
    members: &[&UserInfo],
) -> String {
    #[derive(Serialize)]
    struct Joined<'a> {
        r#type: &'static str,
        room: &'a str,
        last_seq: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        members: &'a [&'a UserInfo],
    }
    to_json(&Joined {
        r#type: "joined",
        room,
        last_seq,
        recovered,
        members,
    })
}

pub fn presence_json(room: &str, joined: &[&UserInfo], left: &[&UserInfo]) -> String {
    to_json(&serde_json::json!({"type":"presence","room":room,"joined":joined,"left":left}))
}

pub fn typing_json(room: &str, user: &UserInfo) -> String {
    to_json(&serde_json::json!({"type":"typing","room":room,"user":user.name,"user_id":user.id}))
}

pub fn left_json(room: &str) -> String {
    to_json(&serde_json::json!({"type":"left","room":room}))
}

pub const PONG_JSON: &str = r#"{"type":"pong"}"#;

/// A page of history as `{"room","messages":[…],"next_before"}`; `frame` adds `"type":"history"`.
pub fn history_json(
    room: &str,
    messages: &[ChatMessage],
    next_before: Option<u64>,
    frame: bool,
) -> String {
    let mut out = String::with_capacity(64 + messages.len() * 160);
    out.push('{');
    if frame {
        out.push_str("\"type\":\"history\",");
    }
    let _ = write!(out, "\"room\":{},\"messages\":[", json_str(room));
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&m.object_json());
    }
    out.push_str("],\"next_before\":");
    match next_before {
        Some(n) => {
            let _ = write!(out, "{n}");
        }
        None => out.push_str("null"),
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
                client_ref: Some("c".into())
            }
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
            client_ref: None,
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

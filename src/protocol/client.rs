//! Frames a client sends on `/ws`, parsed into [`ClientFrame`].

use super::{check_room, ErrorCode, Rejection, MAX_JOIN_HISTORY, MAX_REF_CHARS};
use serde_json::{Map, Value};

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

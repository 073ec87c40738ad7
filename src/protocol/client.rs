//! Frames a client sends on `/ws`, parsed into [`ClientFrame`].

use super::{check_room, ErrorCode, Rejection, MAX_JOIN_HISTORY, MAX_REF_CHARS};
use serde_json::{Map, Value};

/// What a change frame asks for, and of which message (`target`, its id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Edit { target: String, content: String },
    Delete { target: String },
    React { target: String, emoji: String },
    Unreact { target: String, emoji: String },
}

impl Change {
    pub fn target(&self) -> &str {
        match self {
            Change::Edit { target, .. }
            | Change::Delete { target }
            | Change::React { target, .. }
            | Change::Unreact { target, .. } => target,
        }
    }
}

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
        /// The message this one replies to.
        reply_to: Option<String>,
    },
    /// A change to a message: `edit`, `delete`, `react`, `unreact`.
    Change {
        room: String,
        change: Change,
        client_ref: Option<String>,
    },
    Typing {
        room: String,
    },
    /// The user has read `room` up to `seq`.
    Read {
        room: String,
        seq: u64,
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
        "read" => {
            let room = room_field(obj)?;
            let seq = opt_uint(obj, "seq")?.ok_or_else(|| frame_error("missing \"seq\""))?;
            Ok(ClientFrame::Read { room, seq })
        }
        "send" => {
            let room = room_field(obj)?;
            let client_ref = ref_field(obj)?;
            let content = string_field(obj, "content")?;
            let reply_to = match obj.get("reply_to") {
                None | Some(Value::Null) => None,
                Some(_) => Some(id_field(obj, "reply_to")?),
            };
            Ok(ClientFrame::Send {
                room,
                content,
                client_ref,
                reply_to,
            })
        }
        "edit" | "delete" | "react" | "unreact" => {
            let room = room_field(obj)?;
            let client_ref = ref_field(obj)?;
            let target = id_field(obj, "id")?;
            let change = match kind {
                "edit" => Change::Edit {
                    target,
                    content: string_field(obj, "content")?,
                },
                "delete" => Change::Delete { target },
                "react" => Change::React {
                    target,
                    emoji: string_field(obj, "emoji")?,
                },
                _ => Change::Unreact {
                    target,
                    emoji: string_field(obj, "emoji")?,
                },
            };
            Ok(ClientFrame::Change {
                room,
                change,
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

/// `ref`: optional, a string of 1-64 characters without NUL.
fn ref_field(obj: &Map<String, Value>) -> Result<Option<String>, Rejection> {
    match obj.get("ref") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(r)) => {
            let n = r.chars().count();
            if n == 0 || n > MAX_REF_CHARS || r.contains('\0') {
                return Err(frame_error(
                    "\"ref\" is a string of 1-64 characters (no NUL)",
                ));
            }
            Ok(Some(r.clone()))
        }
        Some(_) => Err(frame_error("\"ref\" is a string of 1-64 characters")),
    }
}

/// A required string field (its content is checked elsewhere).
fn string_field(obj: &Map<String, Value>, key: &str) -> Result<String, Rejection> {
    match obj.get(key) {
        Some(Value::String(c)) => Ok(c.clone()),
        Some(_) => Err(frame_error(format!("\"{key}\" must be a string"))),
        None => Err(frame_error(format!("missing \"{key}\""))),
    }
}

/// A message id: a string of 1-64 characters without NUL (ids are UUIDs;
/// anything else is simply not found).
fn id_field(obj: &Map<String, Value>, key: &str) -> Result<String, Rejection> {
    match obj.get(key) {
        Some(Value::String(id))
            if !id.is_empty() && id.chars().count() <= 64 && !id.contains('\0') =>
        {
            Ok(id.clone())
        }
        Some(_) => Err(frame_error(format!(
            "\"{key}\" is a message id: a string of 1-64 characters"
        ))),
        None => Err(frame_error(format!("missing \"{key}\""))),
    }
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

//! Frames the server sends: each built once as JSON text and shared by
//! every recipient.

use super::to_json;
use crate::chat::{ChatMessage, Kind};
use serde::Serialize;
use std::fmt::Write as _;

/// A user as the protocol shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq, Hash)]
pub struct UserInfo {
    pub id: String,
    pub name: String,
}

/// The wire forms of a log entry: its history object, live frame, seed frame
/// and ack.
impl ChatMessage {
    pub fn timestamp(&self) -> String {
        format_timestamp(self.timestamp_ms)
    }

    /// The message object of history pages: `{"room",...,"timestamp"}` and
    /// its current state (`reply_to`, `edited_at`, `deleted`, `reactions`),
    /// each only when it applies: a plain message's object is its live frame
    /// without `type`, as the contract says.
    pub fn object_json(&self) -> String {
        let mut out = String::with_capacity(160 + self.content.len());
        out.push('{');
        self.write_fields(&mut out);
        self.write_state(&mut out);
        if !self.reactions.is_empty() {
            out.push_str(",\"reactions\":[");
            for (i, r) in self.reactions.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(
                    out,
                    "{{\"emoji\":{},\"count\":{},\"users\":[",
                    json_str(&r.emoji),
                    r.count
                );
                for (j, user) in r.users.iter().enumerate() {
                    if j > 0 {
                        out.push(',');
                    }
                    out.push_str(&json_str(user));
                }
                out.push_str("]}");
            }
            out.push(']');
        }
        out.push('}');
        out
    }

    /// An entry as `confab export` writes it: a message as its history
    /// object without `reactions` (the reaction events rebuild them), a
    /// change as its live frame with `"kind"` in place of `"type"`.
    pub fn export_json(&self) -> String {
        let mut out = String::with_capacity(160 + self.content.len());
        out.push('{');
        if self.kind.is_membership() {
            // Its details as stored, so an import brings back the same event.
            let _ = write!(
                out,
                "\"kind\":\"{}\",\"room\":{},\"seq\":{},\"id\":{},",
                self.kind.as_str(),
                json_str(&self.room),
                self.seq,
                json_str(&self.id)
            );
            if let Some(target) = &self.target {
                let _ = write!(out, "\"target\":{},", json_str(target));
            }
            let _ = write!(
                out,
                "\"user\":{},\"user_id\":{},\"content\":{},\"timestamp\":\"{}\"}}",
                json_str(&self.user_name),
                json_str(&self.user_id),
                json_str(&self.content),
                self.timestamp()
            );
            return out;
        }
        if !self.is_message() {
            let _ = write!(out, "\"kind\":\"{}\",", self.kind.as_str());
        }
        self.write_fields(&mut out);
        self.write_state(&mut out);
        out.push('}');
        out
    }

    /// The live frame: `message`, `edited`, `deleted` or `reaction`.
    pub fn frame_json(&self) -> String {
        let mut out = String::with_capacity(160 + self.content.len());
        out.push_str(match self.kind {
            Kind::Message => "{\"type\":\"message\",",
            Kind::Edit => "{\"type\":\"edited\",",
            Kind::Delete => "{\"type\":\"deleted\",",
            Kind::React | Kind::Unreact => "{\"type\":\"reaction\",",
            Kind::RoomCreated => "{\"type\":\"room_created\",",
            Kind::MemberAdded => "{\"type\":\"member_added\",",
            Kind::MemberRemoved => "{\"type\":\"member_removed\",",
            Kind::MemberMuted => "{\"type\":\"member_muted\",",
            Kind::MemberUnbanned => "{\"type\":\"member_unbanned\",",
        });
        self.write_fields(&mut out);
        self.write_state(&mut out);
        out.push('}');
        out
    }

    /// The fields every entry has, then what its kind adds: a change names
    /// its `target`; a reaction's content is its `emoji`; a delete has none.
    fn write_fields(&self, out: &mut String) {
        let _ = write!(
            out,
            "\"room\":{},\"seq\":{},\"id\":{},",
            json_str(&self.room),
            self.seq,
            json_str(&self.id),
        );
        if let Some(target) = self.target.as_deref().filter(|_| self.kind.is_change()) {
            let _ = write!(out, "\"target\":{},", json_str(target));
        }
        let _ = write!(
            out,
            "\"user\":{},\"user_id\":{},",
            json_str(&self.user_name),
            json_str(&self.user_id),
        );
        match self.kind {
            Kind::Message | Kind::Edit => {
                let _ = write!(out, "\"content\":{},", json_str(&self.content));
            }
            Kind::React | Kind::Unreact => {
                let _ = write!(
                    out,
                    "\"emoji\":{},\"added\":{},",
                    json_str(&self.content),
                    self.kind == Kind::React
                );
            }
            Kind::Delete => {}
            _ => self.write_membership(out),
        }
        let _ = write!(out, "\"timestamp\":\"{}\"", self.timestamp());
    }

    /// A membership event's own fields (docs/protocol.md, section 7b).
    fn write_membership(&self, out: &mut String) {
        let body = crate::access::EventBody::of(self);
        if self.kind == Kind::RoomCreated {
            let kind = body.kind.as_deref().unwrap_or("public");
            let _ = write!(out, "\"kind\":{},\"members\":[", json_str(kind));
            for (i, m) in body.members.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(
                    out,
                    "{{\"id\":{},\"name\":{},\"role\":{}}}",
                    json_str(&m.id),
                    json_str(&m.name),
                    json_str(&m.role)
                );
            }
            out.push_str("],");
            return;
        }
        let subject = self.target.as_deref().unwrap_or_default();
        let name = body.name.as_deref().unwrap_or(subject);
        let _ = write!(
            out,
            "\"member\":{{\"id\":{},\"name\":{}}},",
            json_str(subject),
            json_str(name)
        );
        match self.kind {
            Kind::MemberAdded => {
                let role = body.role.as_deref().unwrap_or("member");
                let _ = write!(out, "\"role\":{},", json_str(role));
            }
            Kind::MemberRemoved => {
                let reason = body.reason.as_deref().unwrap_or("removed");
                let _ = write!(out, "\"reason\":{},", json_str(reason));
            }
            Kind::MemberMuted => match body.until_ms.filter(|&ms| ms > 0) {
                Some(ms) => {
                    let _ = write!(out, "\"until\":\"{}\",", format_timestamp(ms));
                }
                None => out.push_str("\"until\":null,"),
            },
            _ => {}
        }
    }

    /// A message's state beyond its event: only what applies.
    fn write_state(&self, out: &mut String) {
        if !self.is_message() {
            return;
        }
        if let Some(reply_to) = &self.reply_to {
            let _ = write!(out, ",\"reply_to\":{}", json_str(reply_to));
        }
        if let Some(at) = self.edited_at_ms {
            let _ = write!(out, ",\"edited_at\":\"{}\"", format_timestamp(at));
        }
        if self.deleted {
            out.push_str(",\"deleted\":true");
        }
    }

    /// The seed-compatible frame; `None` for changes, which seed clients don't see.
    pub fn seed_frame_json(&self) -> Option<String> {
        if !self.is_message() {
            return None;
        }
        Some(to_json(&serde_json::json!({
            "client_id": self.user_id,
            "room_id": self.room,
            "message": self.content,
            "timestamp": self.timestamp(),
            "seq": self.seq,
            "id": self.id,
            "user": self.user_name,
        })))
    }

    /// The ack for the sender.
    pub fn ack_json(&self, client_ref: Option<&str>) -> String {
        self.ack_json_with(client_ref, false)
    }

    /// The ack of a change that changed nothing: it names the target message.
    pub fn unchanged_ack_json(&self, client_ref: Option<&str>) -> String {
        self.ack_json_with(client_ref, true)
    }

    fn ack_json_with(&self, client_ref: Option<&str>, unchanged: bool) -> String {
        #[derive(Serialize)]
        struct Ack<'a> {
            r#type: &'static str,
            #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
            client_ref: Option<&'a str>,
            room: &'a str,
            seq: u64,
            id: &'a str,
            timestamp: String,
            #[serde(skip_serializing_if = "std::ops::Not::not")]
            unchanged: bool,
        }
        to_json(&Ack {
            r#type: "ack",
            client_ref,
            room: &self.room,
            seq: self.seq,
            id: &self.id,
            timestamp: self.timestamp(),
            unchanged,
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

/// A user's reading of a room: their read marker, and what is unread after
/// it (docs/protocol.md, section 7b).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ReadState {
    pub read_seq: u64,
    pub unread: u64,
    pub mentions: u64,
}

pub fn joined_json(
    room: &str,
    last_seq: u64,
    recovered: Option<bool>,
    members: &[&UserInfo],
    reading: Option<ReadState>,
) -> String {
    #[derive(Serialize)]
    struct Joined<'a> {
        r#type: &'static str,
        room: &'a str,
        last_seq: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        members: &'a [&'a UserInfo],
        #[serde(flatten, skip_serializing_if = "Option::is_none")]
        reading: Option<ReadState>,
    }
    to_json(&Joined {
        r#type: "joined",
        room,
        last_seq,
        recovered,
        members,
        reading,
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

/// `left` for a connection the room took out (kicked, banned, removed).
pub fn left_because_json(room: &str, reason: &str) -> String {
    to_json(&serde_json::json!({"type":"left","room":room,"reason":reason}))
}

/// A user's read marker moved (sent to their other connections).
pub fn read_json(room: &str, seq: u64) -> String {
    to_json(&serde_json::json!({"type":"read","room":room,"seq":seq}))
}

/// The user was added to a room (invited, or a direct room with them opened).
pub fn room_added_json(room: &str, kind: &str, by: &UserInfo) -> String {
    to_json(&serde_json::json!({"type":"room_added","room":room,"kind":kind,"by":by}))
}

/// The user is no longer a member of a private or direct room.
pub fn room_removed_json(room: &str, reason: &str) -> String {
    to_json(&serde_json::json!({"type":"room_removed","room":room,"reason":reason}))
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

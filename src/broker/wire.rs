//! What cluster mode keeps in Redis and how it is written there: the key
//! names, the message and presence encodings, and the Lua scripts. Pure code
//! (no connections), shared by the broker, the relay and the persist feed.
//!
//! Keys (all under `broker.namespace`, shown here as `ns`):
//! - `ns:seq:{room}`: the room's newest seq (seeded from the store when missing);
//! - `ns:stream:{room}`: recent messages, entry id `{seq}-0`, capped near `recovery_max`;
//! - `ns:persist`: every accepted message, consumed by the group `persist`;
//! - `ns:ref:{len(user)}:{user}:{ref}`: a send's ack fields, for 10 minutes;
//! - `ns:presence:{room}`: sorted set of `{instance}\n{user json}`, scored by expiry;
//! - channel `ns:room:{room}`: `M`essage batches, `P+`/`P-` presence, `T`yping.

use super::{Draft, Inbound};
use crate::chat::{ChatMessage, Kind};
use crate::protocol::UserInfo;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Sequences a batch of one room's sends atomically. Per send: answer a known
/// (user, ref) with its original ack fields; otherwise take the next seq, append
/// to the room's stream and the persist stream, and remember the ref. Then one
/// PUBLISH of the batch. Nothing after the first write can fail, so a batch is
/// all or nothing. Returns, per send, its seq (integer) or the original
/// `room\nseq\nid\ntimestamp` (string).
pub(super) const ACCEPT_SCRIPT: &str = r#"
local cur = redis.call('GET', KEYS[1])
if not cur then return redis.error_reply('NOSEQ the room seq is not seeded') end
cur = tonumber(cur)
local top = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if top[1] then
  local t = tonumber(string.match(top[1][1], '^(%d+)'))
  if t and t > cur then cur = t end
end
local results = {}
local lines = {}
local n = (#ARGV - 5) / 4
for i = 0, n - 1 do
  local b = 5 + i * 4
  local refkey, id, ts, body = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4]
  local original = false
  if refkey ~= '' then original = redis.call('GET', refkey) end
  if original then
    results[#results + 1] = original
  else
    cur = cur + 1
    local seq = string.format('%d', cur)
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], seq .. '-0', 'b', body)
    redis.call('XADD', KEYS[3], '*', 'r', ARGV[1], 's', seq, 'b', body)
    if refkey ~= '' then
      redis.call('SET', refkey, ARGV[1] .. '\n' .. seq .. '\n' .. id .. '\n' .. ts, 'EX', ARGV[4])
    end
    results[#results + 1] = cur
    lines[#lines + 1] = seq .. ' ' .. body
  end
end
redis.call('SET', KEYS[1], string.format('%d', cur))
if #lines > 0 then
  redis.call('PUBLISH', ARGV[2], 'M ' .. ARGV[5] .. '\n' .. table.concat(lines, '\n'))
end
return results
"#;

/// Seeds a missing room seq with the highest of the store's seq (ARGV[1]) and
/// the room stream's newest entry, so a seq is never handed out twice.
pub(super) const SEED_SCRIPT: &str = r#"
local v = tonumber(ARGV[1])
local top = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if top[1] then
  local t = tonumber(string.match(top[1][1], '^(%d+)'))
  if t and t > v then v = t end
end
redis.call('SET', KEYS[1], string.format('%d', v), 'NX')
return redis.call('GET', KEYS[1])
"#;

/// Raises a room's seq to at least ARGV[1], only if the key exists: a missing
/// one is seeded from the store's head (which the import raised) by the first
/// send ([`SEED_SCRIPT`]). 1 raised, 0 already there, -1 absent.
pub(super) const RAISE_SEQ_SCRIPT: &str = r#"
local cur = redis.call('GET', KEYS[1])
if not cur then return -1 end
if tonumber(cur) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
  return 1
end
return 0
"#;

/// Every key and channel name, under the namespace.
#[derive(Debug, Clone)]
pub struct Keys {
    ns: String,
}

impl Keys {
    pub fn new(namespace: &str) -> Self {
        Self {
            ns: namespace.to_string(),
        }
    }
    pub fn seq(&self, room: &str) -> String {
        format!("{}:seq:{room}", self.ns)
    }
    pub fn stream(&self, room: &str) -> String {
        format!("{}:stream:{room}", self.ns)
    }
    pub fn persist(&self) -> String {
        format!("{}:persist", self.ns)
    }
    pub fn channel(&self, room: &str) -> String {
        format!("{}{room}", self.channel_prefix())
    }
    pub fn channel_prefix(&self) -> String {
        format!("{}:room:", self.ns)
    }
    /// A private or direct room's kind, for rooms opening while the store is down.
    pub fn kind(&self, room: &str) -> String {
        format!("{}:kind:{room}", self.ns)
    }
    /// The channel of frames for users (read markers, rooms added or removed).
    pub fn users(&self) -> String {
        format!("{}:users", self.ns)
    }
    pub fn presence(&self, room: &str) -> String {
        format!("{}:presence:{room}", self.ns)
    }
    /// The user id's length keeps `("a:b", "c")` and `("a", "b:c")` apart.
    pub fn reference(&self, user_id: &str, client_ref: &str) -> String {
        format!("{}:ref:{}:{user_id}:{client_ref}", self.ns, user_id.len())
    }
}

/// A message as it travels through Redis, without room and seq (those are
/// the stream entry's, or the channel's and the line's).
#[derive(Serialize, Deserialize)]
struct WireBody {
    id: String,
    uid: String,
    un: String,
    c: String,
    ts: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    r: Option<String>,
    /// The entry's kind, absent for a message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    k: Option<String>,
    /// A change's target message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    t: Option<String>,
    /// The message a message replies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rt: Option<String>,
}

pub(super) fn encode_body(draft: &Draft) -> String {
    let body = WireBody {
        id: draft.id.clone(),
        uid: draft.user.id.clone(),
        un: draft.user.name.clone(),
        c: draft.content.clone(),
        ts: draft.timestamp_ms,
        r: draft.client_ref.clone(),
        k: (draft.kind != Kind::Message).then(|| draft.kind.as_str().to_string()),
        t: draft.target.clone(),
        rt: draft.reply_to.clone(),
    };
    serde_json::to_string(&body).unwrap_or_default()
}

pub(super) fn decode_body(room: &str, seq: u64, body: &str) -> Option<ChatMessage> {
    let b: WireBody = serde_json::from_str(body).ok()?;
    let kind = match b.k.as_deref() {
        None => Kind::Message,
        // A kind this instance doesn't know (a newer one's) is unreadable.
        Some(k) => Kind::parse(k)?,
    };
    Some(ChatMessage {
        room: room.to_string(),
        seq,
        id: b.id,
        user_id: b.uid,
        user_name: b.un,
        content: b.c,
        timestamp_ms: b.ts,
        client_ref: b.r,
        kind,
        target: b.t,
        reply_to: b.rt,
        ..ChatMessage::default()
    })
}

/// The seq of a room stream entry id (`{seq}-0`).
pub(super) fn entry_seq(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

fn user_json(user: &UserInfo) -> String {
    serde_json::to_string(user).unwrap_or_default()
}

/// `{instance}\n{user json}`: a presence entry, and the body of P+/P-/T events.
pub(super) fn presence_member(instance: &str, user: &UserInfo) -> String {
    format!("{instance}\n{}", user_json(user))
}

pub(super) fn parse_presence_member(member: &str) -> Option<(Arc<str>, Arc<UserInfo>)> {
    let (instance, json) = member.split_once('\n')?;
    let user: UserInfo = serde_json::from_str(json).ok()?;
    Some((Arc::from(instance), Arc::new(user)))
}

/// A presence or typing event on a room's channel: `P+`/`P-`/`T`, then the
/// [`presence_member`]. (Message batches, `M {instance}\n{seq} {body}\n…`,
/// are published by [`ACCEPT_SCRIPT`].)
pub(super) fn event_payload(tag: &str, member: &str) -> String {
    format!("{tag} {member}")
}

/// A frame for a user on the users channel: `{instance}\n{user}\n{frame}`.
pub(super) fn user_payload(instance: &str, user: &str, frame: &str) -> String {
    format!("{instance}\n{}\n{frame}", user.replace('\n', " "))
}

/// The publishing instance, the user and the frame of a users payload.
pub(super) fn split_user_payload(payload: &str) -> Option<(&str, &str, &str)> {
    let (instance, rest) = payload.split_once('\n')?;
    let (user, frame) = rest.split_once('\n')?;
    Some((instance, user, frame))
}

/// A channel payload's tag, publishing instance, and the rest.
pub(super) fn split_payload(payload: &str) -> Option<(&str, &str, &str)> {
    let (head, rest) = payload.split_once('\n').unwrap_or((payload, ""));
    let (tag, instance) = head.split_once(' ')?;
    Some((tag, instance, rest))
}

/// What a channel payload (split by [`split_payload`]) tells the room's actor;
/// `None` when it is unreadable or of an unknown kind.
pub(super) fn decode_payload(room: &str, tag: &str, instance: &str, rest: &str) -> Option<Inbound> {
    match tag {
        "M" => Some(Inbound::Messages(
            rest.split('\n')
                .filter_map(|line| {
                    let (seq, body) = line.split_once(' ')?;
                    decode_body(room, seq.parse().ok()?, body).map(Arc::new)
                })
                .collect(),
        )),
        "P+" | "P-" | "T" => {
            let (instance, user) = parse_presence_member(&format!("{instance}\n{rest}"))?;
            Some(match tag {
                "T" => Inbound::Typing { instance, user },
                _ => Inbound::Presence {
                    instance,
                    user,
                    joined: tag == "P+",
                },
            })
        }
        _ => None,
    }
}

/// `room\nseq\nid\ntimestamp` -> an ack-only message for a resent ref.
pub(super) fn parse_original(text: &str, user_id: &str, client_ref: &str) -> Option<ChatMessage> {
    let mut parts = text.splitn(4, '\n');
    let room = parts.next()?.to_string();
    let seq = parts.next()?.parse().ok()?;
    let id = parts.next()?.to_string();
    let timestamp_ms = parts.next()?.parse().ok()?;
    Some(ChatMessage {
        room,
        seq,
        id,
        user_id: user_id.to_string(),
        user_name: String::new(),
        timestamp_ms,
        client_ref: Some(client_ref.to_string()),
        ..ChatMessage::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice() -> Arc<UserInfo> {
        Arc::new(UserInfo {
            id: "u-1".into(),
            name: "alice".into(),
        })
    }

    #[test]
    fn ref_keys_keep_users_apart() {
        let k = Keys::new("ns");
        assert_ne!(k.reference("a:b", "c"), k.reference("a", "b:c"));
        assert_eq!(k.reference("u", "r"), "ns:ref:1:u:r");
        assert_eq!(k.channel("general"), "ns:room:general");
        assert!(k.channel("general").starts_with(&k.channel_prefix()));
        assert_eq!(
            (k.seq("g"), k.stream("g"), k.persist(), k.presence("g")),
            (
                "ns:seq:g".to_string(),
                "ns:stream:g".to_string(),
                "ns:persist".to_string(),
                "ns:presence:g".to_string()
            )
        );
    }

    #[test]
    fn body_round_trip() {
        let draft = Draft::new(alice(), "hi \"there\"\nline".into(), Some("c-1".into()));
        let m = decode_body("g", 7, &encode_body(&draft)).unwrap();
        assert_eq!(m, draft.clone().into_message("g", 7));
        assert_eq!((m.seq, m.content.as_str()), (7, "hi \"there\"\nline"));
        assert_eq!(m.client_ref.as_deref(), Some("c-1"));
        // A body is one line, so a batch can be published one message a line.
        assert!(!encode_body(&draft).contains('\n'));
        let no_ref = Draft::new(alice(), "x".into(), None);
        assert!(!encode_body(&no_ref).contains("\"r\""));
        assert_eq!(
            decode_body("g", 1, &encode_body(&no_ref))
                .unwrap()
                .client_ref,
            None
        );
        assert!(decode_body("g", 1, "not json").is_none());
    }

    #[test]
    fn changes_and_replies_round_trip() {
        let edit = Draft::change(
            alice(),
            Kind::Edit,
            "m-1".into(),
            "new".into(),
            Some("c".into()),
        );
        let m = decode_body("g", 9, &encode_body(&edit)).unwrap();
        assert_eq!(m, edit.clone().into_message("g", 9));
        assert_eq!((m.kind, m.target.as_deref()), (Kind::Edit, Some("m-1")));
        let reply = Draft::new(alice(), "+1".into(), None).replying_to(Some("m-1".into()));
        let m = decode_body("g", 10, &encode_body(&reply)).unwrap();
        assert_eq!(
            (m.kind, m.reply_to.as_deref()),
            (Kind::Message, Some("m-1"))
        );
        assert!(
            !encode_body(&reply).contains("\"k\""),
            "a message carries no kind"
        );
        let future = r#"{"id":"x","uid":"u","un":"n","c":"","ts":1,"k":"poll"}"#;
        assert!(decode_body("g", 11, future).is_none());
    }

    #[test]
    fn entry_ids_carry_the_seq() {
        assert_eq!(entry_seq("42-0"), Some(42));
        assert_eq!(entry_seq("x-0"), None);
    }

    #[test]
    fn presence_member_round_trip() {
        let user = UserInfo {
            id: "u\n1".into(),
            name: "bob".into(),
        };
        let (instance, parsed) = parse_presence_member(&presence_member("inst-1", &user)).unwrap();
        assert_eq!((&*instance, parsed.as_ref()), ("inst-1", &user));
        assert!(parse_presence_member("no newline").is_none());
    }

    #[test]
    fn original_ack_round_trip() {
        let m = parse_original("g\n12\nid-9\n1700000000123", "u-1", "c-1").unwrap();
        assert_eq!((m.room.as_str(), m.seq, m.id.as_str()), ("g", 12, "id-9"));
        assert_eq!(
            (m.timestamp_ms, m.user_id.as_str()),
            (1_700_000_000_123, "u-1")
        );
        assert_eq!(m.client_ref.as_deref(), Some("c-1"));
        assert!(m.content.is_empty());
        assert!(parse_original("g\nnot-a-seq\nid\n1", "u", "r").is_none());
        assert!(parse_original("g\n1\nid", "u", "r").is_none());
    }

    fn decode(room: &str, payload: &str) -> Option<(String, Inbound)> {
        let (tag, instance, rest) = split_payload(payload)?;
        Some((
            instance.to_string(),
            decode_payload(room, tag, instance, rest)?,
        ))
    }

    #[test]
    fn message_batches_decode_in_order() {
        let a = Draft::new(alice(), "one".into(), Some("r".into()));
        let b = Draft::new(alice(), "two\nlines".into(), None);
        // As the accept script publishes a batch.
        let payload = format!("M inst-2\n7 {}\n8 {}", encode_body(&a), encode_body(&b));
        let Some((instance, Inbound::Messages(m))) = decode("g", &payload) else {
            panic!("not a message batch");
        };
        assert_eq!(instance, "inst-2");
        assert_eq!(*m[0], a.into_message("g", 7));
        assert_eq!(*m[1], b.into_message("g", 8));
        assert_eq!(m.len(), 2);
        // An unreadable line is skipped, not the batch.
        let Some((_, Inbound::Messages(m))) = decode("g", "M i\nx {}\n9 nope") else {
            panic!("not a message batch");
        };
        assert!(m.is_empty());
    }

    #[test]
    fn presence_and_typing_events_round_trip() {
        let member = presence_member("inst-3", &alice());
        for (tag, joined) in [("P+", Some(true)), ("P-", Some(false)), ("T", None)] {
            match (decode("g", &event_payload(tag, &member)), joined) {
                (
                    Some((
                        _,
                        Inbound::Presence {
                            instance,
                            user,
                            joined: j,
                        },
                    )),
                    Some(joined),
                ) => {
                    assert_eq!((&*instance, &*user, j), ("inst-3", &*alice(), joined));
                }
                (Some((_, Inbound::Typing { instance, user })), None) => {
                    assert_eq!((&*instance, &*user), ("inst-3", &*alice()));
                }
                _ => panic!("{tag} did not round trip"),
            }
        }
        assert!(decode("g", "X inst\n{}").is_none(), "unknown tag");
        assert!(decode("g", "P+inst").is_none(), "no instance");
        assert!(decode("g", "P+ inst\nnot json").is_none());
    }
}

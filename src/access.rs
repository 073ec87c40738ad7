//! Who may be in a room and do what (docs/protocol.md, section 7b): room
//! kinds, members and their roles, bans and mutes, and the rules of the
//! actions on them. Pure code: the room actor keeps an [`Access`] for its
//! room, loaded from the store and brought forward by every membership event
//! it delivers, and checks joins, sends and actions against it.

use crate::chat::{ChatMessage, Kind};
use crate::protocol::{ErrorCode, Rejection, UserInfo};
use crate::FastMap;
use serde::{Deserialize, Serialize};

/// Names starting with this are direct rooms.
pub const DIRECT_PREFIX: &str = "dm:";

/// Longest mute (30 days), in seconds.
pub const MAX_MUTE_SECS: u64 = 30 * 24 * 3600;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RoomKind {
    #[default]
    Public,
    Private,
    Direct,
}

impl RoomKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RoomKind::Public => "public",
            RoomKind::Private => "private",
            RoomKind::Direct => "direct",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "public" => RoomKind::Public,
            "private" => RoomKind::Private,
            "direct" => RoomKind::Direct,
            _ => return None,
        })
    }

    /// Only members may join and read.
    pub fn members_only(self) -> bool {
        self != RoomKind::Public
    }
}

/// A member's role; the order is the rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Member,
    Admin,
    Owner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "member" => Role::Member,
            "admin" => Role::Admin,
            "owner" => Role::Owner,
            _ => return None,
        })
    }
}

/// Why a member left a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Removed,
    Left,
    Kicked,
    Banned,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Removed => "removed",
            Reason::Left => "left",
            Reason::Kicked => "kicked",
            Reason::Banned => "banned",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "removed" => Reason::Removed,
            "left" => Reason::Left,
            "kicked" => Reason::Kicked,
            "banned" => Reason::Banned,
            _ => return None,
        })
    }
}

/// A membership event's details, kept as JSON in the entry's `content` (the
/// subject's id is the entry's `target`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventBody {
    /// `room_created`: the room's kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `room_created`: the first members, with their roles.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<NamedMember>,
    /// The subject's display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `member_added`: the role given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// `member_removed`: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `member_muted`: until when (ms since the epoch; 0 = unmuted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<i64>,
    /// `member_removed` from a public room by a kick: it takes the user's
    /// connections out and leaves their standing (a role) as it was.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub connections_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedMember {
    pub id: String,
    pub name: String,
    pub role: String,
}

impl EventBody {
    pub fn of(entry: &ChatMessage) -> Self {
        Self::parse(&entry.content)
    }

    /// Details that don't parse (a newer version's) read as none.
    pub fn parse(content: &str) -> Self {
        serde_json::from_str(content).unwrap_or_default()
    }

    pub fn to_content(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// One user's standing in a room.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Standing {
    pub name: String,
    /// `None`: not a member (a row may still hold a ban or a mute).
    pub role: Option<Role>,
    pub banned: bool,
    /// Muted until then (ms since the epoch); 0 = not muted.
    pub muted_until_ms: i64,
}

/// What an action asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Invite(Role),
    Remove,
    Kick,
    Ban,
    Unban,
    /// Until then (ms since the epoch); 0 lifts the mute.
    Mute(i64),
}

/// Who asks: a user, and whether their token makes them a server admin.
#[derive(Debug, Clone)]
pub struct Actor {
    pub user: std::sync::Arc<UserInfo>,
    pub server_admin: bool,
}

/// What delivering a membership event means for the room's connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// This user's connections leave the room (with this reason).
    Evict(String, Reason),
    /// Connections of users who are not members leave (the room became private).
    EvictOutsiders,
}

/// A room's kind and the standing of the users it knows.
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub kind: RoomKind,
    pub users: FastMap<String, Standing>,
    /// Opened while the store was down (cluster mode): only the users the
    /// recent events name are known. A public room lets others in (a ban
    /// older than those events can't be seen until the store is back); a
    /// private one answers `unavailable` instead of deciding.
    pub partial: bool,
}

fn forbidden_room(message: &str) -> Rejection {
    Rejection::new(ErrorCode::ForbiddenRoom, message)
}

/// The answer to a private room for someone who may not see it: the same
/// whether it exists or not.
pub fn not_yours() -> Rejection {
    forbidden_room("this room is private, or it does not exist")
}

impl Access {
    pub fn standing(&self, user: &str) -> Option<&Standing> {
        self.users.get(user)
    }

    pub fn role(&self, user: &str) -> Option<Role> {
        self.users.get(user).and_then(|s| s.role)
    }

    /// Whether `user` may join and read the room.
    pub fn may_read(&self, room: &str, user: &str) -> Result<(), Rejection> {
        let standing = self.users.get(user);
        if standing.is_some_and(|s| s.banned) {
            return Err(forbidden_room("you are banned from this room"));
        }
        match self.kind {
            RoomKind::Public if room.starts_with(DIRECT_PREFIX) && !self.partial => {
                Err(not_yours())
            }
            RoomKind::Public => Ok(()),
            _ if standing.is_some_and(|s| s.role.is_some()) => Ok(()),
            _ if self.partial => Err(Rejection::new(
                ErrorCode::Unavailable,
                "the room's members can't be read right now; try again",
            )),
            _ => Err(not_yours()),
        }
    }

    /// Whether `user` may send (or change messages) now: not while muted.
    pub fn may_post(&self, user: &str, now_ms: i64) -> Result<(), Rejection> {
        match self.users.get(user) {
            Some(s) if s.muted_until_ms > now_ms => Err(Rejection {
                retry_after_ms: Some((s.muted_until_ms - now_ms) as u64),
                ..Rejection::new(ErrorCode::Muted, "you are muted in this room")
            }),
            _ => Ok(()),
        }
    }

    /// 4: server admin, 3: owner, 2: admin, 1: member, 0: anyone else.
    fn rank(&self, user: &str, server_admin: bool) -> u8 {
        if server_admin {
            return 4;
        }
        match self.role(user) {
            Some(Role::Owner) => 3,
            Some(Role::Admin) => 2,
            Some(Role::Member) => 1,
            None => 0,
        }
    }

    /// Whether `actor` may do `action` to `subject`: `Ok(true)` when it
    /// changes something, `Ok(false)` when it would change nothing.
    pub fn check(
        &self,
        room: &str,
        actor: &Actor,
        subject: &str,
        action: &Action,
    ) -> Result<bool, Rejection> {
        let me = actor.user.id.as_str();
        let mine = self.rank(me, actor.server_admin);
        if self.kind.members_only() && mine == 0 {
            return Err(not_yours());
        }
        let theirs = self.rank(subject, false);
        let standing = self.users.get(subject);
        let is_member = standing.is_some_and(|s| s.role.is_some());
        let forbidden = |why: &str| Err(Rejection::new(ErrorCode::Forbidden, why));
        // Leaving: anyone may remove themselves from a private room.
        if *action == Action::Remove && subject == me && self.kind == RoomKind::Private {
            return Ok(is_member);
        }
        if self.kind == RoomKind::Direct && !actor.server_admin {
            return forbidden("nobody but a server admin manages a direct room");
        }
        if self.kind == RoomKind::Direct && matches!(action, Action::Invite(_)) {
            return forbidden("a direct room has exactly its two users");
        }
        if mine < 2 {
            return forbidden("only the room's owner and admins may do this");
        }
        if subject == me {
            return forbidden("you can't do this to yourself");
        }
        if theirs >= mine {
            return forbidden("they rank as high as you in this room");
        }
        let _ = room;
        Ok(match action {
            Action::Invite(Role::Owner) => {
                return Err(Rejection::new(
                    ErrorCode::InvalidFrame,
                    "\"role\" is \"member\" or \"admin\"",
                ))
            }
            Action::Invite(Role::Admin) if mine < 3 => {
                return forbidden("only the owner appoints admins")
            }
            Action::Invite(_) if standing.is_some_and(|s| s.banned) => {
                return forbidden("this user is banned here; unban them first")
            }
            Action::Invite(role) => standing.and_then(|s| s.role) != Some(*role),
            Action::Remove => is_member,
            // A kick takes a public room's connections out even of a non-member.
            Action::Kick => is_member || self.kind == RoomKind::Public,
            Action::Ban => !standing.is_some_and(|s| s.banned),
            Action::Unban => standing.is_some_and(|s| s.banned),
            Action::Mute(_) => true,
        })
    }

    /// Applies a membership event delivered in seq order; what it means for
    /// the room's connections. Other entries change nothing.
    pub fn apply(&mut self, entry: &ChatMessage) -> Option<Effect> {
        let body = EventBody::of(entry);
        let subject = entry.target.clone().unwrap_or_default();
        let named = |standing: &mut Standing, body: &EventBody| {
            if let Some(name) = &body.name {
                standing.name.clone_from(name);
            }
        };
        match entry.kind {
            Kind::RoomCreated => {
                self.kind = body
                    .kind
                    .as_deref()
                    .and_then(RoomKind::parse)
                    .unwrap_or_default();
                for m in &body.members {
                    let standing = self.users.entry(m.id.clone()).or_default();
                    standing.name.clone_from(&m.name);
                    standing.role = Some(Role::parse(&m.role).unwrap_or(Role::Member));
                }
                self.kind.members_only().then_some(Effect::EvictOutsiders)
            }
            Kind::MemberAdded => {
                let standing = self.users.entry(subject).or_default();
                named(standing, &body);
                standing.role = Some(
                    body.role
                        .as_deref()
                        .and_then(Role::parse)
                        .unwrap_or(Role::Member),
                );
                None
            }
            Kind::MemberRemoved => {
                let reason = body
                    .reason
                    .as_deref()
                    .and_then(Reason::parse)
                    .unwrap_or(Reason::Removed);
                let standing = self.users.entry(subject.clone()).or_default();
                named(standing, &body);
                // A kick from a public room takes no standing away.
                if !body.connections_only {
                    standing.role = None;
                }
                if reason == Reason::Banned {
                    standing.banned = true;
                }
                Some(Effect::Evict(subject, reason))
            }
            Kind::MemberMuted => {
                let standing = self.users.entry(subject).or_default();
                named(standing, &body);
                standing.muted_until_ms = body.until_ms.unwrap_or(0).max(0);
                None
            }
            Kind::MemberUnbanned => {
                let standing = self.users.entry(subject).or_default();
                named(standing, &body);
                standing.banned = false;
                None
            }
            _ => None,
        }
    }
}

/// Whether `user` (`None`: a guest without a token) may read `room`, for
/// reads that don't go through the room's actor: history, stats, the seed
/// upgrade. Asks the store.
pub async fn check_reader(
    store: &dyn crate::store::Store,
    room: &str,
    user: Option<&str>,
) -> Result<(), Rejection> {
    let unavailable = |error: crate::store::StoreError| {
        tracing::warn!(%error, room, "reading a room's members failed");
        Rejection::new(ErrorCode::Unavailable, "the store is unavailable")
    };
    let id = user.unwrap_or_default();
    let (kind, standing) = crate::store::rooms::standing(store, room, id)
        .await
        .map_err(unavailable)?;
    let mut access = Access {
        kind,
        ..Access::default()
    };
    if let (Some(standing), Some(_)) = (standing, user) {
        access.users.insert(id.to_string(), standing);
    }
    access.may_read(room, id).map_err(|e| e.in_room(Some(room)))
}

/// The draft of an action's event in a room of `kind`: its kind, subject and body.
pub fn event_for(
    action: &Action,
    subject: &UserInfo,
    me: &str,
    kind: RoomKind,
) -> (Kind, EventBody) {
    // No name: the room fills in the one it knows.
    let mut body = EventBody {
        name: (!subject.name.is_empty()).then(|| subject.name.clone()),
        ..EventBody::default()
    };
    let kind = match action {
        Action::Invite(role) => {
            body.role = Some(role.as_str().to_string());
            Kind::MemberAdded
        }
        Action::Remove => {
            let reason = if subject.id == me {
                Reason::Left
            } else {
                Reason::Removed
            };
            body.reason = Some(reason.as_str().to_string());
            Kind::MemberRemoved
        }
        Action::Kick | Action::Ban => {
            let reason = if *action == Action::Kick {
                Reason::Kicked
            } else {
                Reason::Banned
            };
            body.reason = Some(reason.as_str().to_string());
            body.connections_only = *action == Action::Kick && kind == RoomKind::Public;
            Kind::MemberRemoved
        }
        Action::Unban => Kind::MemberUnbanned,
        Action::Mute(until) => {
            body.until_ms = Some(*until);
            Kind::MemberMuted
        }
    };
    (kind, body)
}

/// The name of the direct room of two users: the same whichever asks.
pub fn direct_room_name(a: &str, b: &str) -> String {
    use sha2::{Digest, Sha256};
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut hasher = Sha256::new();
    hasher.update(lo.len().to_le_bytes());
    hasher.update(lo.as_bytes());
    hasher.update(hi.as_bytes());
    let digest = hasher.finalize();
    let mut name = String::with_capacity(DIRECT_PREFIX.len() + 40);
    name.push_str(DIRECT_PREFIX);
    for byte in &digest[..20] {
        use std::fmt::Write as _;
        let _ = write!(name, "{byte:02x}");
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn actor(id: &str, server_admin: bool) -> Actor {
        Actor {
            user: Arc::new(UserInfo {
                id: id.into(),
                name: id.to_uppercase(),
            }),
            server_admin,
        }
    }

    fn event(kind: Kind, by: &str, subject: &str, body: EventBody) -> ChatMessage {
        ChatMessage {
            room: "team".into(),
            kind,
            user_id: by.into(),
            target: Some(subject.into()),
            content: body.to_content(),
            ..ChatMessage::default()
        }
    }

    fn private_room() -> Access {
        let mut access = Access::default();
        let created = EventBody {
            kind: Some("private".into()),
            members: vec![NamedMember {
                id: "owner".into(),
                name: "Owner".into(),
                role: "owner".into(),
            }],
            ..EventBody::default()
        };
        let effect = access.apply(&event(Kind::RoomCreated, "owner", "", created));
        assert_eq!(effect, Some(Effect::EvictOutsiders));
        access
    }

    fn add(access: &mut Access, who: &str, role: Role) {
        let (kind, body) = event_for(
            &Action::Invite(role),
            &UserInfo {
                id: who.into(),
                name: who.into(),
            },
            "owner",
            access.kind,
        );
        access.apply(&event(kind, "owner", who, body));
    }

    #[test]
    fn private_rooms_admit_members_only_and_bans_keep_anyone_out() {
        let mut access = private_room();
        assert!(access.may_read("team", "owner").is_ok());
        let refused = access.may_read("team", "bob").unwrap_err();
        assert_eq!(refused.code, ErrorCode::ForbiddenRoom);
        add(&mut access, "bob", Role::Member);
        assert!(access.may_read("team", "bob").is_ok());
        let (kind, body) = event_for(
            &Action::Ban,
            &UserInfo {
                id: "bob".into(),
                name: "Bob".into(),
            },
            "owner",
            access.kind,
        );
        let effect = access.apply(&event(kind, "owner", "bob", body));
        assert_eq!(effect, Some(Effect::Evict("bob".into(), Reason::Banned)));
        assert!(access.may_read("team", "bob").is_err());
        let public = Access::default();
        assert!(public.may_read("general", "x").is_ok());
        assert!(public.may_read("dm:abc", "x").is_err(), "dm: is reserved");
    }

    #[test]
    fn ranks_decide_who_may_act_on_whom() {
        let mut access = private_room();
        add(&mut access, "adm", Role::Admin);
        add(&mut access, "bob", Role::Member);
        add(&mut access, "cat", Role::Member);
        let check = |a: &Access, who: &Actor, subject: &str, action: Action| {
            a.check("team", who, subject, &action).map_err(|e| e.code)
        };
        let owner = actor("owner", false);
        let adm = actor("adm", false);
        let bob = actor("bob", false);
        let outsider = actor("zed", false);
        let root = actor("root", true);
        assert_eq!(check(&access, &adm, "bob", Action::Kick), Ok(true));
        assert_eq!(
            check(&access, &adm, "owner", Action::Kick),
            Err(ErrorCode::Forbidden)
        );
        assert_eq!(
            check(&access, &bob, "cat", Action::Kick),
            Err(ErrorCode::Forbidden)
        );
        assert_eq!(
            check(&access, &outsider, "bob", Action::Kick),
            Err(ErrorCode::ForbiddenRoom)
        );
        assert_eq!(
            check(&access, &adm, "dan", Action::Invite(Role::Admin)),
            Err(ErrorCode::Forbidden)
        );
        assert_eq!(
            check(&access, &owner, "dan", Action::Invite(Role::Admin)),
            Ok(true)
        );
        assert_eq!(
            check(&access, &owner, "bob", Action::Invite(Role::Member)),
            Ok(false),
            "already a member"
        );
        assert_eq!(
            check(&access, &bob, "bob", Action::Remove),
            Ok(true),
            "leaving"
        );
        assert_eq!(
            check(&access, &root, "owner", Action::Ban),
            Ok(true),
            "server admins outrank owners"
        );
        assert_eq!(check(&access, &owner, "zed", Action::Unban), Ok(false));
        assert_eq!(check(&access, &owner, "zed", Action::Remove), Ok(false));
    }

    #[test]
    fn mutes_refuse_posts_until_they_end() {
        let mut access = private_room();
        add(&mut access, "bob", Role::Member);
        let (kind, body) = event_for(
            &Action::Mute(10_000),
            &UserInfo {
                id: "bob".into(),
                name: "Bob".into(),
            },
            "owner",
            access.kind,
        );
        access.apply(&event(kind, "owner", "bob", body));
        let refused = access.may_post("bob", 4_000).unwrap_err();
        assert_eq!(
            (refused.code, refused.retry_after_ms),
            (ErrorCode::Muted, Some(6_000))
        );
        assert!(access.may_post("bob", 10_000).is_ok());
        assert!(access.may_post("owner", 4_000).is_ok());
    }

    #[test]
    fn direct_rooms_take_no_third_user_and_their_names_agree() {
        let mut access = Access::default();
        let body = EventBody {
            kind: Some("direct".into()),
            members: ["a", "b"]
                .iter()
                .map(|id| NamedMember {
                    id: id.to_string(),
                    name: id.to_string(),
                    role: "member".into(),
                })
                .collect(),
            ..EventBody::default()
        };
        access.apply(&event(Kind::RoomCreated, "a", "", body));
        assert_eq!(
            access
                .check(
                    "dm:x",
                    &actor("a", false),
                    "c",
                    &Action::Invite(Role::Member)
                )
                .map_err(|e| e.code),
            Err(ErrorCode::Forbidden)
        );
        assert!(access.may_read("dm:x", "b").is_ok());
        let name = direct_room_name("guest:1", "guest:2");
        assert_eq!(name, direct_room_name("guest:2", "guest:1"));
        assert!(name.starts_with("dm:") && name.len() == 43);
        assert!(crate::protocol::check_room(&name).is_ok());
        assert_ne!(direct_room_name("ab", "c"), direct_room_name("a", "bc"));
    }

    #[test]
    fn a_kick_from_a_public_room_takes_no_standing() {
        let mut access = Access::default();
        add(&mut access, "adm", Role::Admin);
        let (kind, body) = event_for(
            &Action::Kick,
            &UserInfo {
                id: "adm".into(),
                name: "A".into(),
            },
            "root",
            access.kind,
        );
        access.apply(&event(kind, "root", "adm", body));
        assert_eq!(access.role("adm"), Some(Role::Admin));
        assert!(access.may_read("general", "adm").is_ok(), "may join again");
    }
}

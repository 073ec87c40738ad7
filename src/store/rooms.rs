//! Rooms, members and read markers in the store (docs/protocol.md, section
//! 7b): one set of SQL for both backends, run through [`Store::raw_query`]
//! and [`Store::raw_exec`]. A room's kind and first members are claimed
//! directly when it is created; every later change of membership is a room
//! event, applied where it is stored (`apply_membership`) and, in cluster
//! mode, once more by the instance that took it (the same statements: each
//! aspect of a member keeps the seq of the event that set it, so applying
//! twice, or out of order, leaves the latest event's effect).

use super::{Apply, Param, Row, Store, StoreError};
use crate::access::{Access, EventBody, NamedMember, Role, RoomKind, Standing};
use crate::chat::{ChatMessage, Kind};
use crate::protocol::ReadState;

/// Counts of unread messages and mentions stop here.
pub const UNREAD_CAP: i64 = 1000;

const SETTINGS: &str = "SELECT kind AS t1, owner AS t2, CAST(NULL AS TEXT) AS t3, \
     created_at_ms AS n1, CAST(NULL AS BIGINT) AS n2, CAST(NULL AS BIGINT) AS n3 \
     FROM room_settings WHERE room = $1";
const ROOM_USERS: &str = "SELECT user_id AS t1, user_name AS t2, role AS t3, banned AS n1, \
     muted_until_ms AS n2, CAST(NULL AS BIGINT) AS n3 FROM room_members WHERE room = $1";
/// A room's kind (`t1`) and one user's standing in it (`n1` is NULL when the
/// room has no row for the user).
const STANDING: &str = "SELECT s.kind AS t1, m.user_name AS t2, m.role AS t3, m.banned AS n1, \
     m.muted_until_ms AS n2, CAST(NULL AS BIGINT) AS n3 FROM (SELECT CAST($1 AS TEXT) AS room) r \
     LEFT JOIN room_settings s ON s.room = r.room \
     LEFT JOIN room_members m ON m.room = r.room AND m.user_id = $2";
const MEMBERS_PAGE: &str = "SELECT user_id AS t1, user_name AS t2, role AS t3, banned AS n1, \
     muted_until_ms AS n2, CAST(NULL AS BIGINT) AS n3 FROM room_members \
     WHERE room = $1 AND role IS NOT NULL AND user_id > $2 ORDER BY user_id LIMIT $3";
const BANNED_PAGE: &str = "SELECT user_id AS t1, user_name AS t2, role AS t3, banned AS n1, \
     muted_until_ms AS n2, CAST(NULL AS BIGINT) AS n3 FROM room_members \
     WHERE room = $1 AND banned = 1 ORDER BY user_id LIMIT $2";
/// Whether a name is in use: its newest seq and how many users it knows.
const ROOM_USED: &str = "SELECT CAST(NULL AS TEXT) AS t1, CAST(NULL AS TEXT) AS t2, \
     CAST(NULL AS TEXT) AS t3, COALESCE((SELECT last_seq FROM rooms WHERE name = $1), 0) AS n1, \
     (SELECT COUNT(*) FROM room_members WHERE room = $1) AS n2, CAST(NULL AS BIGINT) AS n3";
const CLAIM: &str = "INSERT INTO room_settings (room, kind, owner, created_at_ms) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (room) DO NOTHING";
const CLAIM_MEMBER: &str = "INSERT INTO room_members (room, user_id, user_name, role) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (room, user_id) DO NOTHING";
const UNCLAIM: &str = "DELETE FROM room_settings WHERE room = $1 AND created_at_ms = $2";
const UNCLAIM_MEMBERS: &str = "DELETE FROM room_members WHERE room = $1 AND member_seq = 0";
const MEMBER_SET: &str = "INSERT INTO room_members (room, user_id, user_name, role, member_seq) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (room, user_id) DO UPDATE SET \
     user_name = excluded.user_name, role = excluded.role, member_seq = excluded.member_seq \
     WHERE room_members.member_seq < excluded.member_seq";
const BAN_SET: &str = "INSERT INTO room_members (room, user_id, user_name, banned, ban_seq) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (room, user_id) DO UPDATE SET \
     banned = excluded.banned, ban_seq = excluded.ban_seq \
     WHERE room_members.ban_seq < excluded.ban_seq";
const MUTE_SET: &str =
    "INSERT INTO room_members (room, user_id, user_name, muted_until_ms, mute_seq) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (room, user_id) DO UPDATE SET \
     muted_until_ms = excluded.muted_until_ms, mute_seq = excluded.mute_seq \
     WHERE room_members.mute_seq < excluded.mute_seq";
/// A user's rooms: those they are a member of, and public ones they marked read.
const USER_ROOMS: &str = "SELECT x.room AS t1, COALESCE(s.kind, 'public') AS t2, m.role AS t3, \
     COALESCE(r.last_seq, 0) AS n1, COALESCE(k.read_seq, 0) AS n2, CAST(NULL AS BIGINT) AS n3 \
     FROM (SELECT room FROM room_members WHERE user_id = $1 AND role IS NOT NULL \
           UNION SELECT room FROM read_markers WHERE user_id = $1) x \
     LEFT JOIN room_settings s ON s.room = x.room \
     LEFT JOIN room_members m ON m.room = x.room AND m.user_id = $1 \
     LEFT JOIN rooms r ON r.name = x.room \
     LEFT JOIN read_markers k ON k.room = x.room AND k.user_id = $1 \
     WHERE x.room > $2 AND (s.kind IS NULL OR s.kind = 'public' OR m.role IS NOT NULL) \
     AND COALESCE(m.banned, 0) = 0 ORDER BY x.room LIMIT $3";
/// Every room with messages, with its kind.
const ROOMS_WITH_KIND: &str = "SELECT r.name AS t1, COALESCE(s.kind, 'public') AS t2, \
     CAST(NULL AS TEXT) AS t3, r.last_seq AS n1, CAST(NULL AS BIGINT) AS n2, \
     CAST(NULL AS BIGINT) AS n3 FROM rooms r LEFT JOIN room_settings s ON s.room = r.name \
     ORDER BY r.name";
/// Unread messages after the user's stored marker (or `$2`, when higher):
/// the newest [`UNREAD_CAP`] of them, how many mention a name, and the marker,
/// in one round trip.
const READING_FROM_MARKER: &str = "WITH m AS (SELECT CASE WHEN COALESCE((SELECT read_seq \
     FROM read_markers WHERE user_id = $3 AND room = $1), 0) > $2 THEN COALESCE((SELECT \
     read_seq FROM read_markers WHERE user_id = $3 AND room = $1), 0) ELSE $2 END AS s) \
     SELECT CAST(NULL AS TEXT) AS t1, CAST(NULL AS TEXT) AS t2, CAST(NULL AS TEXT) AS t3, \
     COUNT(t.content) AS n1, \
     COALESCE(SUM(CASE WHEN lower(t.content) LIKE $4 ESCAPE '!' THEN 1 ELSE 0 END), 0) AS n2, \
     (SELECT s FROM m) AS n3 FROM (SELECT e.content FROM messages e, m WHERE e.room = $1 \
     AND e.seq > m.s AND e.kind = 'message' AND e.deleted = false AND e.user_id <> $3 \
     ORDER BY e.seq DESC LIMIT 1000) t";
/// A marker moves forward only.
const MARKER_SAVE: &str = "INSERT INTO read_markers (user_id, room, read_seq, updated_at_ms) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (user_id, room) DO UPDATE SET \
     read_seq = excluded.read_seq, updated_at_ms = excluded.updated_at_ms \
     WHERE read_markers.read_seq < excluded.read_seq";

fn text(s: &str) -> Param {
    Param::Text(s.to_string())
}

fn standing_of(row: &Row) -> Standing {
    Standing {
        name: row.t2.clone().unwrap_or_default(),
        role: row.t3.as_deref().and_then(Role::parse),
        banned: row.n1.unwrap_or(0) != 0,
        muted_until_ms: row.n2.unwrap_or(0),
    }
}

fn kind_of(rows: &[Row]) -> RoomKind {
    rows.first()
        .and_then(|r| r.t1.as_deref())
        .and_then(RoomKind::parse)
        .unwrap_or_default()
}

/// A room's kind and every user it knows, for its actor.
pub async fn room_access(store: &dyn Store, room: &str) -> Result<Access, StoreError> {
    let settings = store.raw_query(SETTINGS, vec![text(room)]).await?;
    let users = store.raw_query(ROOM_USERS, vec![text(room)]).await?;
    Ok(Access {
        kind: kind_of(&settings),
        users: users
            .iter()
            .filter_map(|row| Some((row.t1.clone()?, standing_of(row))))
            .collect(),
        partial: false,
    })
}

/// A room's kind and one user's standing in it: for reads that don't go
/// through the room's actor (history, stats, the seed upgrade).
pub async fn standing(
    store: &dyn Store,
    room: &str,
    user: &str,
) -> Result<(RoomKind, Option<Standing>), StoreError> {
    let rows = store
        .raw_query(STANDING, vec![text(room), text(user)])
        .await?;
    let standing = rows.first().filter(|r| r.n1.is_some()).map(standing_of);
    Ok((kind_of(&rows), standing))
}

/// The answer to a claim of a new room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    Created,
    /// The name is taken: by a room of this kind (public: it had messages or
    /// members before any claim).
    Taken(RoomKind),
}

/// Claims `room` as a new room of `kind` with these first members, unless
/// the name is in use. `created_at_ms` tells this claim apart (to undo it).
pub async fn claim(
    store: &dyn Store,
    room: &str,
    kind: RoomKind,
    owner: Option<&str>,
    members: &[NamedMember],
    created_at_ms: i64,
) -> Result<Claim, StoreError> {
    let settings = store.raw_query(SETTINGS, vec![text(room)]).await?;
    if !settings.is_empty() {
        return Ok(Claim::Taken(kind_of(&settings)));
    }
    let used = store.raw_query(ROOM_USED, vec![text(room)]).await?;
    if used
        .first()
        .is_some_and(|r| r.n1.unwrap_or(0) > 0 || r.n2.unwrap_or(0) > 0)
    {
        return Ok(Claim::Taken(RoomKind::Public));
    }
    let claimed = store
        .raw_exec(vec![Apply(
            CLAIM,
            vec![
                text(room),
                text(kind.as_str()),
                Param::OptText(owner.map(str::to_string)),
                Param::Int(created_at_ms),
            ],
        )])
        .await?;
    if claimed.first().copied().unwrap_or(0) == 0 {
        let settings = store.raw_query(SETTINGS, vec![text(room)]).await?;
        return Ok(Claim::Taken(kind_of(&settings)));
    }
    let steps = members
        .iter()
        .map(|m| {
            Apply(
                CLAIM_MEMBER,
                vec![text(room), text(&m.id), text(&m.name), text(&m.role)],
            )
        })
        .collect();
    store.raw_exec(steps).await?;
    Ok(Claim::Created)
}

/// Undoes a claim whose `room_created` event could not be stored.
pub async fn unclaim(store: &dyn Store, room: &str, created_at_ms: i64) -> Result<(), StoreError> {
    store
        .raw_exec(vec![
            Apply(UNCLAIM, vec![text(room), Param::Int(created_at_ms)]),
            Apply(UNCLAIM_MEMBERS, vec![text(room)]),
        ])
        .await
        .map(|_| ())
}

/// One page of a room's members (by id), and (when `banned` asks for it) who is banned.
pub async fn members(
    store: &dyn Store,
    room: &str,
    after: &str,
    limit: u32,
    banned: bool,
) -> Result<(Vec<(String, Standing)>, Vec<(String, Standing)>), StoreError> {
    let page = store
        .raw_query(
            MEMBERS_PAGE,
            vec![text(room), text(after), Param::Int(i64::from(limit))],
        )
        .await?;
    let bans = if banned {
        store
            .raw_query(BANNED_PAGE, vec![text(room), Param::Int(1000)])
            .await?
    } else {
        Vec::new()
    };
    let pairs = |rows: Vec<Row>| {
        rows.into_iter()
            .filter_map(|row| Some((row.t1.clone()?, standing_of(&row))))
            .collect()
    };
    Ok((pairs(page), pairs(bans)))
}

/// One of a user's rooms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRoom {
    pub name: String,
    pub kind: RoomKind,
    pub role: Option<Role>,
    pub last_seq: u64,
    pub read_seq: u64,
}

/// A user's rooms (member of, or marked read), by name after `after`.
pub async fn user_rooms(
    store: &dyn Store,
    user: &str,
    after: &str,
    limit: u32,
) -> Result<Vec<UserRoom>, StoreError> {
    let rows = store
        .raw_query(
            USER_ROOMS,
            vec![text(user), text(after), Param::Int(i64::from(limit))],
        )
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            Some(UserRoom {
                name: row.t1?,
                kind: row
                    .t2
                    .as_deref()
                    .and_then(RoomKind::parse)
                    .unwrap_or_default(),
                role: row.t3.as_deref().and_then(Role::parse),
                last_seq: row.n1.unwrap_or(0).max(0) as u64,
                read_seq: row.n2.unwrap_or(0).max(0) as u64,
            })
        })
        .collect())
}

/// Every room that has messages, with its kind and newest seq, by name.
pub async fn rooms_with_kind(
    store: &dyn Store,
) -> Result<Vec<(String, RoomKind, u64)>, StoreError> {
    let rows = store.raw_query(ROOMS_WITH_KIND, Vec::new()).await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            Some((
                row.t1?,
                row.t2
                    .as_deref()
                    .and_then(RoomKind::parse)
                    .unwrap_or_default(),
                row.n1.unwrap_or(0).max(0) as u64,
            ))
        })
        .collect())
}

/// `@name` as a LIKE pattern, lower case, with LIKE's wildcards escaped by `!`.
fn mention_pattern(name: &str) -> String {
    let mut pattern = String::from("%@");
    for c in name.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '!') {
            pattern.push('!');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// A user's reading of a room: marker, unread, mentions. `pending`: a newer
/// marker than the stored one, if known (one not written yet, see
/// [`crate::markers::ReadMarkers`]).
pub async fn reading(
    store: &dyn Store,
    room: &str,
    user: &str,
    name: &str,
    pending: Option<u64>,
) -> Result<ReadState, StoreError> {
    let pending = pending.unwrap_or(0).min(i64::MAX as u64) as i64;
    let rows = store
        .raw_query(
            READING_FROM_MARKER,
            vec![
                text(room),
                Param::Int(pending),
                text(user),
                Param::Text(mention_pattern(name)),
            ],
        )
        .await?;
    let row = rows.into_iter().next().unwrap_or_default();
    let cap = |n: Option<i64>| n.unwrap_or(0).clamp(0, UNREAD_CAP) as u64;
    Ok(ReadState {
        read_seq: row.n3.unwrap_or(0).max(0) as u64,
        unread: cap(row.n1),
        mentions: cap(row.n2),
    })
}

/// Stores read markers (user, room, seq); none moves back.
pub async fn save_markers(
    store: &dyn Store,
    markers: Vec<(String, String, u64)>,
) -> Result<(), StoreError> {
    if markers.is_empty() {
        return Ok(());
    }
    let now = crate::protocol::now_ms();
    let steps = markers
        .into_iter()
        .map(|(user, room, seq)| {
            Apply(
                MARKER_SAVE,
                vec![
                    Param::Text(user),
                    Param::Text(room),
                    Param::Int(seq.min(i64::MAX as u64) as i64),
                    Param::Int(now),
                ],
            )
        })
        .collect();
    store.raw_exec(steps).await.map(|_| ())
}

/// Applies membership events now (cluster mode: the instance that took
/// them, so reads elsewhere see them before the persist feed stores them).
pub async fn apply_events(store: &dyn Store, events: &[ChatMessage]) -> Result<(), StoreError> {
    let steps: Vec<Apply> = events.iter().flat_map(apply_membership).collect();
    if steps.is_empty() {
        return Ok(());
    }
    store.raw_exec(steps).await.map(|_| ())
}

/// What storing a membership event does to the room's settings and members.
pub(super) fn apply_membership(entry: &ChatMessage) -> Vec<Apply> {
    let body = EventBody::of(entry);
    let seq = || Param::Int(entry.seq.min(i64::MAX as u64) as i64);
    let room = || text(&entry.room);
    let subject = entry.target.clone().unwrap_or_default();
    let name = || Param::Text(body.name.clone().unwrap_or_default());
    let member = |user: &str, name: &str, role: Option<&str>| {
        Apply(
            MEMBER_SET,
            vec![
                room(),
                text(user),
                text(name),
                Param::OptText(role.map(str::to_string)),
                seq(),
            ],
        )
    };
    match entry.kind {
        Kind::RoomCreated => {
            let kind = body
                .kind
                .as_deref()
                .and_then(RoomKind::parse)
                .unwrap_or_default();
            let owner = (kind == RoomKind::Private).then(|| entry.user_id.clone());
            let mut steps = vec![Apply(
                CLAIM,
                vec![
                    room(),
                    text(kind.as_str()),
                    Param::OptText(owner),
                    Param::Int(entry.timestamp_ms),
                ],
            )];
            steps.extend(
                body.members
                    .iter()
                    .map(|m| member(&m.id, &m.name, Some(&m.role))),
            );
            steps
        }
        Kind::MemberAdded => {
            let role = body.role.clone().unwrap_or_else(|| "member".into());
            vec![member(
                &subject,
                body.name.as_deref().unwrap_or_default(),
                Some(&role),
            )]
        }
        Kind::MemberRemoved => {
            let mut steps = Vec::new();
            if !body.connections_only {
                steps.push(member(
                    &subject,
                    body.name.as_deref().unwrap_or_default(),
                    None,
                ));
            }
            if body.reason.as_deref() == Some("banned") {
                steps.push(Apply(
                    BAN_SET,
                    vec![room(), text(&subject), name(), Param::Int(1), seq()],
                ));
            }
            steps
        }
        Kind::MemberUnbanned => vec![Apply(
            BAN_SET,
            vec![room(), text(&subject), name(), Param::Int(0), seq()],
        )],
        Kind::MemberMuted => vec![Apply(
            MUTE_SET,
            vec![
                room(),
                text(&subject),
                name(),
                Param::Int(body.until_ms.unwrap_or(0).max(0)),
                seq(),
            ],
        )],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::mention_pattern;

    #[test]
    fn mention_patterns_escape_like_wildcards() {
        assert_eq!(mention_pattern("Ann"), "%@ann%");
        assert_eq!(mention_pattern("50%_off!"), "%@50!%!_off!!%");
    }
}

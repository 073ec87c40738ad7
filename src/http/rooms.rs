//! REST for rooms, members and the caller's rooms (docs/protocol.md, section
//! 7b). Membership changes go to the room's actor as an [`Act`] (through the
//! registry), which checks them against the room's members, sequences the
//! event and answers once it is durable.

use super::extract::{query_params, read_body};
use super::{json, Answer, Authenticated, ReadableRoom, Reader, RoomPath};
use crate::access::{self, Action, Actor, EventBody, NamedMember, Role, RoomKind};
use crate::auth::Identity;
use crate::broker::Draft;
use crate::chat::{ChatMessage, Kind};
use crate::message::{Act, Acted};
use crate::protocol::{self, ErrorCode, Rejection, UserInfo};
use crate::registry::{ActIn, ListActive};
use crate::store::rooms::{self as stored, Claim, UserRoom};
use crate::AppDeps;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// Bodies of these endpoints are a few fields.
const BODY_MAX: usize = 4096;
/// `GET /api/rooms`, `/api/me/rooms` and members pages: 100 unless `limit`
/// says otherwise, at most 1000.
const PAGE_DEFAULT: usize = 100;
const PAGE_MAX: usize = 1000;
/// How long a REST action waits for its event to be durable.
const ACT_TIMEOUT: Duration = Duration::from_secs(30);
/// User ids in bodies and paths: like a token's `sub`.
const USER_ID_MAX: usize = 256;

fn unavailable(error: crate::store::StoreError) -> Rejection {
    tracing::warn!(%error, "a rooms query failed");
    Rejection::new(ErrorCode::Unavailable, "the store is unavailable")
}

fn field_error(message: &str) -> Rejection {
    Rejection::new(ErrorCode::InvalidFrame, message)
}

/// The JSON object of a request body.
async fn body_of(
    req: &HttpRequest,
    payload: web::Payload,
    deps: &AppDeps,
) -> Result<serde_json::Map<String, Value>, Rejection> {
    let body = read_body(req, payload, BODY_MAX, deps).await?;
    if body.is_empty() {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(field_error("the body is a JSON object")),
        Err(_) => Err(Rejection::new(
            ErrorCode::InvalidJson,
            "the body is not valid JSON",
        )),
    }
}

fn optional_str<'a>(
    body: &'a serde_json::Map<String, Value>,
    key: &str,
) -> Result<Option<&'a str>, Rejection> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(field_error(&format!("\"{key}\" must be a string"))),
    }
}

fn user_id(raw: &str) -> Result<String, Rejection> {
    if raw.is_empty() || raw.len() > USER_ID_MAX || raw.contains('\0') {
        return Err(field_error("a user id is a string of 1-256 bytes"));
    }
    Ok(raw.to_string())
}

/// A display name given for another user; empty when none (or a bad one):
/// the room then uses the name it knows, and frames show the id.
fn display_name(given: Option<&str>) -> String {
    given
        .and_then(|n| protocol::check_display_name(n).ok())
        .unwrap_or_default()
}

fn page_limit(req: &HttpRequest) -> Result<(usize, String), Rejection> {
    let query = query_params(req);
    let limit = match query.get("limit") {
        None => PAGE_DEFAULT,
        Some(raw) => (protocol::parse_cursor_param("limit", raw)? as usize).min(PAGE_MAX),
    };
    Ok((limit, query.get("after").cloned().unwrap_or_default()))
}

/// Sends an action to the room's actor and waits for its answer: the event
/// (`None`: it would change nothing). In cluster mode the event is applied
/// to the store at once too, so reads on every instance see it now.
async fn act(
    deps: &AppDeps,
    room: &str,
    draft: Draft,
    check: Option<(Actor, Action)>,
) -> Result<Option<Acted>, Rejection> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    deps.registry.do_send(ActIn(Act {
        room: room.to_string(),
        draft,
        check,
        reply,
        leased: false,
    }));
    let lost = || Rejection::new(ErrorCode::Unavailable, "the room did not answer; try again");
    let event = match tokio::time::timeout(ACT_TIMEOUT, answer).await {
        Ok(Ok(result)) => result?,
        _ => return Err(lost()),
    };
    if let Some(Acted { event, .. }) = &event {
        if deps.broker.shared() {
            if let Err(error) =
                stored::apply_events(deps.store.as_ref(), &[(**event).clone()]).await
            {
                // The persist feed applies it anyway, a moment later.
                tracing::warn!(%error, room, "applying a membership event now failed");
            }
        }
    }
    Ok(event)
}

/// Room actions count against the caller's `limits.joins_per_sec`, like
/// joins: each one writes to the database and adds an event to a room.
fn take_turn(deps: &AppDeps, identity: &Identity) -> Result<(), Rejection> {
    deps.join_limiter
        .check(&Arc::from(identity.user.id.as_str()))
}

/// Cluster mode: a private or direct room's kind also goes to Redis, so an
/// instance opening the room while the store is down still knows it is
/// private. Undoes the claim when that fails.
async fn keep_kind(
    deps: &AppDeps,
    room: &str,
    kind: RoomKind,
    claimed_at: i64,
) -> Result<(), Rejection> {
    if !kind.members_only() {
        return Ok(());
    }
    if let Err(error) = deps.broker.set_room_kind(room, kind.as_str()).await {
        tracing::warn!(%error, room, "keeping a room's kind in Redis failed");
        let _ = stored::unclaim(deps.store.as_ref(), room, claimed_at).await;
        return Err(Rejection::new(
            ErrorCode::Unavailable,
            "the room could not be created; try again",
        ));
    }
    Ok(())
}

/// An event of `kind` by `me` about `subject` with these details.
fn draft(me: &Arc<UserInfo>, kind: Kind, subject: Option<&str>, body: &EventBody) -> Draft {
    let mut draft = Draft::new(me.clone(), body.to_content(), None);
    draft.kind = kind;
    draft.target = subject.map(str::to_string);
    draft
}

fn room_json(name: &str, kind: RoomKind, last_seq: u64) -> Value {
    json!({"name": name, "kind": kind.as_str(), "last_seq": last_seq})
}

fn members_json(members: &[NamedMember]) -> Value {
    Value::Array(
        members
            .iter()
            .map(|m| json!({"id": m.id, "name": m.name}))
            .collect(),
    )
}

fn created(body: Value) -> HttpResponse {
    HttpResponse::build(StatusCode::CREATED)
        .content_type("application/json")
        .body(body.to_string())
}

/// `POST /api/rooms {"name","kind"}`: a new public or private room, owned by the caller.
pub async fn create_room(
    req: HttpRequest,
    payload: web::Payload,
    Authenticated(identity): Authenticated,
    deps: web::Data<AppDeps>,
) -> Answer {
    let body = body_of(&req, payload, &deps).await?;
    let name = optional_str(&body, "name")?.ok_or_else(|| field_error("missing \"name\""))?;
    protocol::check_room(name).map_err(|e| e.in_room(Some(name)))?;
    if name.starts_with(access::DIRECT_PREFIX) {
        return Err(Rejection::new(
            ErrorCode::InvalidRoom,
            "names starting with dm: are direct rooms; open one with POST /api/dm",
        )
        .in_room(Some(name)));
    }
    identity.rooms.check(name)?;
    take_turn(&deps, &identity)?;
    let kind = match optional_str(&body, "kind")?.unwrap_or("public") {
        "public" => RoomKind::Public,
        "private" => RoomKind::Private,
        _ => return Err(field_error("\"kind\" is \"public\" or \"private\"")),
    };
    let me = identity.user.clone();
    let owner = NamedMember {
        id: me.id.clone(),
        name: me.name.clone(),
        role: Role::Owner.as_str().into(),
    };
    let now = protocol::now_ms();
    let members = [owner];
    match stored::claim(deps.store.as_ref(), name, kind, Some(&me.id), &members, now)
        .await
        .map_err(unavailable)?
    {
        Claim::Created => keep_kind(&deps, name, kind, now).await?,
        Claim::Taken(_) => {
            return Err(Rejection::new(
                ErrorCode::RoomExists,
                "a room with this name exists already",
            )
            .in_room(Some(name)))
        }
    }
    let body = EventBody {
        kind: Some(kind.as_str().into()),
        members: members.to_vec(),
        ..EventBody::default()
    };
    let event = match act(
        &deps,
        name,
        draft(&me, Kind::RoomCreated, None, &body),
        None,
    )
    .await
    {
        Ok(Some(event)) => event,
        Ok(None) | Err(_) => {
            let _ = stored::unclaim(deps.store.as_ref(), name, now).await;
            return Err(Rejection::new(
                ErrorCode::Unavailable,
                "the room could not be created; try again",
            ));
        }
    };
    deps.tell_user(
        &me.id,
        &protocol::room_added_json(name, kind.as_str(), &me),
        None,
    );
    let mut room = room_json(name, kind, event.event.seq);
    room["role"] = "owner".into();
    Ok(created(json!({ "room": room })))
}

/// `POST /api/dm {"user","name"}`: the direct room of the caller and `user`,
/// opened the first time (201), the same one afterwards (200).
pub async fn open_direct(
    req: HttpRequest,
    payload: web::Payload,
    Authenticated(identity): Authenticated,
    deps: web::Data<AppDeps>,
) -> Answer {
    let body = body_of(&req, payload, &deps).await?;
    let other =
        user_id(optional_str(&body, "user")?.ok_or_else(|| field_error("missing \"user\""))?)?;
    let me = identity.user.clone();
    if other == me.id {
        return Err(field_error("a direct room is with another user"));
    }
    let room = access::direct_room_name(&me.id, &other);
    identity.rooms.check(&room)?;
    take_turn(&deps, &identity)?;
    let given = display_name(optional_str(&body, "name")?);
    let them = UserInfo {
        name: if given.is_empty() {
            other.chars().take(32).collect()
        } else {
            given
        },
        id: other,
    };
    let members = [&*me, &them].map(|u| NamedMember {
        id: u.id.clone(),
        name: u.name.clone(),
        role: Role::Member.as_str().into(),
    });
    let now = protocol::now_ms();
    match stored::claim(
        deps.store.as_ref(),
        &room,
        RoomKind::Direct,
        None,
        &members,
        now,
    )
    .await
    .map_err(unavailable)?
    {
        Claim::Created => {
            keep_kind(&deps, &room, RoomKind::Direct, now).await?;
            let body = EventBody {
                kind: Some(RoomKind::Direct.as_str().into()),
                members: members.to_vec(),
                ..EventBody::default()
            };
            let event = act(
                &deps,
                &room,
                draft(&me, Kind::RoomCreated, None, &body),
                None,
            )
            .await;
            let Ok(Some(event)) = event else {
                let _ = stored::unclaim(deps.store.as_ref(), &room, now).await;
                return Err(Rejection::new(
                    ErrorCode::Unavailable,
                    "the direct room could not be opened; try again",
                ));
            };
            let added = protocol::room_added_json(&room, RoomKind::Direct.as_str(), &me);
            deps.tell_user(&me.id, &added, None);
            deps.tell_user(&them.id, &added, None);
            let mut answer = room_json(&room, RoomKind::Direct, event.event.seq);
            answer["members"] = members_json(&members);
            Ok(created(json!({ "room": answer })))
        }
        Claim::Taken(RoomKind::Direct) => {
            let (stored_members, _) = stored::members(deps.store.as_ref(), &room, "", 2, false)
                .await
                .map_err(unavailable)?;
            let last_seq = deps.store.last_seq(&room).await.map_err(unavailable)?;
            let members: Vec<NamedMember> = stored_members
                .into_iter()
                .map(|(id, s)| NamedMember {
                    id,
                    name: s.name,
                    role: Role::Member.as_str().into(),
                })
                .collect();
            let mut answer = room_json(&room, RoomKind::Direct, last_seq);
            answer["members"] = members_json(&members);
            Ok(json(json!({ "room": answer }).to_string()))
        }
        Claim::Taken(_) => Err(Rejection::new(
            ErrorCode::RoomExists,
            "a room with this name exists already",
        )),
    }
}

/// Runs a member action and answers `{"event": …}`, telling the subject when
/// they gained or lost a room.
async fn run_action(
    deps: &AppDeps,
    identity: &Identity,
    room: &str,
    subject: UserInfo,
    action: Action,
) -> Answer {
    identity.rooms.check(room)?;
    take_turn(deps, identity)?;
    let me = identity.user.clone();
    let (kind, body) = access::event_for(&action, &subject, &me.id, RoomKind::Public);
    let actor = Actor {
        user: me.clone(),
        server_admin: identity.server_admin,
    };
    let event = act(
        deps,
        room,
        draft(&me, kind, Some(&subject.id), &body),
        Some((actor, action)),
    )
    .await
    .map_err(|e| e.in_room(Some(room)))?;
    let Some(Acted { event, kind }) = event else {
        return Ok(json(r#"{"event":null}"#.into()));
    };
    tell_subject(deps, &event, kind, &me);
    Ok(json(format!("{{\"event\":{}}}", event.frame_json())))
}

/// A member added to a room hears `room_added`; one removed from a private
/// or direct room, `room_removed`.
fn tell_subject(deps: &AppDeps, event: &ChatMessage, kind: RoomKind, by: &UserInfo) {
    let Some(subject) = event.target.as_deref() else {
        return;
    };
    let body = EventBody::of(event);
    let frame = match event.kind {
        Kind::MemberAdded => protocol::room_added_json(&event.room, kind.as_str(), by),
        // Not a kick from a public room, which only takes connections out.
        Kind::MemberRemoved if !body.connections_only => {
            let reason = body.reason.as_deref().unwrap_or("removed");
            protocol::room_removed_json(&event.room, reason)
        }
        _ => return,
    };
    deps.tell_user(subject, &frame, None);
}

/// `POST /api/rooms/{room}/members {"user","name","role"}`: invite, or change a role.
pub async fn invite(
    req: HttpRequest,
    RoomPath(room): RoomPath,
    payload: web::Payload,
    Authenticated(identity): Authenticated,
    deps: web::Data<AppDeps>,
) -> Answer {
    let body = body_of(&req, payload, &deps).await?;
    let id = user_id(optional_str(&body, "user")?.ok_or_else(|| field_error("missing \"user\""))?)?;
    let role = match optional_str(&body, "role")?.unwrap_or("member") {
        "member" => Role::Member,
        "admin" => Role::Admin,
        _ => return Err(field_error("\"role\" is \"member\" or \"admin\"")),
    };
    let subject = UserInfo {
        name: display_name(optional_str(&body, "name")?),
        id,
    };
    run_action(&deps, &identity, &room, subject, Action::Invite(role)).await
}

/// `DELETE /api/rooms/{room}/members/{user}`: remove a member (yourself: leave).
pub async fn remove(
    req: HttpRequest,
    RoomPath(room): RoomPath,
    Authenticated(identity): Authenticated,
    deps: web::Data<AppDeps>,
) -> Answer {
    let id = user_id(req.match_info().get("user").unwrap_or_default())?;
    let subject = UserInfo {
        name: String::new(),
        id,
    };
    run_action(&deps, &identity, &room, subject, Action::Remove).await
}

/// `POST /api/rooms/{room}/members/{user}/{kick|ban|unban|mute}`.
pub async fn moderate(
    req: HttpRequest,
    RoomPath(room): RoomPath,
    payload: web::Payload,
    Authenticated(identity): Authenticated,
    deps: web::Data<AppDeps>,
) -> Answer {
    let id = user_id(req.match_info().get("user").unwrap_or_default())?;
    // Optional: `name`, the subject's display name as the caller knows it.
    let body = body_of(&req, payload, &deps).await?;
    let action = match req.match_info().get("action").unwrap_or_default() {
        "kick" => Action::Kick,
        "ban" => Action::Ban,
        "unban" => Action::Unban,
        "mute" => {
            let seconds = match body.get("seconds") {
                Some(v) => v
                    .as_u64()
                    .filter(|&s| s <= access::MAX_MUTE_SECS)
                    .ok_or_else(|| field_error("\"seconds\" is an integer 0-2592000"))?,
                None => return Err(field_error("missing \"seconds\"")),
            };
            let until = if seconds == 0 {
                0
            } else {
                protocol::now_ms() + (seconds as i64) * 1000
            };
            Action::Mute(until)
        }
        _ => return Err(Rejection::new(ErrorCode::NotFound, "no such endpoint")),
    };
    let subject = UserInfo {
        name: display_name(optional_str(&body, "name")?),
        id,
    };
    run_action(&deps, &identity, &room, subject, action).await
}

/// `GET /api/rooms/{room}/members`: a page of members by id; owners and
/// admins also see who is banned.
pub async fn list_members(
    req: HttpRequest,
    ReadableRoom(room, identity): ReadableRoom,
    deps: web::Data<AppDeps>,
) -> Answer {
    let reader = identity.as_ref().map(|i| i.user.id.as_str());
    access::check_reader(deps.store.as_ref(), &room, reader).await?;
    let (limit, after) = page_limit(&req)?;
    let (kind, mine) = stored::standing(deps.store.as_ref(), &room, reader.unwrap_or_default())
        .await
        .map_err(unavailable)?;
    let manager = identity.as_ref().is_some_and(|i| i.server_admin)
        || mine.and_then(|s| s.role).is_some_and(|r| r >= Role::Admin);
    let (mut page, banned) = stored::members(
        deps.store.as_ref(),
        &room,
        &after,
        limit as u32 + 1,
        manager,
    )
    .await
    .map_err(unavailable)?;
    let next_after = (page.len() > limit).then(|| {
        page.truncate(limit);
        page.last().map(|(id, _)| id.clone())
    });
    let now = protocol::now_ms();
    let members: Vec<Value> = page
        .iter()
        .map(|(id, s)| {
            let mut m = json!({
                "id": id,
                "name": s.name,
                "role": s.role.map_or("member", Role::as_str),
            });
            if s.muted_until_ms > now {
                m["muted_until"] = protocol::format_timestamp(s.muted_until_ms).into();
            }
            m
        })
        .collect();
    let mut answer = json!({
        "room": room,
        "kind": kind.as_str(),
        "members": members,
        "next_after": next_after.flatten(),
    });
    if manager {
        answer["banned"] = banned
            .iter()
            .map(|(id, s)| json!({"id": id, "name": s.name}))
            .collect();
    }
    Ok(json(answer.to_string()))
}

/// A user's room as `/api/me/rooms` and `/api/rooms` show it, with what is unread.
async fn my_room_json(deps: &AppDeps, me: &UserInfo, room: &UserRoom) -> Result<Value, Rejection> {
    // A marker still waiting to be written counts already.
    let known = room
        .read_seq
        .max(deps.markers.pending(&me.id, &room.name).unwrap_or(0));
    let reading = stored::reading(
        deps.store.as_ref(),
        &room.name,
        &me.id,
        &me.name,
        Some(known),
    )
    .await
    .map_err(unavailable)?;
    let mut answer = room_json(&room.name, room.kind, room.last_seq);
    if let Some(role) = room.role {
        answer["role"] = role.as_str().into();
    }
    answer["read_seq"] = reading.read_seq.into();
    answer["unread"] = reading.unread.into();
    answer["mentions"] = reading.mentions.into();
    if room.kind == RoomKind::Direct {
        let (members, _) = stored::members(deps.store.as_ref(), &room.name, "", 2, false)
            .await
            .map_err(unavailable)?;
        answer["members"] = members
            .iter()
            .map(|(id, s)| json!({"id": id, "name": s.name}))
            .collect();
    }
    Ok(answer)
}

/// `GET /api/me/rooms`: the caller's rooms, by name, with unread counts.
pub async fn my_rooms(
    req: HttpRequest,
    Authenticated(identity): Authenticated,
    deps: web::Data<AppDeps>,
) -> Answer {
    let (limit, after) = page_limit(&req)?;
    let mut rooms = stored::user_rooms(
        deps.store.as_ref(),
        &identity.user.id,
        &after,
        limit as u32 + 1,
    )
    .await
    .map_err(unavailable)?;
    rooms.retain(|r| identity.rooms.allows(&r.name));
    let next_after = (rooms.len() > limit).then(|| {
        rooms.truncate(limit);
        rooms.last().map(|r| r.name.clone())
    });
    let mut page = Vec::with_capacity(rooms.len());
    for room in &rooms {
        page.push(my_room_json(&deps, &identity.user, room).await?);
    }
    Ok(json(
        json!({"rooms": page, "next_after": next_after.flatten()}).to_string(),
    ))
}

/// `GET /api/rooms`: public rooms and the caller's private and direct ones,
/// by name, one page at a time; the caller's own rooms with unread counts.
pub async fn list_rooms(
    req: HttpRequest,
    Reader(identity): Reader,
    deps: web::Data<AppDeps>,
) -> Answer {
    let stored = stored::rooms_with_kind(deps.store.as_ref())
        .await
        .map_err(unavailable)?;
    let mine: HashMap<String, UserRoom> = match &identity {
        Some(identity) => {
            stored::user_rooms(deps.store.as_ref(), &identity.user.id, "", u32::MAX >> 1)
                .await
                .map_err(unavailable)?
                .into_iter()
                .map(|r| (r.name.clone(), r))
                .collect()
        }
        None => HashMap::new(),
    };
    let active = deps.registry.send(ListActive).await.unwrap_or_default();
    let mut rooms: BTreeMap<String, (RoomKind, u64, usize)> = stored
        .into_iter()
        .map(|(name, kind, last_seq)| (name, (kind, last_seq, 0)))
        .collect();
    for room in active {
        // A room open here that has stored nothing yet is a public one
        // (a private room starts with its `room_created` event).
        if room.name.starts_with(access::DIRECT_PREFIX) && !rooms.contains_key(&room.name) {
            continue;
        }
        let entry = rooms.entry(room.name).or_insert((RoomKind::Public, 0, 0));
        entry.1 = entry.1.max(room.last_seq);
        entry.2 = room.online;
    }
    rooms.retain(|name, (kind, _, _)| !kind.members_only() || mine.contains_key(name));
    // In cluster mode users online through other instances count too.
    let names: Vec<String> = rooms.keys().cloned().collect();
    if let Some(online) = deps.broker.online(&names).await {
        for (name, count) in online {
            if let Some(entry) = rooms.get_mut(&name) {
                entry.2 = entry.2.max(count);
            }
        }
    }
    let (limit, after) = page_limit(&req)?;
    let mut page: Vec<(String, (RoomKind, u64, usize))> = rooms
        .into_iter()
        .filter(|(name, _)| *name > after)
        .filter(|(name, _)| identity.as_ref().is_none_or(|i| i.rooms.allows(name)))
        .take(limit + 1)
        .collect();
    let next_after = (page.len() > limit).then(|| {
        page.truncate(limit);
        page.last().map(|(name, _)| name.clone())
    });
    let mut listed = Vec::with_capacity(page.len());
    for (name, (kind, last_seq, online)) in page {
        // A public room's entry is the v1 one (`kind` only when it is not public).
        let mut room = json!({"name": name, "last_seq": last_seq, "online": online});
        if kind.members_only() {
            room["kind"] = kind.as_str().into();
        }
        if let (Some(identity), Some(own)) = (&identity, mine.get(&name)) {
            let own = UserRoom {
                last_seq: own.last_seq.max(last_seq),
                ..own.clone()
            };
            let detail = my_room_json(&deps, &identity.user, &own).await?;
            for key in ["read_seq", "unread", "mentions", "role", "members"] {
                if let Some(value) = detail.get(key) {
                    room[key] = value.clone();
                }
            }
        }
        listed.push(room);
    }
    Ok(json(
        json!({ "rooms": listed, "next_after": next_after.flatten() }).to_string(),
    ))
}

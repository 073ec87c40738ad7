//! What handlers take from a request, checked before the handler runs: who is
//! asking (docs/protocol.md, "Presenting a token"), the `{room}` of the path,
//! the `Origin` of a WebSocket upgrade. Each one fails with the contract's
//! [`Rejection`], which answers as JSON ([`actix_web::ResponseError`]).
//!
//! A handler's extractors run in the order of its arguments, and the first
//! that fails answers: the order of the arguments is the order of the checks.

use crate::auth::Identity;
use crate::protocol::{self, ErrorCode, Rejection, UserInfo};
use crate::AppDeps;
use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};
use std::collections::BTreeMap;
use std::future::{ready, Ready};
use std::sync::Arc;
use std::time::Duration;

/// An identity from a token, which is required: `/ws` (guests get a token
/// from `/api/login`). A presented token must verify.
pub struct Authenticated(pub Identity);

/// A reader of rooms (REST reads, the seed upgrade): a presented token must
/// verify; with none, `None` (a guest) when guest login is on, else 401.
pub struct Reader(pub Option<Identity>);

impl FromRequest for Authenticated {
    type Error = Rejection;
    type Future = Ready<Result<Self, Rejection>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(deps_of(req).and_then(|deps| match presented_token(req) {
            Some(token) => deps.auth.verify(&token).map(Authenticated),
            None => Err(token_required()),
        }))
    }
}

impl FromRequest for Reader {
    type Error = Rejection;
    type Future = Ready<Result<Self, Rejection>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(deps_of(req).and_then(|deps| match presented_token(req) {
            Some(token) => deps.auth.verify(&token).map(|i| Reader(Some(i))),
            None if deps.config.auth.guest => Ok(Reader(None)),
            None => Err(token_required()),
        }))
    }
}

fn token_required() -> Rejection {
    Rejection::new(ErrorCode::Unauthorized, "a token is required")
}

/// The token a request presents: `?token=`, `Authorization: Bearer`, or the cookie.
fn presented_token(req: &HttpRequest) -> Option<String> {
    let query = query_params(req);
    if let Some(t) = query.get("token").filter(|t| !t.is_empty()) {
        return Some(t.clone());
    }
    if let Some(value) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        if let Some(t) = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
        {
            return Some(t.trim().to_string());
        }
    }
    req.cookie("confab_token")
        .map(|c| c.value().to_string())
        .filter(|t| !t.is_empty())
}

/// The query parameters (the last of a repeated one).
pub fn query_params(req: &HttpRequest) -> BTreeMap<String, String> {
    web::Query::<BTreeMap<String, String>>::from_query(req.query_string())
        .map(|q| q.into_inner())
        .unwrap_or_default()
}

fn deps_of(req: &HttpRequest) -> Result<&AppDeps, Rejection> {
    req.app_data::<web::Data<AppDeps>>()
        .map(|deps| deps.get_ref())
        .ok_or_else(|| {
            Rejection::new(
                ErrorCode::Unavailable,
                "the server could not answer this request",
            )
        })
}

/// A guest without a token: a fresh `guest:<uuid>` user who may join every room.
pub fn guest_identity(name: String) -> Identity {
    Identity {
        user: Arc::new(UserInfo {
            id: format!("guest:{}", uuid::Uuid::new_v4()),
            name,
        }),
        rooms: crate::auth::RoomAccess::all(),
        expires_at: None,
        moderator: false,
        server_admin: false,
    }
}

/// The `{room}` of the path, when it is a valid room name.
pub struct RoomPath(pub String);

impl FromRequest for RoomPath {
    type Error = Rejection;
    type Future = Ready<Result<Self, Rejection>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let room = req.match_info().get("room").unwrap_or_default().to_string();
        ready(match protocol::check_room(&room) {
            Ok(()) => Ok(RoomPath(room)),
            Err(e) => Err(e.in_room(Some(&room))),
        })
    }
}

/// The `{room}` of a REST read that this request may read: a valid name, a
/// [`Reader`], and a token (if any) whose `rooms` claim grants it. Whether
/// the room's kind lets the reader in is the store's to say (handlers ask
/// `access::check_reader` with the identity this carries).
pub struct ReadableRoom(pub String, pub Option<Identity>);

impl FromRequest for ReadableRoom {
    type Error = Rejection;
    type Future = Ready<Result<Self, Rejection>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        ready(readable_room(req, payload).map(|(room, identity)| ReadableRoom(room, identity)))
    }
}

fn readable_room(
    req: &HttpRequest,
    payload: &mut Payload,
) -> Result<(String, Option<Identity>), Rejection> {
    let RoomPath(room) = RoomPath::from_request(req, payload).into_inner()?;
    let Reader(identity) = Reader::from_request(req, payload).into_inner()?;
    if let Some(identity) = &identity {
        identity.rooms.check(&room)?;
    }
    Ok((room, identity))
}

/// A WebSocket upgrade from an acceptable origin. Browsers send `Origin`: it
/// must match the `Host` the request came to, or be listed in
/// `server.allowed_origins`. Clients that send no Origin pass.
pub struct AllowedOrigin;

impl FromRequest for AllowedOrigin {
    type Error = Rejection;
    type Future = Ready<Result<Self, Rejection>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(deps_of(req).and_then(|deps| check_origin(req, deps).map(|()| AllowedOrigin)))
    }
}

fn check_origin(req: &HttpRequest, deps: &AppDeps) -> Result<(), Rejection> {
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default().trim_end_matches('/');
    let host_of_origin = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let listed = deps
        .config
        .server
        .allowed_origins
        .iter()
        .any(|allowed| allowed.trim_end_matches('/').eq_ignore_ascii_case(origin));
    if listed || (!host.is_empty() && host_of_origin.eq_ignore_ascii_case(host)) {
        Ok(())
    } else {
        Err(Rejection::new(
            ErrorCode::Forbidden,
            "this Origin may not open WebSockets here",
        ))
    }
}

/// Reads a request body of at most `limit` bytes, all of it within
/// `server.request_timeout_secs` of the handler's start: a client dripping
/// its body can't hold the connection (408), a large one is refused as soon
/// as it passes the limit (413).
pub async fn read_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
    deps: &AppDeps,
) -> Result<web::Bytes, Rejection> {
    use futures_util::StreamExt;
    let too_large = || {
        Rejection::new(
            ErrorCode::PayloadTooLarge,
            format!("the request body is over {limit} bytes"),
        )
    };
    // A body announced too large is refused before any of it is read.
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|len| len > limit as u64) {
        return Err(too_large());
    }
    let deadline = Duration::from_secs(deps.config.server.request_timeout_secs);
    let read = async {
        let mut body = web::BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|_| {
                Rejection::new(ErrorCode::BadRequest, "the request body could not be read")
            })?;
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    match tokio::time::timeout(deadline, read).await {
        Ok(body) => body,
        Err(_) => Err(Rejection::new(
            ErrorCode::RequestTimeout,
            "the request took too long to arrive",
        )),
    }
}

//! HTTP: thin actix-web handlers over the protocol, store and actors, plus the
//! WebSocket upgrades (authenticated before the upgrade) and the embedded web UI.

use crate::auth::Identity;
use crate::protocol::{self, ErrorCode, Rejection, UserInfo};
use crate::registry::ListActive;
use crate::session::Session;
use crate::websocket::Accepted;
use crate::AppDeps;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", get_or_head().to(index))
        .route("/assets/{path:.*}", get_or_head().to(asset))
        .route("/ws", web::get().to(ws_v1))
        .route("/ws/chat/{room}", web::get().to(ws_seed))
        .route("/api/login", web::post().to(login))
        .route("/api/rooms", get_or_head().to(list_rooms))
        .route(
            "/api/rooms/{room}/messages",
            get_or_head().to(room_messages),
        )
        .route("/api/rooms/{room}/stats", get_or_head().to(room_stats))
        .route("/healthz", get_or_head().to(healthz))
        .route("/readyz", get_or_head().to(readyz))
        .route("/metrics", get_or_head().to(metrics))
        .default_service(web::to(not_found));
}

/// The routes of the `metrics.bind` listener: `/metrics` and nothing else.
pub fn metrics_routes(cfg: &mut web::ServiceConfig) {
    cfg.app_data(MetricsListener)
        .route("/metrics", get_or_head().to(metrics))
        .default_service(web::to(not_found));
}

/// Marks the App of the `metrics.bind` listener.
#[derive(Clone, Copy)]
struct MetricsListener;

/// HEAD is answered like GET, without the body (actix-http drops it and
/// keeps the length), so monitors that probe with HEAD work.
fn get_or_head() -> actix_web::Route {
    use actix_web::guard;
    web::route().guard(guard::Any(guard::Get()).or(guard::Head()))
}

pub fn error_response(rejection: &Rejection) -> HttpResponse {
    let status =
        StatusCode::from_u16(rejection.code.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    HttpResponse::build(status)
        .content_type("application/json")
        .body(rejection.to_http_body())
}

fn json(body: String) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(body)
}

async fn not_found() -> HttpResponse {
    error_response(&Rejection::new(ErrorCode::NotFound, "no such endpoint"))
}

// ------------------------------------------------------------------ identity

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

fn query_params(req: &HttpRequest) -> BTreeMap<String, String> {
    web::Query::<BTreeMap<String, String>>::from_query(req.query_string())
        .map(|q| q.into_inner())
        .unwrap_or_default()
}

/// For REST reads: a presented token must be valid; without one, guests may
/// read when guest login is on.
fn reader_identity(req: &HttpRequest, deps: &AppDeps) -> Result<Option<Identity>, Rejection> {
    match presented_token(req) {
        Some(token) => deps.auth.verify(&token).map(Some),
        None if deps.config.auth.guest => Ok(None),
        None => Err(Rejection::new(
            ErrorCode::Unauthorized,
            "a token is required",
        )),
    }
}

fn guest_identity(name: String) -> Identity {
    Identity {
        user: Arc::new(UserInfo {
            id: format!("guest:{}", uuid::Uuid::new_v4()),
            name,
        }),
        rooms: crate::auth::RoomAccess::all(),
        expires_at: None,
    }
}

/// Browsers send `Origin`: it must match the `Host` the request came to, or be
/// listed in `server.allowed_origins`. Clients that send no Origin pass.
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

// ----------------------------------------------------------------- websocket

async fn ws_v1(req: HttpRequest, deps: web::Data<AppDeps>) -> HttpResponse {
    if let Err(e) = check_origin(&req, &deps) {
        return error_response(&e);
    }
    // `/ws` always needs a token, guest login or not (guests get one from /api/login).
    let identity = match presented_token(&req).map(|token| deps.auth.verify(&token)) {
        Some(Ok(identity)) => identity,
        Some(Err(e)) => return error_response(&e),
        None => {
            return error_response(&Rejection::new(
                ErrorCode::Unauthorized,
                "a token is required",
            ))
        }
    };
    upgrade(Session::v1(identity, deps.get_ref().clone()), &req, &deps)
}

async fn ws_seed(req: HttpRequest, deps: web::Data<AppDeps>) -> HttpResponse {
    let room = req.match_info().get("room").unwrap_or_default().to_string();
    if let Err(e) = protocol::check_room(&room) {
        return error_response(&e.in_room(Some(&room)));
    }
    if let Err(e) = check_origin(&req, &deps) {
        return error_response(&e);
    }
    let query = query_params(&req);
    let identity = match reader_identity(&req, &deps) {
        Ok(Some(identity)) => identity,
        Ok(None) => {
            // Decoded from the raw query: a lossy decode would let bytes that
            // are not UTF-8 through as U+FFFD.
            let name = match protocol::display_name_from_query(req.query_string()) {
                Some(Ok(name)) => name,
                Some(Err(e)) => return error_response(&e),
                None => format!("guest-{}", &uuid::Uuid::new_v4().simple().to_string()[..4]),
            };
            guest_identity(name)
        }
        Err(e) => return error_response(&e),
    };
    if let Err(e) = identity.rooms.check(&room) {
        return error_response(&e);
    }
    let history = match query.get("history").map(|h| h.parse::<u32>()) {
        None => 0,
        Some(Ok(h)) => h.min(protocol::MAX_JOIN_HISTORY),
        Some(Err(_)) => {
            return error_response(&Rejection::new(
                ErrorCode::InvalidFrame,
                "history must be an integer 0-100",
            ))
        }
    };
    upgrade(
        Session::seed(identity, deps.get_ref().clone(), room, history),
        &req,
        &deps,
    )
}

/// Accepts the upgrade: a 101 carrying the session, which
/// `websocket::upgrade_service` runs on the socket once the 101 is written.
fn upgrade(session: Session, req: &HttpRequest, deps: &AppDeps) -> HttpResponse {
    let mut response = match ws::handshake(req) {
        Ok(mut accept) => accept.finish(),
        Err(e) => {
            let rejection = Rejection::new(
                ErrorCode::InvalidFrame,
                format!("not a WebSocket upgrade: {e}"),
            );
            return error_response(&rejection);
        }
    };
    // The connection's place under `connections_per_ip` (taken when it was
    // accepted) goes with the session, which outlives the HTTP connection.
    let session = match req.conn_data::<ConnectionPlace>() {
        Some(place) => session.holding(place.0.clone()),
        None => session,
    };
    response
        .extensions_mut()
        .insert(Accepted::new(session, deps.config.limits.max_frame_bytes));
    response
}

/// A connection's place under `limits.connections_per_ip`, taken when it is
/// accepted (`server.rs`) and held as long as the connection, or the
/// WebSocket session it became.
pub struct ConnectionPlace(pub Arc<crate::limits::ConnectionSlot>);

/// Marks a connection accepted over `limits.connections_per_ip`: every
/// request on it is answered 429 and the connection closed.
pub struct OverConnectionCap(pub Rejection);

/// Runs around every handler: refuses requests on connections over the
/// per-IP cap, turns actix-web's own plain-text errors (a bad header, an
/// unknown method) into the contract's JSON errors, and marks every answer
/// `nosniff`. (Slow heads are cut by actix-http's `client_request_timeout`,
/// slow bodies where bodies are read: [`read_body`].)
pub async fn guard(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<actix_web::body::BoxBody>,
) -> Result<actix_web::dev::ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    if let Some(over) = req.conn_data::<OverConnectionCap>() {
        let mut response = error_response(&over.0);
        response
            .head_mut()
            .set_connection_type(actix_web::http::ConnectionType::Close);
        return Ok(actix_web::dev::ServiceResponse::new(
            req.request().clone(),
            response,
        ));
    }
    // No clone of the request may be alive here: routing needs it unshared.
    let mut response = next.call(req).await?;
    if response.status().is_client_error() || response.status().is_server_error() {
        let is_json = response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
        if !is_json {
            response = response.map_body(|head, _| {
                let rejection = rejection_for_status(head.status);
                head.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("application/json"),
                );
                actix_web::body::BoxBody::new(rejection.to_http_body())
            });
        }
    }
    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    Ok(response)
}

/// Reads a request body of at most `limit` bytes, all of it within
/// `server.request_timeout_secs` of the handler's start: a client dripping
/// its body can't hold the connection (408), a large one is refused as soon
/// as it passes the limit (413).
async fn read_body(
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

/// An error answer after which the connection closes: the rest of the
/// request is not read.
fn closing_error(rejection: &Rejection) -> HttpResponse {
    let mut response = error_response(rejection);
    response
        .head_mut()
        .set_connection_type(actix_web::http::ConnectionType::Close);
    response
}

/// The contract's error for an HTTP status actix answered by itself.
pub fn rejection_for_status(status: StatusCode) -> Rejection {
    match status {
        StatusCode::REQUEST_TIMEOUT => Rejection::new(
            ErrorCode::RequestTimeout,
            "the request took too long to arrive",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => {
            Rejection::new(ErrorCode::PayloadTooLarge, "the request body is too large")
        }
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => Rejection::new(
            ErrorCode::HeadersTooLarge,
            "the request's headers are too large",
        ),
        StatusCode::NOT_FOUND => Rejection::new(ErrorCode::NotFound, "no such endpoint"),
        StatusCode::METHOD_NOT_ALLOWED => {
            Rejection::new(ErrorCode::NotFound, "no such endpoint for this method")
        }
        s if s.is_server_error() => Rejection::new(
            ErrorCode::Unavailable,
            "the server could not answer this request",
        ),
        _ => Rejection::new(ErrorCode::BadRequest, "the request is malformed"),
    }
}

// ---------------------------------------------------------------------- REST

/// A login body is `{"name": …}`: a few hundred bytes at most.
const LOGIN_BODY_MAX: usize = 4096;

async fn login(req: HttpRequest, payload: web::Payload, deps: web::Data<AppDeps>) -> HttpResponse {
    if !deps.config.auth.guest {
        return error_response(&Rejection::new(
            ErrorCode::Forbidden,
            "guest login is disabled on this server",
        ));
    }
    // Each guest is a fresh user id with its own send allowance: logins are
    // what has to be limited, per address.
    if let Some(peer) = req.peer_addr() {
        if let Err(e) = deps.login_limiter.check(peer.ip()) {
            return error_response(&e);
        }
    }
    let body = match read_body(&req, payload, LOGIN_BODY_MAX, &deps).await {
        Ok(body) => body,
        Err(e) => return closing_error(&e),
    };
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return error_response(&Rejection::new(
            ErrorCode::InvalidJson,
            "the body must be JSON like {\"name\":\"alice\"}",
        ));
    };
    let name = match value
        .get("name")
        .and_then(|n| n.as_str())
        .map(protocol::check_display_name)
    {
        Some(Ok(name)) => name,
        Some(Err(e)) => return error_response(&e),
        None => {
            return error_response(&Rejection::new(
                ErrorCode::InvalidName,
                "\"name\" is required",
            ))
        }
    };
    let identity = guest_identity(name);
    let token = deps.auth.mint(
        &identity.user.id,
        &identity.user.name,
        deps.config.auth.token_ttl_secs,
        None,
    );
    json(serde_json::json!({"token": token, "user": identity.user.as_ref()}).to_string())
}

async fn list_rooms(req: HttpRequest, deps: web::Data<AppDeps>) -> HttpResponse {
    let identity = match reader_identity(&req, &deps) {
        Ok(identity) => identity,
        Err(e) => return error_response(&e),
    };
    let stored = match deps.store.rooms().await {
        Ok(rooms) => rooms,
        Err(error) => {
            tracing::warn!(%error, "listing rooms failed");
            return error_response(&Rejection::new(
                ErrorCode::Unavailable,
                "the store is unavailable",
            ));
        }
    };
    let active = deps.registry.send(ListActive).await.unwrap_or_default();
    let mut rooms: BTreeMap<String, (u64, usize)> = stored
        .into_iter()
        .map(|r| (r.name, (r.last_seq, 0)))
        .collect();
    for room in active {
        let entry = rooms.entry(room.name).or_insert((0, 0));
        entry.0 = entry.0.max(room.last_seq);
        entry.1 = room.online;
    }
    // In cluster mode users online through other instances count too.
    let names: Vec<String> = rooms.keys().cloned().collect();
    if let Some(online) = deps.broker.online(&names).await {
        for (name, count) in online {
            if let Some(entry) = rooms.get_mut(&name) {
                entry.1 = entry.1.max(count);
            }
        }
    }
    // One page, in name order: `?after=NAME` continues where `next_after` ended.
    let query = query_params(&req);
    let limit = match query
        .get("limit")
        .map(|raw| protocol::parse_cursor_param("limit", raw))
    {
        None => ROOMS_PAGE_DEFAULT,
        Some(Ok(n)) => (n as usize).min(ROOMS_PAGE_MAX),
        Some(Err(e)) => return error_response(&e),
    };
    let after = query.get("after").cloned().unwrap_or_default();
    let mut page = rooms
        .into_iter()
        .filter(|(name, _)| *name > after)
        .filter(|(name, _)| identity.as_ref().is_none_or(|i| i.rooms.allows(name)))
        .take(limit + 1)
        .map(|(name, (last_seq, online))| serde_json::json!({"name": name, "last_seq": last_seq, "online": online}))
        .collect::<Vec<_>>();
    let next_after = (page.len() > limit).then(|| {
        page.truncate(limit);
        page.last().map(|r| r["name"].clone())
    });
    json(serde_json::json!({ "rooms": page, "next_after": next_after.flatten() }).to_string())
}

/// `GET /api/rooms` pages: 100 rooms unless `limit` says otherwise, at most 1000.
const ROOMS_PAGE_DEFAULT: usize = 100;
const ROOMS_PAGE_MAX: usize = 1000;

/// The `{room}` of a REST read, when it is valid and the request may read it
/// (the history rules: a token if guests are off, its `rooms` claim).
fn readable_room(req: &HttpRequest, deps: &AppDeps) -> Result<String, Rejection> {
    let room = req.match_info().get("room").unwrap_or_default().to_string();
    protocol::check_room(&room)?;
    if let Some(identity) = reader_identity(req, deps)? {
        identity.rooms.check(&room)?;
    }
    Ok(room)
}

async fn room_messages(req: HttpRequest, deps: web::Data<AppDeps>) -> HttpResponse {
    let room = match readable_room(&req, &deps) {
        Ok(room) => room,
        Err(e) => return error_response(&e),
    };
    let query = query_params(&req);
    let cursor = |key: &str| {
        query
            .get(key)
            .map(|raw| protocol::parse_cursor_param(key, raw))
            .transpose()
    };
    let before = match cursor("before") {
        Ok(Some(b)) => Some(b),
        Ok(None) => match cursor("before_id") {
            Ok(b) => b,
            Err(e) => return error_response(&e),
        },
        Err(e) => return error_response(&e),
    };
    let limit = match cursor("limit") {
        Ok(l) => l.map(|l| l.min(u64::from(u32::MAX)) as u32),
        Err(e) => return error_response(&e),
    };
    let page_max = deps.config.limits.history_page_max;
    match crate::history::page(&deps.store, &room, before, limit, page_max).await {
        Ok((messages, next)) => json(protocol::history_json(&room, &messages, next, false)),
        Err(e) => error_response(&e),
    }
}

/// The analytics counters of a room over `window` (1h, 24h or 7d; default
/// 24h). Same token rules as history.
async fn room_stats(req: HttpRequest, deps: web::Data<AppDeps>) -> HttpResponse {
    let room = match readable_room(&req, &deps) {
        Ok(room) => room,
        Err(e) => return error_response(&e),
    };
    let query = query_params(&req);
    let window = query.get("window").map_or("24h", String::as_str);
    let Some((window, span_ms)) = crate::analytics::WINDOWS
        .iter()
        .find(|(name, _)| *name == window)
    else {
        return error_response(&Rejection::new(
            ErrorCode::InvalidWindow,
            "window must be 1h, 24h or 7d",
        ));
    };
    match crate::analytics::stats(&deps.pipeline, &room, window, *span_ms).await {
        Ok(stats) => json(stats.to_string()),
        Err(error) => {
            tracing::warn!(%error, room, "stats read failed");
            error_response(&Rejection::new(
                ErrorCode::Unavailable,
                "stats are unavailable right now",
            ))
        }
    }
}

/// Prometheus text exposition (names in docs/operations.md). With
/// `metrics.bind` set it is only on that listener; with `metrics.token` set it
/// needs that bearer token.
async fn metrics(req: HttpRequest, deps: web::Data<AppDeps>) -> HttpResponse {
    let settings = &deps.config.metrics;
    if !settings.bind.is_empty() && req.app_data::<MetricsListener>().is_none() {
        return not_found().await;
    }
    if !settings.token.is_empty() {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .unwrap_or_default();
        if !same_secret(presented.as_bytes(), settings.token.as_bytes()) {
            return error_response(&Rejection::new(
                ErrorCode::Unauthorized,
                "/metrics needs the metrics token as Authorization: Bearer",
            ));
        }
    }
    match crate::metrics::render() {
        Some(text) => HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4; charset=utf-8")
            .body(text),
        None => error_response(&Rejection::new(
            ErrorCode::Unavailable,
            "metrics are not available in this process",
        )),
    }
}

/// Compares secrets in time that depends on their length only.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn healthz() -> HttpResponse {
    json(r#"{"status":"ok"}"#.into())
}

async fn readyz(deps: web::Data<AppDeps>) -> HttpResponse {
    const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
    let store = match tokio::time::timeout(CHECK_TIMEOUT, deps.store.ping()).await {
        Ok(Ok(())) => "ok",
        _ => "unavailable",
    };
    let broker = match tokio::time::timeout(CHECK_TIMEOUT, deps.broker.ready()).await {
        Ok(Ok(())) => "ok",
        _ => "unavailable",
    };
    let ok = store == "ok" && broker == "ok";
    let body = serde_json::json!({
        "status": if ok { "ok" } else { "unavailable" },
        "checks": { "store": store, "broker": broker },
    });
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    HttpResponse::build(status)
        .content_type("application/json")
        .body(body.to_string())
}

// -------------------------------------------------------------------- web UI

#[derive(rust_embed::RustEmbed)]
#[folder = "web/"]
struct WebAssets;

/// The UI loads only its own scripts, styles and images, talks only to this
/// origin (REST and WebSocket), and may not be framed (clickjacking).
const UI_CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn serve_asset(path: &str) -> HttpResponse {
    match WebAssets::get(path) {
        Some(file) => HttpResponse::Ok()
            .content_type(file.metadata.mimetype())
            .insert_header((header::CACHE_CONTROL, "no-cache"))
            .insert_header((header::CONTENT_SECURITY_POLICY, UI_CONTENT_SECURITY_POLICY))
            .insert_header((header::X_FRAME_OPTIONS, "DENY"))
            .insert_header((header::REFERRER_POLICY, "no-referrer"))
            .body(file.data.into_owned()),
        None => error_response(&Rejection::new(ErrorCode::NotFound, "no such file")),
    }
}

async fn index() -> HttpResponse {
    serve_asset("index.html")
}

async fn asset(req: HttpRequest) -> HttpResponse {
    let path = req.match_info().get("path").unwrap_or_default();
    serve_asset(&format!("assets/{path}"))
}

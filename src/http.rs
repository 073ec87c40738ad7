//! HTTP: thin actix-web handlers over the protocol, store and actors, plus the
//! WebSocket upgrades (authenticated before the upgrade) and the embedded web UI.
//! Handlers answer errors as `Err(Rejection)` (errors.rs); who is asking and
//! which room is checked by extractors (extract.rs) before a handler runs.

mod errors;
mod extract;
mod rooms;

pub use errors::{guard, rejection_for_status, OverConnectionCap};
pub use extract::{AllowedOrigin, Authenticated, ReadableRoom, Reader, RoomPath};

use crate::protocol::{self, ErrorCode, Rejection};
use crate::session::Session;
use crate::websocket::Accepted;
use crate::AppDeps;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws;
use errors::closing_error;
use extract::{guest_identity, query_params, read_body};
use std::sync::Arc;
use std::time::Duration;

/// What a handler answers: a response, or the contract's JSON error.
type Answer = Result<HttpResponse, Rejection>;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", get_or_head().to(index))
        .route("/assets/{path:.*}", get_or_head().to(asset))
        .route("/ws", web::get().to(ws_v1))
        .route("/ws/chat/{room}", web::get().to(ws_seed))
        .route("/api/login", web::post().to(login))
        .route("/api/rooms", get_or_head().to(rooms::list_rooms))
        .route("/api/rooms", web::post().to(rooms::create_room))
        .route("/api/dm", web::post().to(rooms::open_direct))
        .route("/api/me/rooms", get_or_head().to(rooms::my_rooms))
        .route(
            "/api/rooms/{room}/members",
            get_or_head().to(rooms::list_members),
        )
        .route("/api/rooms/{room}/members", web::post().to(rooms::invite))
        .route(
            "/api/rooms/{room}/members/{user}",
            web::delete().to(rooms::remove),
        )
        .route(
            "/api/rooms/{room}/members/{user}/{action}",
            web::post().to(rooms::moderate),
        )
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

fn json(body: String) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(body)
}

async fn not_found() -> Answer {
    Err(Rejection::new(ErrorCode::NotFound, "no such endpoint"))
}

// ----------------------------------------------------------------- websocket

/// `/ws` always needs a token, guest login or not (guests get one from
/// /api/login); the Origin is checked first.
async fn ws_v1(
    req: HttpRequest,
    _: AllowedOrigin,
    Authenticated(identity): Authenticated,
    deps: web::Data<AppDeps>,
) -> Answer {
    upgrade(Session::v1(identity, deps.get_ref().clone()), &req, &deps)
}

/// `/ws/chat/{room}`: the room, the Origin, then a reader (a guest needs no
/// token when guest login is on).
async fn ws_seed(
    req: HttpRequest,
    RoomPath(room): RoomPath,
    _: AllowedOrigin,
    Reader(identity): Reader,
    deps: web::Data<AppDeps>,
) -> Answer {
    let query = query_params(&req);
    let reader = identity.as_ref().map(|i| i.user.id.clone());
    let identity = match identity {
        Some(identity) => identity,
        None => {
            // Decoded from the raw query: a lossy decode would let bytes that
            // are not UTF-8 through as U+FFFD.
            let name = match protocol::display_name_from_query(req.query_string()) {
                Some(name) => name?,
                None => format!("guest-{}", &uuid::Uuid::new_v4().simple().to_string()[..4]),
            };
            guest_identity(name)
        }
    };
    identity.rooms.check(&room)?;
    crate::access::check_reader(deps.store.as_ref(), &room, reader.as_deref()).await?;
    let history = match query.get("history").map(|h| h.parse::<u32>()) {
        None => 0,
        Some(Ok(h)) => h.min(protocol::MAX_JOIN_HISTORY),
        Some(Err(_)) => {
            return Err(Rejection::new(
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
fn upgrade(session: Session, req: &HttpRequest, deps: &AppDeps) -> Answer {
    let mut response = ws::handshake(req)
        .map_err(|e| {
            Rejection::new(
                ErrorCode::InvalidFrame,
                format!("not a WebSocket upgrade: {e}"),
            )
        })?
        .finish();
    // The connection's place under `connections_per_ip` (taken when it was
    // accepted) goes with the session, which outlives the HTTP connection.
    let session = match req.conn_data::<ConnectionPlace>() {
        Some(place) => session.holding(place.0.clone()),
        None => session,
    };
    response
        .extensions_mut()
        .insert(Accepted::new(session, deps.config.limits.max_frame_bytes));
    Ok(response)
}

/// A connection's place under `limits.connections_per_ip`, taken when it is
/// accepted (`server.rs`) and held as long as the connection, or the
/// WebSocket session it became.
pub struct ConnectionPlace(pub Arc<crate::limits::ConnectionSlot>);

// ---------------------------------------------------------------------- REST

/// A login body is `{"name": …}`: a few hundred bytes at most.
const LOGIN_BODY_MAX: usize = 4096;

async fn login(req: HttpRequest, payload: web::Payload, deps: web::Data<AppDeps>) -> Answer {
    if !deps.config.auth.guest {
        return Err(Rejection::new(
            ErrorCode::Forbidden,
            "guest login is disabled on this server",
        ));
    }
    // Each guest is a fresh user id with its own send allowance: logins are
    // what has to be limited, per address.
    if let Some(peer) = req.peer_addr() {
        deps.login_limiter.check(peer.ip())?;
    }
    let body = match read_body(&req, payload, LOGIN_BODY_MAX, &deps).await {
        Ok(body) => body,
        // The rest of the body is not read: the connection closes.
        Err(e) => return Ok(closing_error(&e)),
    };
    let value = serde_json::from_slice::<serde_json::Value>(&body).map_err(|_| {
        Rejection::new(
            ErrorCode::InvalidJson,
            "the body must be JSON like {\"name\":\"alice\"}",
        )
    })?;
    let name = value
        .get("name")
        .and_then(|n| n.as_str())
        .map(protocol::check_display_name)
        .ok_or_else(|| Rejection::new(ErrorCode::InvalidName, "\"name\" is required"))??;
    let identity = guest_identity(name);
    let token = deps.auth.mint(
        &identity.user.id,
        &identity.user.name,
        deps.config.auth.token_ttl_secs,
        None,
    );
    Ok(json(
        serde_json::json!({"token": token, "user": identity.user.as_ref()}).to_string(),
    ))
}

/// A page of history (the `history` frame's rules).
async fn room_messages(
    req: HttpRequest,
    ReadableRoom(room, identity): ReadableRoom,
    deps: web::Data<AppDeps>,
) -> Answer {
    let reader = identity.as_ref().map(|i| i.user.id.as_str());
    crate::access::check_reader(deps.store.as_ref(), &room, reader).await?;
    let query = query_params(&req);
    let cursor = |key: &str| {
        query
            .get(key)
            .map(|raw| protocol::parse_cursor_param(key, raw))
            .transpose()
    };
    let before = match cursor("before")? {
        Some(b) => Some(b),
        None => cursor("before_id")?,
    };
    let limit = cursor("limit")?.map(|l| l.min(u64::from(u32::MAX)) as u32);
    let page_max = deps.config.limits.history_page_max;
    let (messages, next) =
        crate::history::page(&deps.store, &room, before, limit, page_max).await?;
    Ok(json(protocol::history_json(&room, &messages, next, false)))
}

/// The analytics counters of a room over `window` (1h, 24h or 7d; default
/// 24h). Same token rules as history.
async fn room_stats(
    req: HttpRequest,
    ReadableRoom(room, identity): ReadableRoom,
    deps: web::Data<AppDeps>,
) -> Answer {
    let reader = identity.as_ref().map(|i| i.user.id.as_str());
    crate::access::check_reader(deps.store.as_ref(), &room, reader).await?;
    let query = query_params(&req);
    let window = query.get("window").map_or("24h", String::as_str);
    let (window, span_ms) = crate::analytics::WINDOWS
        .iter()
        .find(|(name, _)| *name == window)
        .ok_or_else(|| Rejection::new(ErrorCode::InvalidWindow, "window must be 1h, 24h or 7d"))?;
    let stats = crate::analytics::stats(&deps.pipeline, &room, window, *span_ms)
        .await
        .map_err(|error| {
            tracing::warn!(%error, room, "stats read failed");
            Rejection::new(ErrorCode::Unavailable, "stats are unavailable right now")
        })?;
    Ok(json(stats.to_string()))
}

/// Prometheus text exposition (names in docs/operations.md). With
/// `metrics.bind` set it is only on that listener; with `metrics.token` set it
/// needs that bearer token.
async fn metrics(req: HttpRequest, deps: web::Data<AppDeps>) -> Answer {
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
            return Err(Rejection::new(
                ErrorCode::Unauthorized,
                "/metrics needs the metrics token as Authorization: Bearer",
            ));
        }
    }
    let text = crate::metrics::render().ok_or_else(|| {
        Rejection::new(
            ErrorCode::Unavailable,
            "metrics are not available in this process",
        )
    })?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text))
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

fn serve_asset(path: &str) -> Answer {
    match WebAssets::get(path) {
        Some(file) => Ok(HttpResponse::Ok()
            .content_type(file.metadata.mimetype())
            .insert_header((header::CACHE_CONTROL, "no-cache"))
            .insert_header((header::CONTENT_SECURITY_POLICY, UI_CONTENT_SECURITY_POLICY))
            .insert_header((header::X_FRAME_OPTIONS, "DENY"))
            .insert_header((header::REFERRER_POLICY, "no-referrer"))
            .body(file.data.into_owned())),
        None => Err(Rejection::new(ErrorCode::NotFound, "no such file")),
    }
}

async fn index() -> Answer {
    serve_asset("index.html")
}

async fn asset(req: HttpRequest) -> Answer {
    let path = req.match_info().get("path").unwrap_or_default();
    serve_asset(&format!("assets/{path}"))
}

//! `confab serve`: wires the store, broker and actors together and runs HTTP.

use crate::auth::{load_or_create_secret, Auth, SecretError};
use crate::broker::local::LocalBroker;
use crate::broker::redis::RedisBroker;
use crate::broker::Refs;
use crate::broker::SharedBroker;
use crate::config::Config;
use crate::connection::Connection;
use crate::dedupe::RefCache;
use crate::limits::{IpLimiter, Moderation, SendLimiter};
use crate::persist::{Drain, Persist};
use crate::registry::{Init, Registry};
use crate::store::{self, StoreError};
use crate::{http, websocket, AppDeps};
use actix::Actor;
use actix_http::{error::DispatchError, HttpService, Protocol};
use actix_service::{fn_service, map_config, ServiceFactory, ServiceFactoryExt};
use actix_web::dev::AppConfig;
use actix_web::rt::net::TcpStream;
use actix_web::{web, App};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create data_dir {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("cannot listen on {bind}: {source}")]
    Bind {
        bind: String,
        source: std::io::Error,
    },
    /// `what` names the file or step; the TLS library's error is kept.
    #[error("server.tls: {what}: {source}")]
    Tls {
        what: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("server.tls: no PEM certificate in {0}")]
    NoCertificate(String),
    #[error("cannot set up the broker: {0}")]
    Broker(#[from] crate::broker::BrokerError),
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

/// Loads what the shared signing secret is, creating `data_dir` if needed.
pub fn auth_for(config: &Config) -> Result<Auth, StartError> {
    std::fs::create_dir_all(&config.storage.data_dir).map_err(|source| StartError::DataDir {
        path: config.storage.data_dir.display().to_string(),
        source,
    })?;
    let secret = load_or_create_secret(&config.auth.jwt_secret, &config.storage.data_dir)?;
    Ok(Auth::new(&secret))
}

pub async fn serve(config: Config) -> Result<(), StartError> {
    let config = Arc::new(config);
    crate::metrics::install();
    let tls = tls_config(&config.server.tls)?;
    let auth = Arc::new(auth_for(&config)?);
    let (store, pipeline) = store::open_with_pipeline(&config).await?;

    let ref_window = Arc::new(RefCache::load(&store).await);

    let persist = Persist::new(
        store.clone(),
        config.storage.batch_max,
        Duration::from_millis(config.storage.flush_interval_ms),
    );
    // Counted messages' stream ids come back to the analytics group's reader.
    let (analytics_acks, acked) = tokio::sync::mpsc::unbounded_channel();
    let analytics = crate::analytics::Analytics::new(
        pipeline.clone(),
        config.cluster_mode().then_some(analytics_acks),
        config.metrics.room_series,
    )
    .start();
    let persist = if config.cluster_mode() {
        persist
    } else {
        persist
            .reporting_lag()
            .feeding(analytics.clone().recipient())
    }
    .start();
    let registry = Registry::new().start();
    let (shutdown_tx, shutdown) = tokio::sync::watch::channel(false);
    let sessions = Arc::new(AtomicUsize::new(0));
    let users = Arc::new(crate::users::Users::default());
    let broker: SharedBroker = if config.cluster_mode() {
        let instance: Arc<str> = uuid::Uuid::now_v7().to_string().into();
        tracing::info!(%instance, "cluster mode: sequencing and relaying through Redis");
        Arc::new(RedisBroker::start(
            &config,
            store.clone(),
            persist.clone(),
            instance,
            shutdown.clone(),
            crate::broker::AnalyticsFeed {
                analytics: analytics.clone(),
                acks: acked,
            },
            users.clone(),
        )?)
    } else {
        Arc::new(LocalBroker::new(
            store.clone(),
            persist.clone(),
            ref_window.clone(),
        ))
    };
    let refs = Arc::new(Refs::new(ref_window, broker.clone()));
    let mode = if config.cluster_mode() {
        "cluster"
    } else {
        "embedded"
    };
    let deps = AppDeps {
        config: config.clone(),
        auth,
        store,
        pipeline: pipeline.clone(),
        broker,
        registry: registry.clone(),
        refs,
        send_limiter: Arc::new(SendLimiter::new(
            config.limits.messages_per_sec,
            config.limits.message_burst,
        )),
        join_limiter: Arc::new(SendLimiter::new(
            config.limits.joins_per_sec,
            config.limits.joins_per_sec.saturating_mul(4),
        )),
        login_limiter: Arc::new(IpLimiter::per_minute(config.limits.logins_per_minute)),
        moderation: Arc::new(Moderation::new(&config.moderation.prohibited_words)),
        connections: Arc::default(),
        shutdown,
        sessions: sessions.clone(),
        users,
        markers: Arc::default(),
    };
    deps.markers.clone().spawn(deps.store.clone());
    let limiters = (
        deps.send_limiter.clone(),
        deps.join_limiter.clone(),
        deps.login_limiter.clone(),
    );
    actix_web::rt::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        loop {
            every.tick().await;
            limiters.0.sweep();
            limiters.1.sweep();
            limiters.2.sweep();
        }
    });
    registry.do_send(Init(deps.clone()));
    crate::retention::spawn(
        pipeline.clone(),
        config.storage.retention_days,
        deps.shutdown.clone(),
    );

    let listeners = bind(&config.server.bind)?;
    let stalled_after = Duration::from_secs(config.heartbeat.timeout_secs);
    let request_timeout = Duration::from_secs(config.server.request_timeout_secs);
    let (connections, per_ip) = (deps.connections.clone(), config.limits.connections_per_ip);
    let app_deps = deps.clone();
    let app = move || {
        App::new()
            .app_data(web::Data::new(app_deps.clone()))
            .wrap(actix_web::middleware::from_fn(http::guard))
            .configure(http::routes)
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut builder = actix_server::Server::build()
        // Only short REST requests can still be running once the sockets closed.
        .shutdown_timeout(config.server.shutdown_grace_secs.min(1))
        .disable_signals();
    for listener in listeners {
        let addr = listener.local_addr()?;
        tracing::info!(mode, scheme, "listening on {addr}");
        let app = app.clone();
        let connections = connections.clone();
        let name = format!("confab-{addr}");
        // The same service over TCP or TLS (the stream type differs).
        macro_rules! http_service {
            () => {{
                let connections = connections.clone();
                HttpService::build()
                    .client_disconnect_timeout(Duration::from_secs(1))
                    .local_addr(addr)
                    .client_request_timeout(request_timeout)
                    .on_connect_ext(move |io: &_, data: &mut _| {
                        let io = io as &dyn std::any::Any;
                        cut_off_stalled_readers(io, stalled_after);
                        take_place(io, data, &connections, per_ip);
                    })
                    .upgrade(websocket::upgrade_service(app.clone()))
                    .finish(map_config(app(), |_| AppConfig::default()))
            }};
        }
        builder = match tls.clone() {
            Some(tls) => builder.listen(name, listener, move || {
                over_tls(tls.clone(), http_service!())
            })?,
            None => builder.listen(name, listener, move || over_tcp(http_service!()))?,
        };
    }
    if !config.metrics.bind.is_empty() {
        // Plain HTTP, /metrics only: meant for a private address.
        let metrics_deps = deps.clone();
        let metrics_app = move || {
            App::new()
                .app_data(web::Data::new(metrics_deps.clone()))
                .wrap(actix_web::middleware::from_fn(http::guard))
                .configure(http::metrics_routes)
        };
        for listener in bind(&config.metrics.bind)? {
            let addr = listener.local_addr()?;
            tracing::info!("serving /metrics on {addr}");
            let metrics_app = metrics_app.clone();
            builder = builder.listen(format!("confab-metrics-{addr}"), listener, move || {
                over_tcp(
                    HttpService::build()
                        .client_request_timeout(request_timeout)
                        .local_addr(addr)
                        .finish(map_config(metrics_app(), |_| AppConfig::default())),
                )
            })?;
        }
    }
    // Migrations ran in store::open and the listener is bound: tell systemd.
    notify_systemd(sd_notify::NotifyState::Ready);
    let server = builder.run();
    let grace = Duration::from_secs(config.server.shutdown_grace_secs);
    let deadline = Arc::new(std::sync::OnceLock::new());
    actix_web::rt::spawn(graceful_shutdown(
        server.handle(),
        registry.clone(),
        deps.broker.clone(),
        shutdown_tx,
        sessions,
        grace,
        deadline.clone(),
    ));
    server.await?;

    // The whole shutdown stays within the grace period. What the drain can't
    // finish by then was never acked (embedded acks follow the commit; cluster
    // entries stay in the persist stream for another instance), so cutting it
    // short loses nothing acknowledged.
    let remaining = deadline.get().map_or(grace, |at: &tokio::time::Instant| {
        at.saturating_duration_since(tokio::time::Instant::now())
    });
    tracing::info!("stopping: writing buffered messages");
    let drain = async {
        deps.broker.drain().await;
        let _ = persist.send(Drain).await;
    };
    if tokio::time::timeout(remaining, drain).await.is_err() {
        tracing::error!(
            "shutdown_grace_secs ran out while writing buffered messages; unacknowledged sends \
             may be lost (acknowledged ones are durable)"
        );
    }
    tracing::info!("stopped");
    Ok(())
}

/// Listens on every address `bind` names (a host name may resolve to
/// several), with the same socket options actix-web's own server uses.
fn bind(bind: &str) -> Result<Vec<std::net::TcpListener>, StartError> {
    use std::net::ToSocketAddrs;
    let failed = |source| StartError::Bind {
        bind: bind.to_string(),
        source,
    };
    let mut listeners = Vec::new();
    let mut last_error = None;
    for addr in bind.to_socket_addrs().map_err(failed)? {
        match listen_on(addr) {
            Ok(listener) => listeners.push(listener),
            Err(error) => last_error = Some(error),
        }
    }
    match last_error {
        Some(error) if listeners.is_empty() => Err(failed(error)),
        _ if listeners.is_empty() => Err(failed(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the address resolves to nothing",
        ))),
        _ => Ok(listeners),
    }
}

fn listen_on(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    #[cfg(unix)]
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(2048)?;
    Ok(socket.into())
}

/// The rustls server config for `[server.tls]`, or None when it is unset.
/// Paths are taken as given (relative ones from the working directory).
pub fn tls_config(
    tls: &crate::config::TlsConfig,
) -> Result<Option<rustls::ServerConfig>, StartError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    if tls.cert.is_empty() && tls.key.is_empty() {
        return Ok(None);
    }
    let certs = CertificateDer::pem_file_iter(&tls.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| tls_error(format!("cannot read the certificate {}", tls.cert), e))?;
    if certs.is_empty() {
        return Err(StartError::NoCertificate(tls.cert.clone()));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| tls_error(format!("cannot read the private key {}", tls.key), e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map(Some)
        .map_err(|e| tls_error("the certificate and key don't work together".into(), e))
}

fn tls_error(what: String, source: impl std::error::Error + Send + Sync + 'static) -> StartError {
    StartError::Tls {
        what,
        source: Box::new(source),
    }
}

/// Tells a `Type=notify` systemd unit (READY=1, STOPPING=1); without
/// `$NOTIFY_SOCKET` this does nothing.
fn notify_systemd(state: sd_notify::NotifyState) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(false, &[state]) {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}

/// A client that stops reading fills the socket buffers; actix then stops
/// polling its session actor, so neither the heartbeat nor the 1013 close can
/// run. The kernel is the one left to notice: with `TCP_USER_TIMEOUT` it drops
/// a connection whose receive window stayed closed (or whose data went
/// unacknowledged) for the heartbeat timeout, which ends the session.
fn cut_off_stalled_readers(conn: &dyn std::any::Any, after: Duration) {
    #[cfg(target_os = "linux")]
    let tcp = tcp_of(conn);
    #[cfg(target_os = "linux")]
    if let Some(stream) = tcp {
        if let Err(e) = socket2::SockRef::from(stream).set_tcp_user_timeout(Some(after)) {
            tracing::debug!(error = %e, "could not set TCP_USER_TIMEOUT");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (conn, after);
}

type TlsStream = actix_tls::accept::rustls_0_23::TlsStream<TcpStream>;

/// The TCP socket under an accepted connection (plain or TLS).
fn tcp_of(conn: &dyn std::any::Any) -> Option<&TcpStream> {
    conn.downcast_ref::<Connection<TcpStream>>()
        .map(Connection::get_ref)
        .or_else(|| {
            conn.downcast_ref::<Connection<TlsStream>>()
                .map(|c| c.get_ref().get_ref().0)
        })
}

/// The TCP peer of an accepted connection (plain or TLS).
fn peer_of(conn: &dyn std::any::Any) -> Option<std::net::SocketAddr> {
    tcp_of(conn)?.peer_addr().ok()
}

/// What actix-http's `HttpService` takes: the stream, its protocol, the peer.
type Incoming<T> = (Connection<T>, Protocol, Option<std::net::SocketAddr>);

/// Plain HTTP: every accepted socket goes to actix-http inside a
/// [`Connection`], with Nagle off (chat frames are small and latency matters).
fn over_tcp<S>(
    http: S,
) -> impl ServiceFactory<TcpStream, Config = (), Response = (), Error = DispatchError, InitError = ()>
where
    S: ServiceFactory<
        Incoming<TcpStream>,
        Config = (),
        Response = (),
        Error = DispatchError,
        InitError = (),
    >,
{
    fn_service(|io: TcpStream| async move {
        let _ = io.set_nodelay(true);
        let peer = io.peer_addr().ok();
        Ok((Connection::new(io, peer), Protocol::Http1, peer))
    })
    .and_then(http)
}

/// HTTPS: the TLS handshake (HTTP/2 or HTTP/1.1 by ALPN), then as [`over_tcp`].
fn over_tls<S>(
    mut tls: rustls::ServerConfig,
    http: S,
) -> impl ServiceFactory<
    TcpStream,
    Config = (),
    Response = (),
    Error = actix_tls::accept::TlsError<std::io::Error, DispatchError>,
    InitError = (),
>
where
    S: ServiceFactory<
        Incoming<TlsStream>,
        Config = (),
        Response = (),
        Error = DispatchError,
        InitError = (),
    >,
{
    use actix_tls::accept::TlsError;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    actix_tls::accept::rustls_0_23::Acceptor::new(tls)
        .map_init_err(|_| ())
        .map_err(TlsError::into_service_error)
        .and_then(|io: TlsStream| async move {
            let http2 = io.get_ref().1.alpn_protocol().is_some_and(|p| p == b"h2");
            let tcp = io.get_ref().0;
            let _ = tcp.set_nodelay(true);
            let peer = tcp.peer_addr().ok();
            let protocol = if http2 {
                Protocol::Http2
            } else {
                Protocol::Http1
            };
            Ok((Connection::new(io, peer), protocol, peer))
        })
        .and_then(http.map_err(TlsError::Service))
}

/// Every accepted connection, HTTP or WebSocket, counts under
/// `limits.connections_per_ip` (by TCP peer: behind a proxy, cap there). One
/// over the cap is marked, and `http::guard` answers its requests with 429.
fn take_place(
    conn: &dyn std::any::Any,
    data: &mut actix_http::Extensions,
    counter: &Arc<crate::limits::ConnectionCounter>,
    per_ip: u32,
) {
    let Some(peer) = peer_of(conn) else { return };
    match crate::limits::ConnectionCounter::acquire(counter, peer.ip(), per_ip) {
        Ok(slot) => {
            data.insert(http::ConnectionPlace(Arc::new(slot)));
        }
        Err(rejection) => {
            data.insert(http::OverConnectionCap(rejection));
        }
    }
}

/// SIGTERM or SIGINT: stop accepting, tell every session to close with 1001,
/// give their close frames most of the grace period, then stop HTTP. `serve`
/// drains Persist in what is left of the grace period (recorded in
/// `deadline`), so the process exits within `shutdown_grace_secs`.
async fn graceful_shutdown(
    server: actix_web::dev::ServerHandle,
    registry: actix::Addr<Registry>,
    broker: SharedBroker,
    shutdown: tokio::sync::watch::Sender<bool>,
    sessions: Arc<AtomicUsize>,
    grace: Duration,
    deadline: Arc<std::sync::OnceLock<tokio::time::Instant>>,
) {
    wait_for_signal().await;
    let started = tokio::time::Instant::now();
    let _ = deadline.set(started + grace);
    notify_systemd(sd_notify::NotifyState::Stopping);
    tracing::info!("shutting down: closing connections");
    server.pause().await;
    let _ = shutdown.send(true);
    // Sockets get three quarters of the grace period; the rest is the flush's.
    let close_by = started + grace.mul_f64(0.75);
    while sessions.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < close_by {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Connections that didn't close by then (a client that stopped reading
    // can't receive its close frame) are dropped.
    let drained = sessions.load(Ordering::SeqCst) == 0;
    // Rooms live on the workers: let them handle the closed sessions' Leaves
    // and send the goodbyes while the workers still run (Redis connections
    // opened on a worker's runtime close with it).
    let settle_by = (started + grace.mul_f64(0.8)).max(tokio::time::Instant::now());
    let settle = async {
        let _ = registry.send(crate::registry::SettleRooms).await;
        broker.drain().await;
    };
    let _ = tokio::time::timeout_at(settle_by, settle).await;
    server.stop(drained).await;
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops gracefully");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

//! `confab serve`: wires the store, broker and actors together and runs HTTP.

use crate::auth::{load_or_create_secret, Auth, SecretError};
use crate::broker::local::LocalBroker;
use crate::broker::redis::RedisBroker;
use crate::broker::SharedBroker;
use crate::config::Config;
use crate::dedupe::{RefCache, REF_WINDOW};
use crate::limits::{Moderation, SendLimiter};
use crate::persist::{Drain, Persist};
use crate::registry::{Init, Registry};
use crate::store::{self, StoreError};
use crate::{http, AppDeps};
use actix::Actor;
use actix_web::{web, App, HttpServer};
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
    let auth = Arc::new(auth_for(&config)?);
    let store = store::open(&config).await?;

    let refs = Arc::new(RefCache::default());
    let window_start = crate::protocol::now_ms() - REF_WINDOW.as_millis() as i64;
    match store.recent_refs(window_start).await {
        Ok(recent) => refs.warm(
            recent.into_iter().map(|r| r.message),
            crate::protocol::now_ms(),
        ),
        Err(error) => tracing::warn!(%error, "could not rebuild the ref window"),
    }

    let persist = Persist::new(
        store.clone(),
        config.storage.batch_max,
        Duration::from_millis(config.storage.flush_interval_ms),
    )
    .start();
    let registry = Registry::new().start();
    let (shutdown_tx, shutdown) = tokio::sync::watch::channel(false);
    let sessions = Arc::new(AtomicUsize::new(0));
    let broker: SharedBroker = if config.cluster_mode() {
        let instance: Arc<str> = uuid::Uuid::now_v7().to_string().into();
        tracing::info!(%instance, "cluster mode: sequencing and relaying through Redis");
        Arc::new(RedisBroker::start(
            &config,
            store.clone(),
            persist.clone(),
            instance,
            shutdown.clone(),
        )?)
    } else {
        Arc::new(LocalBroker::new(
            store.clone(),
            persist.clone(),
            refs.clone(),
        ))
    };
    let mode = if config.cluster_mode() {
        "cluster"
    } else {
        "embedded"
    };
    let deps = AppDeps {
        config: config.clone(),
        auth,
        store,
        broker,
        persist: persist.clone(),
        registry: registry.clone(),
        refs,
        send_limiter: Arc::new(SendLimiter::new(
            config.limits.messages_per_sec,
            config.limits.message_burst,
        )),
        moderation: Arc::new(Moderation::new(&config.moderation.prohibited_words)),
        connections: Arc::default(),
        shutdown,
        sessions: sessions.clone(),
    };
    let limiter = deps.send_limiter.clone();
    actix_web::rt::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        loop {
            every.tick().await;
            limiter.sweep();
        }
    });
    registry.do_send(Init(deps.clone()));

    let app_deps = deps.clone();
    let stalled_after = Duration::from_secs(config.heartbeat.timeout_secs);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(app_deps.clone()))
            .configure(http::routes)
    })
    .on_connect(move |conn, _| cut_off_stalled_readers(conn, stalled_after))
    .shutdown_timeout(config.server.shutdown_grace_secs)
    .disable_signals()
    .bind(&config.server.bind)
    .map_err(|source| StartError::Bind {
        bind: config.server.bind.clone(),
        source,
    })?;
    for addr in server.addrs() {
        tracing::info!(mode, "listening on {addr}");
    }
    let server = server.run();
    let grace = Duration::from_secs(config.server.shutdown_grace_secs);
    actix_web::rt::spawn(graceful_shutdown(
        server.handle(),
        shutdown_tx,
        sessions,
        grace,
    ));
    server.await?;

    tracing::info!("stopping: writing buffered messages");
    deps.broker.drain().await;
    let _ = persist.send(Drain).await;
    tracing::info!("stopped");
    Ok(())
}

/// A client that stops reading fills the socket buffers; actix then stops
/// polling its session actor, so neither the heartbeat nor the 1013 close can
/// run. The kernel is the one left to notice: with `TCP_USER_TIMEOUT` it drops
/// a connection whose receive window stayed closed (or whose data went
/// unacknowledged) for the heartbeat timeout, which ends the session.
fn cut_off_stalled_readers(conn: &dyn std::any::Any, after: Duration) {
    #[cfg(target_os = "linux")]
    if let Some(stream) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
        if let Err(e) = socket2::SockRef::from(stream).set_tcp_user_timeout(Some(after)) {
            tracing::debug!(error = %e, "could not set TCP_USER_TIMEOUT");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (conn, after);
}

/// SIGTERM or SIGINT: stop accepting, tell every session to close with 1001,
/// give their close frames a moment (bounded by the grace period), then stop
/// HTTP. `serve` drains Persist after that, so nothing acked is lost.
async fn graceful_shutdown(
    server: actix_web::dev::ServerHandle,
    shutdown: tokio::sync::watch::Sender<bool>,
    sessions: Arc<AtomicUsize>,
    grace: Duration,
) {
    wait_for_signal().await;
    tracing::info!("shutting down: closing connections");
    server.pause().await;
    let _ = shutdown.send(true);
    let deadline = tokio::time::Instant::now() + grace;
    while sessions.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop(true).await;
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

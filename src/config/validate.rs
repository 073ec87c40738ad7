//! Validation of a loaded configuration: every impossible value stops startup
//! with one line naming its key.

use super::{invalid, Config, ConfigError, MIN_SECRET_BYTES};

impl Config {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let c = self;
        let bind_ok = c.server.bind.parse::<std::net::SocketAddr>().is_ok()
            || c.server
                .bind
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !bind_ok {
            return Err(invalid("server.bind", "expected HOST:PORT"));
        }
        // Upper bounds keep arithmetic and allocations sane; all are far above real use.
        let bounds: [(&str, u64, u64); 17] = [
            (
                "server.request_timeout_secs",
                c.server.request_timeout_secs,
                3600,
            ),
            (
                "limits.session_queue_bytes",
                c.limits.session_queue_bytes as u64,
                1 << 30,
            ),
            (
                "limits.rooms_per_connection",
                c.limits.rooms_per_connection as u64,
                1_000_000,
            ),
            (
                "limits.rooms_per_instance",
                c.limits.rooms_per_instance as u64,
                100_000_000,
            ),
            ("metrics.room_series", c.metrics.room_series as u64, 100_000),
            (
                "server.shutdown_grace_secs",
                c.server.shutdown_grace_secs,
                3600,
            ),
            (
                "auth.token_ttl_secs",
                c.auth.token_ttl_secs,
                10 * 365 * 86_400,
            ),
            ("storage.pool_size", c.storage.pool_size as u64, 1024),
            ("storage.batch_max", c.storage.batch_max as u64, 100_000),
            (
                "storage.flush_interval_ms",
                c.storage.flush_interval_ms,
                60_000,
            ),
            ("rooms.recovery_max", c.rooms.recovery_max, 100_000),
            (
                "limits.max_frame_bytes",
                c.limits.max_frame_bytes as u64,
                64 << 20,
            ),
            (
                "limits.max_message_chars",
                c.limits.max_message_chars as u64,
                1_000_000,
            ),
            (
                "limits.history_page_max",
                u64::from(c.limits.history_page_max),
                1000,
            ),
            (
                "limits.session_queue",
                c.limits.session_queue as u64,
                1 << 20,
            ),
            ("heartbeat.interval_secs", c.heartbeat.interval_secs, 86_400),
            ("heartbeat.timeout_secs", c.heartbeat.timeout_secs, 86_400),
        ];
        for (key, value, max) in bounds {
            if value > max {
                return Err(invalid(key, format!("must be at most {max}")));
            }
        }
        for origin in &c.server.allowed_origins {
            check_origin(origin).map_err(|why| {
                invalid(
                    "server.allowed_origins",
                    format!("{origin:?} is not an origin ({why}); write scheme://host[:port], for example \"https://chat.example.com\""),
                )
            })?;
        }
        let secret_len = c.auth.jwt_secret.len();
        if secret_len > 0 && secret_len < MIN_SECRET_BYTES {
            return Err(invalid(
                "auth.jwt_secret",
                format!(
                    "is {secret_len} bytes; use at least {MIN_SECRET_BYTES} (for example `openssl rand -hex 32`), or leave it empty to generate one"
                ),
            ));
        }
        let tls = &c.server.tls;
        if tls.cert.is_empty() != tls.key.is_empty() {
            return Err(invalid("server.tls", "set both cert and key, or neither"));
        }
        if c.auth.token_ttl_secs == 0 {
            return Err(invalid("auth.token_ttl_secs", "must be at least 1"));
        }
        c.storage.location()?;
        if c.storage.pool_size == 0 {
            return Err(invalid("storage.pool_size", "must be at least 1"));
        }
        if c.storage.batch_max == 0 {
            return Err(invalid("storage.batch_max", "must be at least 1"));
        }
        if c.broker.namespace.is_empty() {
            return Err(invalid("broker.namespace", "must not be empty"));
        }
        let redis = &c.broker.redis_url;
        if !(redis.is_empty() || redis.starts_with("redis://") || redis.starts_with("rediss://")) {
            return Err(invalid("broker.redis_url", "must start with redis://"));
        }
        if c.rooms.join_history > 100 {
            return Err(invalid("rooms.join_history", "must be between 0 and 100"));
        }
        let l = &c.limits;
        if l.max_frame_bytes < 128 {
            return Err(invalid("limits.max_frame_bytes", "must be at least 128"));
        }
        if l.max_message_chars == 0 {
            return Err(invalid("limits.max_message_chars", "must be at least 1"));
        }
        if l.history_page_max == 0 {
            return Err(invalid("limits.history_page_max", "must be at least 1"));
        }
        if l.messages_per_sec == 0 {
            return Err(invalid("limits.messages_per_sec", "must be at least 1"));
        }
        if l.message_burst == 0 {
            return Err(invalid("limits.message_burst", "must be at least 1"));
        }
        if l.session_queue == 0 {
            return Err(invalid("limits.session_queue", "must be at least 1"));
        }
        if l.session_queue_bytes < 4096 {
            return Err(invalid(
                "limits.session_queue_bytes",
                "must be at least 4096",
            ));
        }
        if l.rooms_per_connection == 0 {
            return Err(invalid("limits.rooms_per_connection", "must be at least 1"));
        }
        if l.rooms_per_instance == 0 {
            return Err(invalid("limits.rooms_per_instance", "must be at least 1"));
        }
        if l.joins_per_sec == 0 {
            return Err(invalid("limits.joins_per_sec", "must be at least 1"));
        }
        if c.server.request_timeout_secs == 0 {
            return Err(invalid("server.request_timeout_secs", "must be at least 1"));
        }
        if !c.metrics.bind.is_empty()
            && c.metrics
                .bind
                .rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        {
            return Err(invalid("metrics.bind", "expected HOST:PORT, or empty"));
        }
        if c.moderation.spam_repeats == 0 {
            return Err(invalid("moderation.spam_repeats", "must be at least 1"));
        }
        if c.heartbeat.interval_secs == 0 {
            return Err(invalid("heartbeat.interval_secs", "must be at least 1"));
        }
        if c.heartbeat.timeout_secs <= c.heartbeat.interval_secs {
            return Err(invalid(
                "heartbeat.timeout_secs",
                "must be greater than heartbeat.interval_secs",
            ));
        }
        Ok(())
    }

    /// Cluster mode needs `auth.jwt_secret` set: a secret generated in each
    /// instance's data_dir would differ, and tokens would work on one instance
    /// only. Checked by `serve`, `check-config` and `token`, not by commands
    /// that never touch tokens (migrate, export, import).
    pub fn check_shared_secret(&self) -> Result<(), ConfigError> {
        if self.cluster_mode() && self.auth.jwt_secret.is_empty() {
            return Err(invalid(
                "auth.jwt_secret",
                "must be set in cluster mode (broker.redis_url is set): every instance must share it (for example CONFAB__AUTH__JWT_SECRET=$(openssl rand -hex 32) on each)",
            ));
        }
        Ok(())
    }
}

/// `scheme://host[:port]` as browsers send it in `Origin`: http or https, a
/// host (name, IPv4 or `[IPv6]`), an optional port, and nothing else. Anything
/// more could never equal a browser's Origin, so it is a mistake to report.
pub(super) fn check_origin(origin: &str) -> Result<(), &'static str> {
    let (scheme, rest) = origin.split_once("://").ok_or("no scheme://")?;
    if scheme != "http" && scheme != "https" {
        return Err("the scheme must be http or https, in lower case");
    }
    if rest.ends_with('/') {
        return Err("no trailing /");
    }
    if rest.contains(['/', '?', '#']) {
        return Err("no path, query or fragment");
    }
    if rest.contains('@') {
        return Err("no user or password");
    }
    if rest.contains('*') {
        return Err("no wildcards: list each origin");
    }
    let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
        let (v6, after) = bracketed.split_once(']').ok_or("unclosed [")?;
        v6.parse::<std::net::Ipv6Addr>()
            .map_err(|_| "not an IPv6 address between [ ]")?;
        match after {
            "" => (v6, None),
            _ => (v6, Some(after.strip_prefix(':').ok_or("junk after ]")?)),
        }
    } else {
        match rest.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    if !rest.starts_with('[') {
        let label_ok = |l: &str| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if host.is_empty() {
            return Err("no host");
        }
        if !host.split('.').all(label_ok) {
            return Err("the host must be a DNS name or IP address (ASCII; punycode for others)");
        }
    }
    if let Some(port) = port {
        if !port.bytes().all(|b| b.is_ascii_digit()) || port.parse::<u16>().map_or(true, |p| p == 0)
        {
            return Err("the port must be a number from 1 to 65535");
        }
    }
    Ok(())
}

//! Configuration: a TOML file, overridden by `CONFAB__SECTION__KEY` variables,
//! validated up front so a bad value stops startup with one line naming its key.

mod redact;
mod validate;

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config: cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not TOML; `line` is where the parser stopped.
    #[error("config: {path}: {}{}", source.message().trim(), line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    Parse {
        path: String,
        line: Option<usize>,
        source: Box<toml::de::Error>,
    },
    #[error("config: {key}: {message}")]
    Invalid { key: String, message: String },
}

/// The shortest `auth.jwt_secret` accepted: HS256 wants a key of at least its
/// 256-bit output, and a short one can be brute-forced from any token.
pub const MIN_SECRET_BYTES: usize = 32;

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub storage: StorageConfig,
    pub broker: BrokerConfig,
    pub rooms: RoomsConfig,
    pub limits: LimitsConfig,
    pub moderation: ModerationConfig,
    pub heartbeat: HeartbeatConfig,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub bind: String,
    pub allowed_origins: Vec<String>,
    pub shutdown_grace_secs: u64,
    /// Longest one HTTP request (head and body) may take to arrive.
    pub request_timeout_secs: u64,
    pub tls: TlsConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            allowed_origins: Vec::new(),
            shutdown_grace_secs: 10,
            request_timeout_secs: 10,
            tls: TlsConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub guest: bool,
    pub jwt_secret: String,
    pub token_ttl_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            guest: true,
            jwt_secret: String::new(),
            token_ttl_secs: 86_400,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    pub url: String,
    pub pool_size: usize,
    pub batch_max: usize,
    pub flush_interval_ms: u64,
    pub retention_days: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            url: "sqlite://confab.db".into(),
            pool_size: 8,
            batch_max: 512,
            flush_interval_ms: 5,
            retention_days: 0,
        }
    }
}

/// Where the store lives, decided once from `storage.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    Sqlite(PathBuf),
    Postgres(String),
}

impl StorageConfig {
    pub fn location(&self) -> Result<StoreLocation, ConfigError> {
        if let Some(rest) = self.url.strip_prefix("sqlite://") {
            if rest.is_empty() {
                return Err(invalid("storage.url", "sqlite:// needs a file name"));
            }
            let path = Path::new(rest);
            let path = if path.is_absolute() {
                path.to_path_buf()
            } else {
                self.data_dir.join(path)
            };
            Ok(StoreLocation::Sqlite(path))
        } else if self.url.starts_with("postgres://") || self.url.starts_with("postgresql://") {
            Ok(StoreLocation::Postgres(self.url.clone()))
        } else {
            Err(invalid(
                "storage.url",
                "must start with sqlite:// or postgres://",
            ))
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    pub redis_url: String,
    pub namespace: String,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            redis_url: String::new(),
            namespace: "confab".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoomsConfig {
    pub join_history: u32,
    pub recovery_max: u64,
}

impl Default for RoomsConfig {
    fn default() -> Self {
        Self {
            join_history: 50,
            recovery_max: 1000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_frame_bytes: usize,
    pub max_message_chars: usize,
    pub history_page_max: u32,
    pub messages_per_sec: u32,
    pub message_burst: u32,
    pub connections_per_ip: u32,
    pub session_queue: usize,
    /// Bytes waiting for one client (frames and history replies) before it is closed with 1013.
    pub session_queue_bytes: usize,
    /// Rooms one connection may have joined at once (over it: `too_many_rooms`).
    pub rooms_per_connection: usize,
    /// Rooms active on this instance at once (over it: `too_many_rooms`).
    pub rooms_per_instance: usize,
    /// Joins and leaves per user per second, sustained (burst: 4x).
    pub joins_per_sec: u32,
    /// Guest logins per client IP per minute (0 = unlimited).
    pub logins_per_minute: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: 65_536,
            max_message_chars: 2000,
            history_page_max: 100,
            messages_per_sec: 5,
            message_burst: 10,
            connections_per_ip: 1000,
            session_queue: 1024,
            session_queue_bytes: 8 << 20,
            rooms_per_connection: 100,
            rooms_per_instance: 100_000,
            joins_per_sec: 10,
            logins_per_minute: 60,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModerationConfig {
    pub prohibited_words: Vec<String>,
    pub spam_repeats: u32,
    pub spam_window_secs: u64,
}

impl Default for ModerationConfig {
    fn default() -> Self {
        Self {
            prohibited_words: Vec::new(),
            spam_repeats: 3,
            spam_window_secs: 10,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeartbeatConfig {
    pub interval_secs: u64,
    pub timeout_secs: u64,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        Self {
            interval_secs: 15,
            timeout_secs: 45,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: LogLevel,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: LogLevel::Info,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Empty: `/metrics` on `server.bind`; else its own HOST:PORT (and not on `server.bind`).
    pub bind: String,
    /// Set: `/metrics` needs `Authorization: Bearer <token>`.
    pub token: String,
    /// Rooms with their own `confab_room_*` series: the busiest N (0 = none).
    pub room_series: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            bind: String::new(),
            token: String::new(),
            room_series: 50,
        }
    }
}

/// Where the configuration came from, for the startup log.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    File(PathBuf),
    Defaults,
}

impl Config {
    /// Finds the file per CONFIG.md (`--config`, `$CONFAB_CONFIG`, `./config.toml`,
    /// else defaults), then applies the process environment and validates.
    pub fn load(explicit: Option<&Path>) -> Result<(Config, ConfigSource), ConfigError> {
        let path = match explicit {
            Some(p) => Some(p.to_path_buf()),
            None => match std::env::var_os("CONFAB_CONFIG") {
                Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
                _ => {
                    let local = PathBuf::from("config.toml");
                    local.exists().then_some(local)
                }
            },
        };
        let text = match &path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.clone(),
                source,
            })?,
            None => String::new(),
        };
        let label = path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "defaults".into());
        let config = Self::from_toml_and_env(&text, &label, std::env::vars())?;
        let source = path.map_or(ConfigSource::Defaults, ConfigSource::File);
        Ok((config, source))
    }

    /// Pure core of [`Config::load`]: parse, overlay the `CONFAB__…` variables, validate.
    pub fn from_toml_and_env(
        text: &str,
        label: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table =
            text.parse()
                .map_err(|source: toml::de::Error| ConfigError::Parse {
                    path: label.to_string(),
                    line: source
                        .span()
                        .map(|s| text[..s.start].matches('\n').count() + 1),
                    source: Box::new(source),
                })?;
        let mut overrides: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with("CONFAB__"))
            .collect();
        overrides.sort();
        for (name, raw) in overrides {
            apply_env_override(&mut table, &name, &raw)?;
        }
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let path = e.path().to_string();
                let message = e.inner().message().trim().to_string();
                invalid(if path == "." { "config" } else { &path }, message)
            })?;
        config.validate()?;
        Ok(config)
    }

    pub fn cluster_mode(&self) -> bool {
        !self.broker.redis_url.is_empty()
    }
}

/// Sets `section.key` from `CONFAB__SECTION__KEY`. The raw value is read as the
/// key's own type (known from the defaults): strings stay verbatim, everything else
/// is parsed as a TOML value, so `8080` is a number and `["a"]` an array.
fn apply_env_override(table: &mut toml::Table, name: &str, raw: &str) -> Result<(), ConfigError> {
    let path: Vec<String> = name["CONFAB__".len()..]
        .split("__")
        .map(|s| s.to_ascii_lowercase())
        .collect();
    let key = path.join(".");
    if path.iter().any(|p| p.is_empty()) {
        return Err(invalid(name, "malformed variable name"));
    }
    let defaults = toml::Value::try_from(Config::default())
        .map_err(|e| invalid(&key, format!("cannot read defaults: {e}")))?;
    let mut expected = &defaults;
    for part in &path {
        expected = expected
            .get(part)
            .ok_or_else(|| invalid(&key, format!("unknown key (from {name})")))?;
    }
    let value = match expected {
        toml::Value::String(_) => toml::Value::String(raw.to_string()),
        toml::Value::Table(_) => {
            return Err(invalid(
                &key,
                format!("is a section; set its keys ({name})"),
            ))
        }
        _ => {
            let doc: toml::Table = format!("v = {raw}")
                .parse()
                .map_err(|_| invalid(&key, format!("cannot parse {raw:?} from {name}")))?;
            doc.get("v")
                .cloned()
                .unwrap_or(toml::Value::String(raw.to_string()))
        }
    };
    let (last, parents) = path.split_last().expect("path has at least one part");
    let mut cursor = table;
    for part in parents {
        let entry = cursor
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cursor = entry
            .as_table_mut()
            .ok_or_else(|| invalid(part, "expected a section"))?;
    }
    cursor.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::redact::redact_url_password;
    use super::*;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_toml_and_env(
            text,
            "test.toml",
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = parse("", &[]).unwrap();
        assert_eq!(c.server.bind, "127.0.0.1:8080");
        assert!(c.auth.guest);
        assert_eq!(c.storage.batch_max, 512);
        assert_eq!(c.rooms.join_history, 50);
        assert_eq!(c.limits.max_frame_bytes, 65536);
        assert_eq!(
            c.storage.location().unwrap(),
            StoreLocation::Sqlite(PathBuf::from("./data/confab.db"))
        );
        assert!(!c.cluster_mode());
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse("[rooms]\njoin_histroy = 3\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("rooms"), "{e}");
        assert!(e.contains("join_histroy"), "{e}");
    }

    #[test]
    fn wrong_type_is_named() {
        let e = parse("[limits]\nmax_frame_bytes = \"big\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("limits.max_frame_bytes"), "{e}");
    }

    #[test]
    fn impossible_value_is_named() {
        let e = parse("[rooms]\njoin_history = 101\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("rooms.join_history"), "{e}");
    }

    #[test]
    fn upper_bounds_and_bind_are_checked() {
        let e = parse("[limits]\nhistory_page_max = 4294967295\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("limits.history_page_max"), "{e}");
        let e = parse("[server]\nbind = \"foo:bar\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("server.bind"), "{e}");
        assert!(parse("[server]\nbind = \"localhost:8080\"\n", &[]).is_ok());
    }

    #[test]
    fn env_overrides_use_the_key_type() {
        let c = parse(
            "[rooms]\njoin_history = 10\n",
            &[
                ("CONFAB__ROOMS__JOIN_HISTORY", "2"),
                (
                    "CONFAB__AUTH__JWT_SECRET",
                    "0123456789abcdef0123456789abcdef",
                ),
                ("CONFAB__AUTH__GUEST", "false"),
                ("CONFAB__SERVER__ALLOWED_ORIGINS", "[\"https://a.example\"]"),
                ("CONFAB__STORAGE__URL", "postgres://u:pw@h/db"),
            ],
        )
        .unwrap();
        assert_eq!(c.rooms.join_history, 2);
        assert_eq!(c.auth.jwt_secret, "0123456789abcdef0123456789abcdef");
        assert!(!c.auth.guest);
        assert_eq!(c.server.allowed_origins, vec!["https://a.example"]);
        assert!(c.redacted_toml().contains("postgres://u:<redacted>@h/db"));
    }

    #[test]
    fn env_unknown_key_is_named() {
        let e = parse("", &[("CONFAB__ROOMS__NOPE", "1")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("rooms.nope"), "{e}");
    }

    #[test]
    fn secret_is_redacted() {
        let c = parse(
            "[auth]\njwt_secret = \"hunter2-hunter2-hunter2-hunter2-hunter2\"\n",
            &[],
        )
        .unwrap();
        let shown = c.redacted_toml();
        assert!(!shown.contains("hunter2"));
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn short_secret_is_refused_naming_key_and_minimum() {
        let e = parse("[auth]\njwt_secret = \"hunter2\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("auth.jwt_secret") && e.contains("32"), "{e}");
        let e = parse("", &[("CONFAB__AUTH__JWT_SECRET", &"x".repeat(31))])
            .unwrap_err()
            .to_string();
        assert!(e.contains("auth.jwt_secret"), "{e}");
        assert!(parse("", &[("CONFAB__AUTH__JWT_SECRET", &"x".repeat(32))]).is_ok());
        // Empty means "generate one".
        assert!(parse("[auth]\njwt_secret = \"\"\n", &[]).is_ok());
    }

    #[test]
    fn cluster_mode_needs_a_shared_secret() {
        let cluster = "[broker]\nredis_url = \"redis://127.0.0.1:6379\"\n";
        let c = parse(cluster, &[]).unwrap();
        let e = c.check_shared_secret().unwrap_err().to_string();
        assert!(e.contains("auth.jwt_secret"), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
        let c = parse(cluster, &[("CONFAB__AUTH__JWT_SECRET", &"s".repeat(40))]).unwrap();
        assert!(c.check_shared_secret().is_ok());
        assert!(parse("", &[]).unwrap().check_shared_secret().is_ok());
    }

    #[test]
    fn allowed_origins_must_be_origins() {
        for good in [
            "https://chat.example.com",
            "http://localhost:8080",
            "http://127.0.0.1:3000",
            "https://[::1]:8443",
            "https://[2001:db8::1]",
            "https://xn--bcher-kva.example",
        ] {
            let text = format!("[server]\nallowed_origins = [{good:?}]\n");
            assert!(parse(&text, &[]).is_ok(), "{good}");
        }
        for bad in [
            "chat.example.com",
            "https://chat.example.com/",
            "https://chat.example.com/app",
            "https://chat.example.com?x=1",
            "https://chat.example.com#top",
            "https://user:pw@chat.example.com",
            "https://*.example.com",
            "*",
            "ftp://chat.example.com",
            "HTTPS://chat.example.com",
            "https://",
            "https://chat.example.com:",
            "https://chat.example.com:0",
            "https://chat.example.com:99999",
            "https://chat..example.com",
            "https://chät.example.com",
            "https://[::1",
            "https://[zz]",
            "https://ex ample.com",
            "null",
            "",
        ] {
            let text = format!("[server]\nallowed_origins = [\"https://ok.example\", {bad:?}]\n");
            let e = parse(&text, &[]).unwrap_err().to_string();
            assert!(e.contains("server.allowed_origins"), "{bad}: {e}");
            assert!(e.contains(&format!("{bad:?}")), "names the entry: {e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
    }

    #[test]
    fn url_passwords_are_redacted() {
        for (url, shown) in [
            (
                "postgres://u:secret@host/db",
                "postgres://u:<redacted>@host/db",
            ),
            (
                "postgres://u:se@cret@host:5432/db",
                "postgres://u:<redacted>@host:5432/db",
            ),
            (
                "postgres://u:se/c?r#et@host/db",
                "postgres://u:<redacted>@host/db",
            ),
            (
                "redis://:secret@redis.internal:6379",
                "redis://:<redacted>@redis.internal:6379",
            ),
            (
                "postgres://u@host/db?sslmode=require&password=secret",
                "postgres://u@host/db?sslmode=require&password=<redacted>",
            ),
            ("postgres://u@host/db", "postgres://u@host/db"),
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("sqlite://confab.db", "sqlite://confab.db"),
        ] {
            assert_eq!(redact_url_password(url), shown, "{url}");
        }
    }
}

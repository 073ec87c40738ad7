//! The `confab` binary: the command line of docs/configuration.md.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use confab::config::{Config, ConfigSource, LogFormat};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "confab",
    version = confab::metrics::LONG_VERSION,
    about = "A real-time chat server in one binary"
)]
struct Cli {
    /// Configuration file (else $CONFAB_CONFIG, else ./config.toml, else defaults)
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default)
    Serve,
    /// Apply pending database migrations and exit
    Migrate,
    /// Print a JWT signed with the configured secret
    Token {
        #[arg(long)]
        sub: String,
        #[arg(long)]
        name: String,
        /// Lifetime in seconds (default: auth.token_ttl_secs)
        #[arg(long)]
        ttl: Option<u64>,
        /// Comma-separated rooms the token may use; `team-*` is a prefix
        #[arg(long)]
        rooms: Option<String>,
        /// A moderator: may delete anyone's messages (claim `"mod": true`)
        #[arg(long = "mod")]
        moderator: bool,
        /// A server admin: manages every room like its owner (claim `"admin": true`)
        #[arg(long)]
        admin: bool,
    },
    /// Validate a configuration and print the effective one (secrets redacted)
    CheckConfig {
        /// The file to check (else the usual lookup)
        file: Option<PathBuf>,
    },
    /// Write a room's messages to stdout, oldest first
    Export {
        /// The room to export
        #[arg(long)]
        room: String,
        /// Only messages with a seq above this one
        #[arg(long, value_name = "SEQ", default_value_t = 0)]
        since: u64,
        /// ndjson: one history message object per line; csv: RFC 4180 with a header
        #[arg(long, value_enum)]
        format: confab::transfer::Format,
    },
    /// Load an NDJSON export back (messages already there are kept as they are)
    Import {
        /// The NDJSON file to load
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve);
    let config_path = match &command {
        Command::CheckConfig { file: Some(file) } => Some(file.clone()),
        _ => cli.config.clone(),
    };
    let loaded = Config::load(config_path.as_deref()).and_then(|(config, source)| {
        // Commands that sign or check tokens need the cluster's shared secret.
        if matches!(
            command,
            Command::Serve | Command::CheckConfig { .. } | Command::Token { .. }
        ) {
            config.check_shared_secret()?;
        }
        Ok((config, source))
    });
    let (config, source) = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            report(format_args!("confab: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let result = match command {
        Command::CheckConfig { .. } => {
            let mut out = std::io::stdout().lock();
            out.write_all(config.redacted_toml().as_bytes())
                .and_then(|()| out.flush())
                .context("writing to stdout")
        }
        Command::Token {
            sub,
            name,
            ttl,
            rooms,
            moderator,
            admin,
        } => token(
            &config,
            &source,
            &sub,
            &name,
            ttl,
            rooms,
            (moderator, admin),
        ),
        Command::Migrate => {
            init_logging(&config);
            run_async(async { confab::store::migrate(&config).await.context("migrate") })
                .map(|()| tracing::info!("migrations are up to date"))
        }
        Command::Export {
            room,
            since,
            format,
        } => {
            init_logging(&config);
            run_async(confab::transfer::run_export(&config, &room, since, format))
        }
        Command::Import { file } => {
            init_logging(&config);
            run_async(confab::transfer::run_import(&config, &file))
        }
        Command::Serve => {
            init_logging(&config);
            match &source {
                ConfigSource::File(path) => tracing::info!(config = %path.display(), "starting"),
                ConfigSource::Defaults => tracing::info!("starting with built-in defaults"),
            }
            run_async(async { confab::server::serve(config).await.context("serve") })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(format_args!("confab: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

/// One line on stderr. Unlike `eprintln!`, it never panics when stderr is
/// closed or a broken pipe: the exit code still tells what happened.
fn report(message: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "{message}");
}

fn run_async(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    actix_web::rt::System::new().block_on(fut)
}

/// Mints a token with the server's secret. It never creates one: a secret
/// made up here (another directory, another data_dir) would sign tokens the
/// server rejects, so without a secret it stops and says where it looked.
fn token(
    config: &Config,
    source: &ConfigSource,
    sub: &str,
    name: &str,
    ttl: Option<u64>,
    rooms: Option<String>,
    (moderator, admin): (bool, bool),
) -> anyhow::Result<()> {
    use confab::auth::{load_secret, SecretError, SecretSource};
    let name = confab::protocol::check_display_name(name)
        .map_err(|e| anyhow::anyhow!("--name: {}", e.message))?;
    anyhow::ensure!(!sub.is_empty(), "--sub must not be empty");
    let config_file = match source {
        ConfigSource::File(path) => format!("config file {}", shown_path(path)),
        ConfigSource::Defaults => {
            "no config file (no --config, no $CONFAB_CONFIG, no ./config.toml)".to_string()
        }
    };
    let (secret, used) = match load_secret(&config.auth.jwt_secret, &config.storage.data_dir) {
        Ok(found) => found,
        Err(SecretError::Missing { path }) => anyhow::bail!(
            "no JWT secret to sign with: auth.jwt_secret is not set ({config_file}) and there is no secret file {}.\n\
             Run `confab token` with the server's --config (it reads the secret the server generated in its data_dir), \
             or set auth.jwt_secret (or CONFAB__AUTH__JWT_SECRET) to the server's secret. \
             confab token never creates a secret: the server would reject its tokens.",
            shown_path(&path)
        ),
        Err(e) => return Err(e.into()),
    };
    let from = match used {
        SecretSource::Configured if secret_from_env() => {
            "auth.jwt_secret from the environment (CONFAB__AUTH__JWT_SECRET)".to_string()
        }
        SecretSource::Configured => format!("auth.jwt_secret from {config_file}"),
        SecretSource::File(path) => format!("the secret file {}", shown_path(&path)),
    };
    report(format_args!("confab: token signed with {from}"));
    let auth = confab::auth::Auth::new(&secret);
    let rooms = rooms.map(|r| {
        r.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    });
    let ttl = ttl.unwrap_or(config.auth.token_ttl_secs);
    let token = auth.mint_as(sub, &name, ttl, rooms, moderator, admin);
    let mut out = std::io::stdout().lock();
    writeln!(out, "{token}")
        .and_then(|()| out.flush())
        .context("writing the token to stdout")
}

/// Whether `CONFAB__AUTH__JWT_SECRET` (any case, as the config loader reads it) is set.
fn secret_from_env() -> bool {
    std::env::vars_os().any(|(k, v)| {
        !v.is_empty()
            && k.to_str().is_some_and(|k| {
                k.starts_with("CONFAB__") && k.eq_ignore_ascii_case("CONFAB__AUTH__JWT_SECRET")
            })
    })
}

/// A path as the user can find it: absolute when it can be made so.
fn shown_path(path: &std::path::Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("CONFAB_LOG").unwrap_or_else(|_| {
        // actix-http logs every unparsable request at ERROR; confab's
        // `connection` module warns about them instead, rate-limited.
        EnvFilter::new(format!(
            "{},actix_server=warn,actix_http::h1::dispatcher=off",
            config.log.level.as_str()
        ))
    });
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LossyStderr)
        // Its report of a failed write is an `eprintln!`, which panics on a
        // broken stderr, in whatever task logged (the shutdown task, say).
        .log_internal_errors(false)
        .with_ansi(std::io::stderr().is_terminal());
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Log output on stderr that drops what it cannot write. A log line is not
/// worth a task: with stderr a closed pipe (a log collector gone away), a
/// failed write must not panic or stop anything, shutdown least of all.
struct LossyStderr;

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().lock().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

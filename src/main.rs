//! The `confab` binary: the command line of docs/configuration.md.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use confab::config::{Config, ConfigSource, LogFormat};
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
    let (config, source) = match Config::load(config_path.as_deref()) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("confab: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match command {
        Command::CheckConfig { .. } => {
            print!("{}", config.redacted_toml());
            Ok(())
        }
        Command::Token {
            sub,
            name,
            ttl,
            rooms,
        } => token(&config, &sub, &name, ttl, rooms),
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
            eprintln!("confab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_async(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    actix_web::rt::System::new().block_on(fut)
}

fn token(
    config: &Config,
    sub: &str,
    name: &str,
    ttl: Option<u64>,
    rooms: Option<String>,
) -> anyhow::Result<()> {
    let name = confab::protocol::check_display_name(name)
        .map_err(|e| anyhow::anyhow!("--name: {}", e.message))?;
    anyhow::ensure!(!sub.is_empty(), "--sub must not be empty");
    let auth = confab::server::auth_for(config)?;
    let rooms = rooms.map(|r| {
        r.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    });
    println!(
        "{}",
        auth.mint(sub, &name, ttl.unwrap_or(config.auth.token_ttl_secs), rooms)
    );
    Ok(())
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
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

//! Cluster-mode fixtures: a fresh Postgres database and a Redis namespace per
//! test (so runs never collide), and a private redis-server for fault tests.

use super::{run_cli, toml_str, uid, CliOutput, Server, ServerBuilder};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The default Postgres server (trust auth on localhost); see [`pg`].
pub const PG: &str = "postgres://postgres@127.0.0.1:5432";

/// The Postgres server tests use, as a URL without a database:
/// `$CONFAB_TEST_PG` when set (.ci/run sets it, with a password, on machines
/// whose Postgres wants one), else [`PG`].
pub fn pg() -> String {
    std::env::var("CONFAB_TEST_PG")
        .ok()
        .map(|url| url.trim_end_matches('/').to_string())
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| PG.to_string())
}

/// `psql` on database `db` of [`pg`] (the URL carries user and password).
fn psql_command(db: &str) -> Command {
    let mut cmd = Command::new("psql");
    cmd.arg("-X").arg("-d").arg(format!("{}/{db}", pg()));
    cmd
}
pub const SHARED_REDIS: &str = "redis://127.0.0.1:6379";

/// A database `confab_t_<hex>`, dropped at the end (even after a failure).
pub struct TestDb {
    pub name: String,
}

impl TestDb {
    pub fn create() -> TestDb {
        let name = format!("confab_t_{}", uuid::Uuid::new_v4().simple());
        psql("postgres", &format!("CREATE DATABASE {name}"));
        TestDb { name }
    }

    pub fn url(&self) -> String {
        format!("{}/{}", pg(), self.name)
    }

    /// One value (or rows, one per line) from a query in this database.
    pub fn query(&self, sql: &str) -> String {
        psql(&self.name, sql)
    }

    /// Simulates a database outage for this database only: new connections are
    /// refused and existing ones are cut.
    pub fn block(&self) {
        psql(
            "postgres",
            &format!("ALTER DATABASE {} ALLOW_CONNECTIONS false", self.name),
        );
        psql(
            "postgres",
            &format!(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{}'",
                self.name
            ),
        );
    }

    pub fn unblock(&self) {
        psql(
            "postgres",
            &format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", self.name),
        );
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = psql_command("postgres")
            .arg("-qAtc")
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

pub fn psql(db: &str, sql: &str) -> String {
    let out = psql_command(db)
        .args(["-qAtc", sql])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Removes every key of a namespace from the shared Redis at the end.
pub struct Namespace(pub String);

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("redis-cli")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                "6379",
                "--scan",
                "--pattern",
                &format!("{}:*", self.0),
            ])
            .output()
            .map(|out| {
                let keys: Vec<String> = String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(str::to_string)
                    .collect();
                for chunk in keys.chunks(500) {
                    let _ = Command::new("redis-cli")
                        .args(["-h", "127.0.0.1", "-p", "6379", "DEL"])
                        .args(chunk)
                        .stdout(Stdio::null())
                        .status();
                }
            });
    }
}

/// A database, a namespace and a Redis URL shared by every instance of one test.
pub struct ClusterEnv {
    pub db: TestDb,
    pub ns: Namespace,
    pub redis_url: String,
}

impl ClusterEnv {
    pub fn new() -> ClusterEnv {
        Self::with_redis(SHARED_REDIS)
    }

    pub fn with_redis(redis_url: &str) -> ClusterEnv {
        ClusterEnv {
            db: TestDb::create(),
            ns: Namespace(uid("t")),
            redis_url: redis_url.to_string(),
        }
    }

    /// A builder for one instance of this cluster.
    pub fn builder(&self) -> ServerBuilder {
        Server::builder()
            .set("storage", "url", &toml_str(&self.db.url()))
            .set("broker", "redis_url", &toml_str(&self.redis_url))
            .set("broker", "namespace", &toml_str(&self.ns.0))
    }

    pub fn instance(&self) -> Server {
        self.builder().start()
    }
}

/// A private redis-server on a free port that a test can stop and start.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let port = super::free_port();
        let mut server = RedisServer { port, child: None };
        server.spawn();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.ping() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn ping(&self) -> bool {
        Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "PING"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"))
            .unwrap_or(false)
    }

    /// Kills the server: everything it held is gone (it keeps nothing on disk).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty.
    pub fn start_again(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A command against the shared Redis; its output as text.
#[allow(dead_code)]
pub fn redis_cli(args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", "6379"])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Which store a single-instance test server runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A server on its own data dir, and on Postgres its own database (dropped
/// after the server: fields drop in order).
pub struct Node {
    pub server: Server,
    pub db: Option<TestDb>,
}

impl Node {
    pub fn start(backend: Backend) -> Node {
        Node::start_with(backend, |b| b)
    }

    /// `confab <args> --config <this node's config>`, in its data dir.
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        let config = self.server.config_path.display().to_string();
        let mut all = args.to_vec();
        all.extend(["--config", &config]);
        run_cli(&all, &[], self.server.dir())
    }

    /// `confab export --room <room> <extra>`, which must succeed.
    pub fn export(&self, room: &str, extra: &[&str]) -> CliOutput {
        let mut args = vec!["export", "--room", room];
        args.extend(extra);
        let out = self.cli(&args);
        assert_eq!(out.code(), Some(0), "export {room} {extra:?}: {out:?}");
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
        out
    }

    pub fn import(&self, file: &std::path::Path) -> CliOutput {
        self.cli(&["import", &file.display().to_string()])
    }

    /// Starts with more settings (`tune` gets the builder).
    pub fn start_with(backend: Backend, tune: impl FnOnce(ServerBuilder) -> ServerBuilder) -> Node {
        match backend {
            Backend::Sqlite => Node {
                server: tune(Server::builder()).start(),
                db: None,
            },
            Backend::Postgres => {
                let db = TestDb::create();
                let builder = Server::builder().set("storage", "url", &toml_str(&db.url()));
                Node {
                    server: tune(builder).start(),
                    db: Some(db),
                }
            }
        }
    }
}

/// Two tests running one flow: `$flow(Backend::Sqlite)` as `$sqlite`, and
/// `$flow(Backend::Postgres)` as `$postgres`.
#[macro_export]
macro_rules! on_both_backends {
    ($flow:ident: $sqlite:ident, $postgres:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $sqlite() {
            $flow($crate::common::cluster::Backend::Sqlite).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $postgres() {
            $flow($crate::common::cluster::Backend::Postgres).await;
        }
    };
}

//! Hardening round 2 (issue 15): where `confab token` finds its secret, the
//! secret rules (cluster mode, length), `nbf`, check-config redaction,
//! `server.allowed_origins` entries, and SIGTERM with stderr a broken pipe.

mod common;

use common::*;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

fn token_args(config: Option<&str>) -> Vec<&str> {
    let mut args = vec!["token", "--sub", "u-1", "--name", "Ann"];
    if let Some(config) = config {
        args.extend(["--config", config]);
    }
    args
}

/// Exit 1, one line on stderr, naming `key` (and every one of `also`).
fn assert_refused_naming(out: &CliOutput, key: &str, also: &[&str], what: &str) {
    assert_eq!(out.code(), Some(1), "{what}: {out:?}");
    assert!(out.stderr.contains(key), "{what}: names {key}: {out:?}");
    for word in also {
        assert!(
            out.stderr.contains(word),
            "{what}: mentions {word}: {out:?}"
        );
    }
    assert_eq!(
        out.stderr.trim().lines().count(),
        1,
        "{what}: one line: {out:?}"
    );
    assert!(!out.stderr.contains("panicked"), "{what}: {out:?}");
    assert!(out.stdout.is_empty(), "{what}: nothing on stdout: {out:?}");
}

#[test]
fn token_without_a_secret_refuses_and_creates_nothing() {
    // Run from a directory that is not the server's: no config, no data_dir.
    let dir = tempfile::tempdir().unwrap();
    let out = run_cli(&token_args(None), &[], dir.path());
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty(), "no token on stdout: {out:?}");
    let secret_file = dir.path().join("data").join("jwt_secret");
    assert!(out.stderr.contains("auth.jwt_secret"), "{out:?}");
    assert!(
        out.stderr.contains(secret_file.to_str().unwrap()),
        "names the secret file it looked for: {out:?}"
    );
    assert!(out.stderr.contains("no config file"), "{out:?}");
    assert!(
        out.stderr.contains("--config"),
        "says how to fix it: {out:?}"
    );
    assert!(!dir.path().join("data").exists(), "no data_dir created");

    // With a config file that sets no secret: that file is named.
    let data = dir.path().join("srv-data");
    let config = write(
        dir.path(),
        "c.toml",
        &format!(
            "[storage]\ndata_dir = {}\n",
            toml_str(data.to_str().unwrap())
        ),
    );
    let out = run_cli(&token_args(Some(&config)), &[], dir.path());
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains(&config),
        "names the config file: {out:?}"
    );
    assert!(
        out.stderr
            .contains(data.join("jwt_secret").to_str().unwrap()),
        "{out:?}"
    );
    assert!(!data.exists(), "no data_dir created");
}

#[tokio::test]
async fn token_says_which_secret_it_used() {
    // The server's generated secret in its data_dir.
    let s = Server::builder()
        .set("auth", "jwt_secret", "\"\"")
        .set("auth", "guest", "false")
        .start();
    let cfg = s.config_path.to_str().unwrap().to_string();
    let out = run_cli(&token_args(Some(&cfg)), &[], s.dir());
    assert_eq!(out.code(), Some(0), "{out:?}");
    let secret_file = s.dir().join("jwt_secret");
    assert!(
        out.stderr.contains(secret_file.to_str().unwrap()),
        "names the secret file used: {out:?}"
    );
    assert_eq!(
        out.stdout.lines().count(),
        1,
        "stdout is the token: {out:?}"
    );
    let c = s.ws(out.stdout.trim()).await;
    assert_eq!(c.welcome.as_ref().unwrap()["user"]["id"], "u-1");

    // auth.jwt_secret from the config file.
    let s = Server::start();
    let cfg = s.config_path.to_str().unwrap().to_string();
    let out = run_cli(&token_args(Some(&cfg)), &[], s.dir());
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(
        out.stderr.contains("auth.jwt_secret") && out.stderr.contains(&cfg),
        "{out:?}"
    );
    assert!(
        !out.stderr.contains(SECRET),
        "never the secret itself: {out:?}"
    );
    s.ws(out.stdout.trim()).await;

    // auth.jwt_secret from the environment, no file at all.
    let dir = tempfile::tempdir().unwrap();
    let out = run_cli(
        &token_args(None),
        &[("CONFAB__AUTH__JWT_SECRET", SECRET)],
        dir.path(),
    );
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(
        out.stderr.contains("CONFAB__AUTH__JWT_SECRET"),
        "says the secret came from the environment: {out:?}"
    );
    s.ws(out.stdout.trim()).await;
    assert!(!dir.path().join("data").exists(), "no data_dir created");
}

#[test]
fn cluster_mode_without_a_secret_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Config::defaults(dir.path());
    c.set("auth", "jwt_secret", "\"\"");
    c.set("broker", "redis_url", "\"redis://127.0.0.1:6379\"");
    c.set(
        "storage",
        "url",
        "\"postgres://postgres@127.0.0.1:5432/confab_never_used\"",
    );
    let path = write(dir.path(), "cluster.toml", &c.render());
    let serve = run_cli(&["serve", "--config", &path], &[], dir.path());
    assert_refused_naming(&serve, "auth.jwt_secret", &["cluster"], "serve");
    let check = run_cli(&["check-config", &path], &[], dir.path());
    assert_refused_naming(&check, "auth.jwt_secret", &["cluster"], "check-config");
    let token = run_cli(&token_args(Some(&path)), &[], dir.path());
    assert_refused_naming(&token, "auth.jwt_secret", &["cluster"], "token");
    assert!(!dir.path().join("jwt_secret").exists(), "nothing generated");

    // The same file with the secret from the environment is fine.
    let secret = "0123456789abcdef".repeat(4);
    let check = run_cli(
        &["check-config", &path],
        &[("CONFAB__AUTH__JWT_SECRET", &secret)],
        dir.path(),
    );
    assert_eq!(check.code(), Some(0), "{check:?}");
}

#[test]
fn short_secrets_are_refused_naming_key_and_minimum() {
    let dir = tempfile::tempdir().unwrap();
    let short = "a".repeat(31);
    let mut c = Config::defaults(dir.path());
    c.set("auth", "jwt_secret", &toml_str(&short));
    let path = write(dir.path(), "short.toml", &c.render());
    for args in [
        vec!["serve", "--config", &path],
        vec!["check-config", &path],
        token_args(Some(&path)),
    ] {
        let out = run_cli(&args, &[], dir.path());
        assert_refused_naming(&out, "auth.jwt_secret", &["32"], args[0]);
        assert!(
            !out.stderr.contains(&short),
            "the secret is not echoed: {out:?}"
        );
    }
    // From the environment too.
    let good = write(
        dir.path(),
        "good.toml",
        &Config::defaults(dir.path()).render(),
    );
    let out = run_cli(
        &["check-config", &good],
        &[("CONFAB__AUTH__JWT_SECRET", "too-short")],
        dir.path(),
    );
    assert_refused_naming(&out, "auth.jwt_secret", &["32"], "env");
    // 32 bytes is enough.
    let out = run_cli(
        &["check-config", &good],
        &[("CONFAB__AUTH__JWT_SECRET", &"b".repeat(32))],
        dir.path(),
    );
    assert_eq!(out.code(), Some(0), "{out:?}");
}

#[tokio::test]
async fn token_not_yet_valid_is_401_over_websocket_and_rest() {
    let s = Server::builder().set("auth", "guest", "false").start();
    let early = sign_claims(
        &json!({"sub": uid("n"), "name": "n", "exp": now_secs() + 3600, "nbf": now_secs() + 120}),
        SECRET,
    );
    match s.ws_connect(&format!("/ws?token={early}"), &[]).await {
        Ok(_) => panic!("a token whose nbf is in the future must not upgrade"),
        Err(e) => assert_eq!(e.status, 401, "{e:?}"),
    }
    let r = s.get_auth("/api/rooms", &early).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.error_code(), "unauthorized");

    // An nbf in the past is fine, over both.
    let ok = sign_claims(
        &json!({"sub": uid("n"), "name": "n", "exp": now_secs() + 3600, "nbf": now_secs() - 5}),
        SECRET,
    );
    s.ws(&ok).await;
    assert_eq!(s.get_auth("/api/rooms", &ok).await.status, 200);
}

#[test]
fn check_config_redacts_database_and_redis_passwords() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Config::defaults(dir.path());
    c.set("storage", "url", "\"postgres://u:pgpass-7731@host/db\"");
    c.set(
        "broker",
        "redis_url",
        "\"redis://:redispass-9913@redis.internal:6379\"",
    );
    let path = write(dir.path(), "c.toml", &c.render());
    let out = run_cli(&["check-config", &path], &[], dir.path());
    assert_eq!(out.code(), Some(0), "{out:?}");
    let all = format!("{}{}", out.stdout, out.stderr);
    for secret in ["pgpass-7731", "redispass-9913", SECRET] {
        assert!(!all.contains(secret), "{secret} must be redacted: {all}");
    }
    assert!(
        out.stdout.contains("postgres://u:<redacted>@host/db"),
        "{all}"
    );
    assert!(
        out.stdout
            .contains("redis://:<redacted>@redis.internal:6379"),
        "{all}"
    );
}

#[test]
fn allowed_origins_entries_must_be_origins() {
    let dir = tempfile::tempdir().unwrap();
    for bad in [
        "https://chat.example.com/",
        "https://chat.example.com/app",
        "chat.example.com",
        "https://*.example.com",
        "https://user@chat.example.com",
    ] {
        let mut c = Config::defaults(dir.path());
        c.set(
            "server",
            "allowed_origins",
            &format!("[\"https://ok.example.com\", {}]", toml_str(bad)),
        );
        let path = write(dir.path(), "o.toml", &c.render());
        for args in [
            vec!["check-config", &path],
            vec!["serve", "--config", &path],
        ] {
            let out = run_cli(&args, &[], dir.path());
            assert_refused_naming(
                &out,
                "server.allowed_origins",
                &[bad],
                &format!("{} {bad}", args[0]),
            );
        }
    }
    let mut c = Config::defaults(dir.path());
    c.set(
        "server",
        "allowed_origins",
        "[\"https://chat.example.com\", \"http://localhost:3000\", \"http://[::1]:8080\"]",
    );
    let path = write(dir.path(), "o.toml", &c.render());
    let out = run_cli(&["check-config", &path], &[], dir.path());
    assert_eq!(out.code(), Some(0), "{out:?}");
}

/// A log collector that went away leaves stderr a broken pipe: log lines are
/// lost, but SIGTERM must still shut down gracefully (exit 0, in time).
#[tokio::test]
async fn sigterm_with_stderr_a_broken_pipe_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Config::defaults(dir.path());
    c.set("server", "shutdown_grace_secs", "2");
    c.set("log", "level", "\"debug\"");
    let path = write(dir.path(), "c.toml", &c.render());
    let mut cmd = Command::new(bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("CONFAB") || k == "RUST_LOG" || k == "NOTIFY_SOCKET" {
            cmd.env_remove(&k);
        }
    }
    let mut child = cmd
        .args(["serve", "--config", &path])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn confab serve");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    // Read up to the listening line, then close the pipe's read end.
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stderr).lines();
        while let Some(Ok(line)) = lines.next() {
            if let Some(port) = line
                .split("listening on ")
                .nth(1)
                .and_then(|rest| {
                    rest.trim_start_matches("http://")
                        .strip_prefix("127.0.0.1:")
                })
                .and_then(|rest| {
                    rest.chars()
                        .take_while(char::is_ascii_digit)
                        .collect::<String>()
                        .parse::<u16>()
                        .ok()
                })
            {
                let _ = tx.send(port);
                return;
            }
        }
    });
    let port = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(port) => port,
        Err(_) => {
            let _ = child.kill();
            panic!("confab serve did not log `listening on`");
        }
    };
    // The reader thread has returned: the read end is closed. Make the
    // server log (each write now fails with EPIPE).
    for _ in 0..10 {
        let r = http_request(port, "GET", "/api/rooms", &[], None).await;
        assert_eq!(r.status, 200, "{r:?}");
        http_request(port, "GET", "/ws?token=garbage", &[], None).await;
    }
    let tok = token(&uid("p"), "p");
    let ws = ws_connect_url(&format!("ws://127.0.0.1:{port}/ws?token={tok}"), &[])
        .await
        .expect("still serving");
    let started = Instant::now();
    let st = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let within = Duration::from_secs(2) + Duration::from_millis(1500);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            panic!("SIGTERM ignored with stderr a broken pipe: still running after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    drop(ws);
    assert_eq!(status.code(), Some(0), "graceful exit: {status}");
}

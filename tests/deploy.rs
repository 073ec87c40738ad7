//! The deployment artefacts in deploy/ stay valid: the systemd unit passes
//! `systemd-analyze verify`, every example config passes `confab
//! check-config`, and (where nginx is installed) deploy/nginx.conf passes
//! `nginx -t`. See docs/operations.md.
//!
//! `systemd-analyze` comes with Debian's `systemd` package. Without it this
//! test fails when `CI` is set and is skipped otherwise; the same goes for
//! the nginx check (Debian: `nginx`, `openssl`). .ci/run installs all three.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const UNIT: &str = "deploy/confab.service";
const UNIT_EXEC: &str = "/usr/local/bin/confab";
const UNIT_ARGS: &str = "serve --config /etc/confab/config.toml";

fn repo() -> PathBuf {
    // cargo sets it when running tests, too; the compile-time value is the fallback.
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_confab")
}

fn read(rel: &str) -> String {
    let path = repo().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn show(out: &Output) -> String {
    format!(
        "exit: {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Whether `program` can be started at all (`program ARG`, ARG printing a
/// version; never run nginx without arguments: that starts it).
fn installed(program: &str, arg: &str) -> bool {
    Command::new(program).arg(arg).output().is_ok()
}

/// A tool the test needs: missing fails under CI, and skips elsewhere.
fn required_tool(program: &str, package: &str) -> bool {
    if installed(program, "--version") {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{program} is not installed (CI is set); install the Debian package `{package}`");
    }
    eprintln!("SKIP: {program} is not installed (Debian package `{package}`)");
    false
}

/// `KEY=value` lines of the unit for one key, in order.
fn unit_values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(str::trim)
        .collect()
}

/// Runs `confab check-config FILE` with no CONFAB* variables from the
/// environment, so only the file is judged.
/// A secret as /etc/confab/env would hold it (the examples keep secrets out of
/// their files; cluster mode refuses to start without one).
const ENV_SECRET: &str = "deploy-test-secret-0123456789abcdef0123456789";

/// `confab check-config FILE` as deployed: the secret comes from the environment.
fn check_config(file: &Path) -> Output {
    check_config_env(file, &[("CONFAB__AUTH__JWT_SECRET", ENV_SECRET)])
}

fn check_config_env(file: &Path, env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin());
    cmd.arg("check-config").arg(file).current_dir(dir.path());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CONFAB") {
            cmd.env_remove(&key);
        }
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("run confab check-config")
}

fn deploy_configs() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy"))
        .expect("deploy/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

/// The value of `key = N` in check-config's effective configuration.
fn effective_number(effective: &str, key: &str) -> u64 {
    effective
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == key).then(|| v.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("{key} missing in the effective config:\n{effective}"))
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let unit = read(UNIT);
    let exec = unit_values(&unit, "ExecStart");
    assert_eq!(
        exec,
        [format!("{UNIT_EXEC} {UNIT_ARGS}").as_str()],
        "one ExecStart running the installed binary"
    );
    assert_eq!(unit_values(&unit, "Type"), ["notify"]);
    assert_eq!(unit_values(&unit, "KillMode"), ["mixed"]);
    assert_eq!(unit_values(&unit, "KillSignal"), ["SIGTERM"]);

    if !required_tool("systemd-analyze", "systemd") {
        return;
    }
    // systemd-analyze checks that ExecStart's program exists: point it at
    // the binary cargo built, with the same arguments.
    let dir = tempfile::tempdir().unwrap();
    let built = bin();
    let built = if built.contains(char::is_whitespace) {
        format!("\"{built}\"")
    } else {
        built.to_string()
    };
    let rewritten: String = unit
        .lines()
        .map(|l| match l.strip_prefix("ExecStart=") {
            Some(rest) => format!(
                "ExecStart={built}{}\n",
                rest.strip_prefix(UNIT_EXEC)
                    .expect("ExecStart runs UNIT_EXEC")
            ),
            None => format!("{l}\n"),
        })
        .collect();
    let path = dir.path().join("confab.service");
    std::fs::write(&path, rewritten).unwrap();

    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("run systemd-analyze verify");
    assert!(
        out.status.success(),
        "systemd-analyze verify failed\n{}",
        show(&out)
    );
    // Unknown keys and bad values are only warnings (exit 0): none may name
    // our unit. Lines about other units on the machine are not ours to judge.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let dir_name = dir.path().to_string_lossy();
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("confab.service") || l.contains(dir_name.as_ref()))
        .collect();
    assert!(
        ours.is_empty(),
        "systemd-analyze verify warned about the unit:\n{}\n{}",
        ours.join("\n"),
        show(&out)
    );
}

#[test]
fn deploy_configs_pass_check_config() {
    let files = deploy_configs();
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().any(|n| n == "config.production.toml"),
        "deploy/config.production.toml exists: {names:?}"
    );
    for file in &files {
        let out = check_config(file);
        assert_eq!(
            out.status.code(),
            Some(0),
            "confab check-config {}\n{}",
            file.display(),
            show(&out)
        );
    }

    // The production example is cluster mode with JSON logs and no secret
    // in the file: without the one from the environment it is refused.
    let production = repo().join("deploy/config.production.toml");
    assert!(
        !read("deploy/config.production.toml")
            .lines()
            .any(|l| l.trim_start().starts_with("jwt_secret")),
        "no jwt_secret in the production file"
    );
    let out = check_config_env(&production, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("auth.jwt_secret"),
        "{}",
        show(&out)
    );
    let out = check_config(&production);
    let effective = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "url = \"postgres://",
        "redis_url = \"redis://",
        "data_dir = \"/var/lib/confab\"",
        "format = \"json\"",
        "jwt_secret = \"<redacted>\"",
        "guest = false",
    ] {
        assert!(
            effective.contains(expected),
            "production config: {expected}\n{effective}"
        );
    }
}

/// systemd may SIGKILL confab only after its graceful shutdown had its time:
/// the grace period bounds the socket close and again the HTTP stop.
#[test]
fn unit_stop_timeout_outlasts_the_shutdown_grace() {
    let unit = read(UNIT);
    let timeout = unit_values(&unit, "TimeoutStopSec");
    assert_eq!(timeout.len(), 1, "one TimeoutStopSec: {timeout:?}");
    let timeout: u64 = timeout[0]
        .trim_end_matches('s')
        .parse()
        .expect("TimeoutStopSec in seconds");
    for file in deploy_configs() {
        let out = check_config(&file);
        assert!(out.status.success(), "{}\n{}", file.display(), show(&out));
        let grace = effective_number(&String::from_utf8_lossy(&out.stdout), "shutdown_grace_secs");
        assert!(
            timeout > 2 * grace,
            "TimeoutStopSec={timeout} must exceed twice shutdown_grace_secs={grace} ({})",
            file.display()
        );
    }
}

#[test]
fn nginx_example_passes_nginx_t() {
    if !installed("nginx", "-v") || !installed("openssl", "version") {
        if std::env::var_os("CI").is_some() {
            panic!("nginx -t needs nginx and openssl (CI is set; .ci/run installs the Debian packages `nginx`, `openssl`)");
        }
        eprintln!("SKIP: nginx -t needs nginx and openssl (Debian packages `nginx`, `openssl`)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = d.join("privkey.pem");
    let cert = d.join("fullchain.pem");
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=chat.example.com", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "self-signed certificate\n{}",
        show(&out)
    );

    // The upstreams are docker-compose service names: nginx resolves them
    // when it loads the file, so point them at loopback here.
    let conf = read("deploy/nginx.conf");
    assert!(conf.contains("proxy_http_version 1.1;"), "{conf}");
    assert!(conf.contains("proxy_read_timeout 75s;"), "{conf}");
    let conf = conf
        .replace("confab1:8080", "127.0.0.1:18081")
        .replace("confab2:8080", "127.0.0.1:18082")
        .replace("/etc/nginx/tls/", &format!("{}/", d.display()));
    let path = d.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();

    let out = Command::new("nginx")
        .arg("-t")
        .arg("-p")
        .arg(d)
        .arg("-e")
        .arg(d.join("error.log"))
        .arg("-c")
        .arg(&path)
        .arg("-g")
        .arg(format!("pid {};", d.join("nginx.pid").display()))
        .output()
        .expect("run nginx -t");
    assert!(out.status.success(), "nginx -t\n{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("[warn]") && !stderr.contains("[emerg]"),
        "nginx -t warned\n{}",
        show(&out)
    );
}

/// The unit's hardening is part of the contract (docs/operations.md): a
/// dedicated user, a read-only system with only the state directory
/// writable, no privilege gain, and a file limit fit for many sockets.
#[test]
fn systemd_unit_keeps_its_hardening() {
    let unit = read(UNIT);
    for (key, want) in [
        ("Type", "notify"),
        ("User", "confab"),
        ("StateDirectory", "confab"),
        ("WorkingDirectory", "/var/lib/confab"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("CapabilityBoundingSet", ""),
        ("RestrictSUIDSGID", "yes"),
        ("SystemCallFilter", "@system-service"),
        ("KillSignal", "SIGTERM"),
    ] {
        assert_eq!(unit_values(&unit, key), [want], "{key}={want} in {UNIT}");
    }
    let nofile: u64 = unit_values(&unit, "LimitNOFILE")
        .first()
        .and_then(|v| v.parse().ok())
        .expect("LimitNOFILE=N");
    assert!(
        nofile >= 65536,
        "LimitNOFILE={nofile}: raise it for many sockets"
    );
}

/// docker-compose.yml runs two confab instances on Postgres and Redis; the
/// environment it gives confab is a valid cluster configuration.
#[test]
fn compose_file_configures_a_valid_cluster() {
    let compose = read("docker-compose.yml");
    for service in [
        "  confab1:",
        "  confab2:",
        "  postgres:",
        "  redis:",
        "  nginx:",
    ] {
        assert!(
            compose.lines().any(|l| l == service),
            "service {service} in docker-compose.yml"
        );
    }
    assert!(
        compose.contains("CONFAB_GIT_REVISION"),
        "build passes the git revision"
    );
    let env: Vec<(String, String)> = compose
        .lines()
        .filter_map(|l| {
            let (k, v) = l.trim().split_once(": ")?;
            k.starts_with("CONFAB__").then(|| {
                let v = v.trim().trim_matches('"');
                // ${VAR:?message} is filled from .env by compose.
                let v = if v.starts_with("${") {
                    "a-secret-from-env-0123456789abcdef0123456789abcdef"
                } else {
                    v
                };
                (k.to_string(), v.to_string())
            })
        })
        .collect();
    let keys: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    for key in [
        "CONFAB__STORAGE__URL",
        "CONFAB__BROKER__REDIS_URL",
        "CONFAB__AUTH__JWT_SECRET",
    ] {
        assert!(keys.contains(&key), "{key} in docker-compose.yml: {keys:?}");
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin());
    cmd.arg("check-config").current_dir(dir.path());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("CONFAB") {
            cmd.env_remove(&key);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let out = cmd.output().expect("run confab check-config");
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let effective = String::from_utf8_lossy(&out.stdout);
    assert!(
        effective.contains("redis_url = \"redis://redis:6379\""),
        "{effective}"
    );
}

/// The Dockerfile builds the release binary in one stage and runs it
/// unprivileged in a slim one, with the state directory as a volume.
#[test]
fn dockerfile_builds_release_and_runs_unprivileged() {
    let dockerfile = read("Dockerfile");
    let from: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert!(
        from.len() >= 2,
        "a build stage and a runtime stage: {from:?}"
    );
    for needle in [
        "cargo build --release",
        "CONFAB_GIT_REVISION",
        "USER ",
        "EXPOSE 8080",
    ] {
        assert!(dockerfile.contains(needle), "{needle} in the Dockerfile");
    }
}

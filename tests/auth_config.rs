//! Authentication (JWT before upgrade, rooms claim, Origin), the `token` and
//! `check-config` commands, config file / environment handling.

mod common;

use common::*;
use serde_json::json;

fn assert_refused(r: Result<Client, Refused>, status: u16, what: &str) {
    match r {
        Ok(_) => panic!("{what}: upgrade must be refused with HTTP {status}"),
        Err(e) => {
            assert_eq!(e.status, status, "{what}: {e:?}");
            // When the body made it through, it is the JSON error shape.
            if status == 401 && e.body.trim_start().starts_with('{') {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&e.body) {
                    assert_eq!(v["error"]["code"], "unauthorized", "{what}: {v}");
                }
            }
        }
    }
}

#[tokio::test]
async fn token_accepted_via_query_bearer_and_cookie() {
    let s = Server::builder().set("auth", "guest", "false").start();
    let sub = uid("u");
    let tok = token(&sub, "alice");
    let want = json!({"id": sub, "name": "alice"});

    let mut c = s
        .ws_connect(&format!("/ws?token={tok}"), &[])
        .await
        .unwrap();
    assert_eq!(c.recv_json().await["user"], want);

    let bearer = format!("Bearer {tok}");
    let mut c = s
        .ws_connect("/ws", &[("Authorization", &bearer)])
        .await
        .unwrap();
    let w = c.recv_json().await;
    assert_eq!(w["type"], "welcome");
    assert_eq!(w["user"], want);

    let cookie = format!("other=1; confab_token={tok}; x=y");
    let mut c = s.ws_connect("/ws", &[("Cookie", &cookie)]).await.unwrap();
    let w = c.recv_json().await;
    assert_eq!(w["type"], "welcome");
    assert_eq!(w["user"], want);
}

#[tokio::test]
async fn missing_forged_expired_or_incomplete_token_is_401_before_upgrade() {
    for guest in ["false", "true"] {
        let s = Server::builder().set("auth", "guest", guest).start();
        let ctx = format!("guest={guest}");
        assert_refused(
            s.ws_connect("/ws", &[]).await,
            401,
            &format!("{ctx} missing"),
        );

        let forged = sign_claims(
            &json!({"sub":"x","name":"x","exp": now_secs() + 3600}),
            "not-the-secret",
        );
        assert_refused(
            s.ws_connect(&format!("/ws?token={forged}"), &[]).await,
            401,
            &format!("{ctx} forged"),
        );
        // Tampered payload with the original signature.
        let good = token("victim", "victim");
        let parts: Vec<&str> = good.split('.').collect();
        let other = token("attacker", "attacker");
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            other.split('.').nth(1).unwrap(),
            parts[2]
        );
        assert_refused(
            s.ws_connect(&format!("/ws?token={tampered}"), &[]).await,
            401,
            &format!("{ctx} tampered"),
        );
        let expired = sign_claims(&json!({"sub":"x","name":"x","exp": now_secs() - 2}), SECRET);
        assert_refused(
            s.ws_connect(&format!("/ws?token={expired}"), &[]).await,
            401,
            &format!("{ctx} expired (zero leeway)"),
        );
        let bearer = format!("Bearer {expired}");
        assert_refused(
            s.ws_connect("/ws", &[("Authorization", &bearer)]).await,
            401,
            &format!("{ctx} expired bearer"),
        );
        let cookie = format!("confab_token={forged}");
        assert_refused(
            s.ws_connect("/ws", &[("Cookie", &cookie)]).await,
            401,
            &format!("{ctx} forged cookie"),
        );
        for (what, claims) in [
            ("no exp", json!({"sub":"x","name":"x"})),
            ("no sub", json!({"name":"x","exp": now_secs() + 3600})),
            ("no name", json!({"sub":"x","exp": now_secs() + 3600})),
        ] {
            let t = sign_claims(&claims, SECRET);
            assert_refused(
                s.ws_connect(&format!("/ws?token={t}"), &[]).await,
                401,
                &format!("{ctx} {what}"),
            );
        }
        assert_refused(
            s.ws_connect("/ws?token=garbage", &[]).await,
            401,
            &format!("{ctx} garbage"),
        );
        // A good token still works on the same server.
        s.ws(&token("ok", "ok")).await;
    }
}

#[tokio::test]
async fn rooms_claim_enforced_on_join_with_prefix_entries() {
    let s = Server::start();
    let tok = token_rooms(&uid("u"), "limited", &["lobby", "team-*"]);
    let mut c = s.ws(&tok).await;
    c.join("lobby").await;
    c.join("team-red").await;
    c.join("team-").await;
    for room in ["general", "lobby2", "team", "xteam-red"] {
        c.send_json(json!({"type":"join","room":room})).await;
        let e = c.recv_error().await;
        assert_eq!(e["code"], "forbidden_room", "{room} -> {e}");
        assert_eq!(e["room"], room, "{e}");
    }
    // WS history also applies the claim.
    c.send_json(json!({"type":"history","room":"general"}))
        .await;
    let e = c.recv_error().await;
    assert_eq!(e["code"], "forbidden_room", "{e}");
    assert_eq!(e["room"], "general");
    // Not joined after the refusal.
    c.send_json(json!({"type":"send","room":"general","content":"x","ref":"g1"}))
        .await;
    let e = c.recv_error().await;
    assert!(
        e["code"] == "not_joined" || e["code"] == "forbidden_room",
        "{e}"
    );
    // Connection still usable.
    c.send_and_echo("team-red", "hi team", "t1").await;

    // Empty rooms list: nothing allowed.
    let mut d = s.ws(&token_rooms(&uid("u"), "none", &[])).await;
    d.send_json(json!({"type":"join","room":"lobby"})).await;
    assert_eq!(d.recv_error().await["code"], "forbidden_room");
}

#[tokio::test]
async fn origin_rules_on_upgrade() {
    let s = Server::builder()
        .set(
            "server",
            "allowed_origins",
            "[\"https://chat.example.com\"]",
        )
        .start();
    let tok = token(&uid("u"), "o");
    let path = format!("/ws?token={tok}");
    assert_refused(
        s.ws_connect(&path, &[("Origin", "https://evil.example.com")])
            .await,
        403,
        "foreign origin",
    );
    let same = format!("http://127.0.0.1:{}", s.port);
    let mut c = s
        .ws_connect(&path, &[("Origin", &same)])
        .await
        .expect("same-origin allowed");
    assert_eq!(c.recv_json().await["type"], "welcome");
    let mut c = s
        .ws_connect(&path, &[("Origin", "https://chat.example.com")])
        .await
        .expect("allowed_origins entry");
    assert_eq!(c.recv_json().await["type"], "welcome");
}

#[tokio::test]
async fn token_command_prints_working_token() {
    let s = Server::builder().set("auth", "guest", "false").start();
    let cfg = s.config_path.to_str().unwrap().to_string();
    let out = run_cli(
        &[
            "token", "--sub", "u-cli", "--name", "Nina", "--ttl", "120", "--config", &cfg,
        ],
        &[],
        s.dir(),
    );
    assert_eq!(out.code(), Some(0), "{out:?}");
    let tok = out.stdout.trim().to_string();
    assert_eq!(tok.split('.').count(), 3, "a JWT on stdout: {out:?}");
    let claims = jwt_payload(&tok);
    assert_eq!(claims["sub"], "u-cli");
    assert_eq!(claims["name"], "Nina");
    let ttl = claims["exp"].as_i64().unwrap() - now_secs() as i64;
    assert!((100..=125).contains(&ttl), "ttl {ttl}: {claims}");
    let c = s.ws(&tok).await;
    assert_eq!(
        c.welcome.as_ref().unwrap()["user"],
        json!({"id":"u-cli","name":"Nina"})
    );

    let out = run_cli(
        &[
            "token", "--sub", "u-r", "--name", "R", "--rooms", "a,team-*", "--config", &cfg,
        ],
        &[],
        s.dir(),
    );
    assert_eq!(out.code(), Some(0), "{out:?}");
    let tok = out.stdout.trim().to_string();
    assert_eq!(jwt_payload(&tok)["rooms"], json!(["a", "team-*"]));
    let mut c = s.ws(&tok).await;
    c.join("a").await;
    c.join("team-x").await;
    c.send_json(json!({"type":"join","room":"b"})).await;
    assert_eq!(c.recv_error().await["code"], "forbidden_room");

    // --mod mints a moderator: it deletes another user's message.
    let out = run_cli(
        &[
            "token", "--sub", "u-mod", "--name", "Mo", "--mod", "--config", &cfg,
        ],
        &[],
        s.dir(),
    );
    assert_eq!(out.code(), Some(0), "{out:?}");
    let tok = out.stdout.trim().to_string();
    assert_eq!(jwt_payload(&tok)["mod"], true);
    let mut author = s.ws(&token("u-author", "Ann")).await;
    author.join("a").await;
    let (ack, _) = author.send_and_echo("a", "moderate me", "m1").await;
    let mut moderator = s.ws(&tok).await;
    moderator.join("a").await;
    moderator
        .send_json(json!({"type":"delete","room":"a","id":ack["id"],"ref":"d1"}))
        .await;
    assert_eq!(moderator.recv_type("ack").await["ref"], "d1");
    assert!(jwt_payload(&out_token_without_mod(&s, &cfg))
        .get("mod")
        .is_none());
}

fn out_token_without_mod(s: &Server, cfg: &str) -> String {
    let out = run_cli(
        &["token", "--sub", "u-x", "--name", "X", "--config", cfg],
        &[],
        s.dir(),
    );
    out.stdout.trim().to_string()
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

fn base_config(dir: &std::path::Path) -> Config {
    Config::defaults(dir)
}

fn assert_names_key(out: &CliOutput, key: &str) {
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(all.contains(key), "error must name `{key}`: {out:?}");
    assert!(
        !all.contains("panicked"),
        "a clear error, never a panic: {out:?}"
    );
}

#[test]
fn serve_with_unknown_key_exits_nonzero_naming_key() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = base_config(dir.path());
    c.set("rooms", "join_histroy", "5");
    let path = write(dir.path(), "bad.toml", &c.render());
    let out = run_cli(&["serve", "--config", &path], &[], dir.path());
    assert_ne!(out.code(), Some(0), "{out:?}");
    assert!(
        out.status.code().is_some(),
        "exits, not killed by a signal: {out:?}"
    );
    assert_names_key(&out, "join_histroy");
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("join_histroy"))
        .collect();
    assert!(
        !lines.is_empty(),
        "one line naming the key on stderr: {out:?}"
    );
    assert_eq!(
        out.stderr.trim().lines().count(),
        1,
        "one clear line, not a dump: {out:?}"
    );
    assert!(!out.stderr.contains("listening on"), "{out:?}");

    // Unknown section too.
    let mut c = base_config(dir.path());
    c.set("bogus_section", "x", "1");
    let path = write(dir.path(), "bad2.toml", &c.render());
    let out = run_cli(&["serve", "--config", &path], &[], dir.path());
    assert_ne!(out.code(), Some(0), "{out:?}");
    assert_names_key(&out, "bogus_section");
}

#[test]
fn serve_with_wrong_type_or_impossible_value_exits_nonzero() {
    let dir = tempfile::tempdir().unwrap();
    for (sec, key, val) in [
        ("rooms", "join_history", "\"many\""),
        ("rooms", "join_history", "101"),
        ("limits", "max_message_chars", "-5"),
    ] {
        let mut c = base_config(dir.path());
        c.set(sec, key, val);
        let path = write(dir.path(), "bad.toml", &c.render());
        let out = run_cli(&["serve", "--config", &path], &[], dir.path());
        assert_ne!(out.code(), Some(0), "{key}={val}: {out:?}");
        assert!(out.status.code().is_some(), "{out:?}");
        assert_names_key(&out, key);
    }
}

#[test]
fn check_config_rejects_bad_files_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (sec, key, val, name) in [
        ("rooms", "bogus_key", "1", "bogus_key"),
        ("rooms", "join_history", "\"lots\"", "join_history"),
        ("rooms", "join_history", "101", "join_history"),
        ("auth", "guest", "\"yes\"", "guest"),
        ("limits", "history_page_max", "1.5", "history_page_max"),
        // TLS needs both files or neither.
        (
            "server.tls",
            "cert",
            "\"/etc/confab/cert.pem\"",
            "server.tls",
        ),
        ("server.tls", "key", "\"/etc/confab/key.pem\"", "server.tls"),
    ] {
        let mut c = base_config(dir.path());
        c.set(sec, key, val);
        let path = write(dir.path(), "c.toml", &c.render());
        let out = run_cli(&["check-config", &path], &[], dir.path());
        assert_eq!(out.code(), Some(1), "{key}={val}: {out:?}");
        assert_names_key(&out, name);
    }
    // Not TOML at all.
    let path = write(dir.path(), "c.toml", "this is = = not toml");
    let out = run_cli(&["check-config", &path], &[], dir.path());
    assert_eq!(out.code(), Some(1), "{out:?}");
    // A file that does not exist.
    let missing = dir.path().join("missing.toml");
    let out = run_cli(
        &["check-config", missing.to_str().unwrap()],
        &[],
        dir.path(),
    );
    assert_eq!(out.code(), Some(1), "{out:?}");
}

#[test]
fn check_config_good_file_prints_effective_config_with_secret_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = base_config(dir.path());
    c.set("rooms", "join_history", "7");
    let path = write(dir.path(), "good.toml", &c.render());
    let out = run_cli(&["check-config", &path], &[], dir.path());
    assert_eq!(out.code(), Some(0), "{out:?}");
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(!all.contains(SECRET), "jwt_secret must be redacted: {all}");
    assert!(
        out.stdout.contains("join_history"),
        "effective config printed: {out:?}"
    );
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains("join_history"))
        .unwrap();
    assert!(line.contains('7'), "the file's value is shown: {line}");
    assert!(
        out.stdout.contains("recovery_max") && out.stdout.contains("1000"),
        "defaults are part of the effective config: {out:?}"
    );
    assert!(out.stdout.contains("jwt_secret"), "{out:?}");
}

#[tokio::test]
async fn env_override_changes_join_history() {
    let s = Server::builder()
        .env("CONFAB__ROOMS__JOIN_HISTORY", "2")
        .start();
    populate(&s, "envr", 5, "m").await;
    let mut c = s.ws(&token(&uid("u"), "u")).await;
    c.join("envr").await;
    assert_eq!(seqs(&c.recv_messages(2).await), vec![4, 5]);
    c.expect_silence(300).await;
}

#[tokio::test]
async fn confab_config_env_is_used_without_flag() {
    // The file sets our secret and data dir: a token we mint works only if
    // the file was read (otherwise a random secret would be generated).
    let s = Server::builder()
        .config_via_env()
        .set("rooms", "join_history", "1")
        .start();
    let mut c = s.ws(&token(&uid("u"), "u")).await;
    c.join("cc").await;
    c.send_msg("cc", "one", "1").await;
    c.send_msg("cc", "two", "2").await;
    let mut d = s.ws(&token(&uid("u"), "u")).await;
    d.join("cc").await;
    assert_eq!(
        seqs(&d.recv_messages(1).await),
        vec![2],
        "join_history = 1 from the file"
    );
    assert!(
        !s.dir().join("config.toml").exists(),
        "no ./config.toml fallback in the server's cwd"
    );
}

#[tokio::test]
async fn token_expiring_during_connection_closes_1008() {
    let s = Server::builder()
        .set("heartbeat", "interval_secs", "1")
        .start();
    let t = sign_claims(
        &json!({"sub": uid("e"), "name": "e", "exp": now_secs() + 2}),
        SECRET,
    );
    let mut c = s.ws(&t).await;
    let closed = c.recv_close(std::time::Duration::from_secs(8)).await;
    assert_eq!(closed.code(), Some(1008), "token expired: {closed:?}");
}

#[tokio::test]
async fn refused_upgrade_body_is_json_unauthorized() {
    let s = Server::start();
    let headers = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    // (The helper adds its own `Connection: close`; the server must still
    // answer with a plain 401, never 101.)
    let r = s.request("GET", "/ws", &headers, None).await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.error_code(), "unauthorized");
    let forged = sign_claims(
        &json!({"sub":"x","name":"x","exp": now_secs() + 60}),
        "nope",
    );
    let r = s
        .request("GET", &format!("/ws?token={forged}"), &headers, None)
        .await;
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.error_code(), "unauthorized");
}

#[test]
fn migrate_creates_the_schema_idempotently() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("fresh-data");
    let mut c = base_config(dir.path());
    c.set("storage", "data_dir", &toml_str(data.to_str().unwrap()));
    let path = write(dir.path(), "m.toml", &c.render());
    for run in 0..2 {
        let out = run_cli(&["migrate", "--config", &path], &[], dir.path());
        assert_eq!(out.code(), Some(0), "run {run}: {out:?}");
    }
    let db = data.join("confab.db");
    let bytes = std::fs::read(&db).expect("migrate created the database file");
    assert!(bytes.starts_with(b"SQLite format 3"), "not a SQLite file");
    let schema = String::from_utf8_lossy(&bytes);
    // A renamed table's SQL is quoted (the rowid migration renames messages).
    let has_table = |name: &str| {
        schema.contains(&format!("CREATE TABLE {name}"))
            || schema.contains(&format!("CREATE TABLE \"{name}\""))
    };
    for table in ["messages", "rooms", "room_activity", "analytics_rooms"] {
        assert!(has_table(table), "{table} table missing");
    }
}

#[test]
fn version_flag_prints_the_version() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_cli(&["--version"], &[], dir.path());
    assert_eq!(out.code(), Some(0), "{out:?}");
    assert!(out.stdout.starts_with("confab "), "{out:?}");
    assert!(out.stdout.contains(env!("CARGO_PKG_VERSION")), "{out:?}");
}

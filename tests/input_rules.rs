//! What user input may contain: display names without invisible or bidi
//! characters (login, seed `?name=`, token claims), and prohibited words that
//! can't be slipped past with lookalikes, invisible characters or spacing.

mod common;

use common::*;
use serde_json::{json, Value};

/// A refused upgrade: its status and, from the JSON body, the error code.
fn refused_code(r: Result<Client, Refused>, what: &str) -> (u16, String) {
    match r {
        Ok(_) => panic!("{what}: the upgrade must be refused"),
        Err(e) => {
            let body: Value = serde_json::from_str(&e.body)
                .unwrap_or_else(|_| panic!("{what}: a JSON error body: {e:?}"));
            let code = body["error"]["code"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            (e.status, code)
        }
    }
}

/// Names that look empty, hide in plain sight or reorder the text around them.
const INVISIBLE_NAMES: [&str; 12] = [
    "\u{200B}",
    "\u{200B}\u{200B}",
    "\u{FEFF}",
    "\u{2800}",
    "\u{3164}",
    "\u{202E}alice",
    "alice\u{202E}",
    "\u{2066}alice\u{2069}",
    "al\u{200B}ice",
    "alice\u{E0041}",
    "al\u{00AD}ice",
    "\u{200F}alice",
];

#[tokio::test]
async fn login_refuses_invisible_and_bidi_names() {
    let s = Server::start();
    for name in INVISIBLE_NAMES {
        let r = s.post_json("/api/login", &json!({ "name": name })).await;
        assert_eq!(r.status, 400, "{name:?} -> {r:?}");
        assert_eq!(r.error_code(), "invalid_name", "{name:?}");
    }
    // Emoji sequences keep their joiners and variation selectors.
    for name in [
        "👩\u{200D}💻",
        "I ❤\u{FE0F} rust",
        "🏳\u{FE0F}\u{200D}🌈",
        "Zoë",
    ] {
        let r = s.post_json("/api/login", &json!({ "name": name })).await;
        assert_eq!(r.status, 200, "{name:?} -> {r:?}");
        assert_eq!(r.json()["user"]["name"], name);
    }
}

#[tokio::test]
async fn seed_name_is_checked_like_a_login_name() {
    let s = Server::start();
    for (query, what) in [
        ("name=%E2%80%8B", "zero-width space only"),
        ("name=%E2%80%AEalice", "right-to-left override"),
        ("name=%EF%BB%BFalice", "BOM"),
        ("name=al%E2%80%8Bice", "zero-width space inside"),
        ("name=alice%F3%A0%81%81", "tag character"),
        ("name=%FF%FE", "not UTF-8"),
        ("name=ali%C3", "truncated UTF-8"),
        ("name=", "empty"),
    ] {
        let r = s.ws_connect(&format!("/ws/chat/lobby?{query}"), &[]).await;
        assert_eq!(
            refused_code(r, what),
            (400, "invalid_name".to_string()),
            "{what}: ?{query}"
        );
    }
    // Valid names still get through, percent-encoded or not.
    for (query, name) in [
        ("name=Zo%C3%AB", "Zoë"),
        ("name=%F0%9F%91%A9%E2%80%8D%F0%9F%92%BB", "👩\u{200D}💻"),
        ("name=Mary+Ann", "Mary Ann"),
    ] {
        let mut c = s
            .ws_connect(&format!("/ws/chat/lobby?{query}"), &[])
            .await
            .unwrap_or_else(|e| panic!("?{query} refused: {e:?}"));
        c.send_text("hi").await;
        assert_eq!(c.recv_json().await["user"], name, "?{query}");
    }
}

#[tokio::test]
async fn a_token_whose_name_is_invisible_is_refused() {
    let s = Server::start();
    for name in ["\u{200B}", "\u{202E}alice"] {
        let r = s
            .ws_connect(&format!("/ws?token={}", token(&uid("u"), name)), &[])
            .await;
        assert_eq!(
            refused_code(r, name),
            (401, "unauthorized".to_string()),
            "{name:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prohibited_words_are_not_evaded_by_lookalikes_invisibles_or_spacing() {
    let s = Server::builder()
        .set("moderation", "prohibited_words", r#"["bad", "very bad"]"#)
        .start();
    let mut c = s.ws_user(&uid("u"), "u").await;
    c.join("mod").await;
    for (content, r) in [
        ("so b\u{0430}d", "cyrillic"),
        ("\u{0392}\u{0391}D!", "greek capitals"),
        ("b\u{200B}ad", "zero-width space"),
        ("b\u{00AD}ad", "soft hyphen"),
        ("\u{FEFF}b\u{2060}ad", "BOM and word joiner"),
        ("\u{FF42}\u{FF41}\u{FF44}", "fullwidth"),
        ("it is very  bad", "doubled space"),
        ("very\n\tbad", "other whitespace"),
    ] {
        c.send_json(json!({"type":"send","room":"mod","content":content,"ref":r}))
            .await;
        let e = c.recv_type("error").await;
        assert_eq!(
            (&e["code"], &e["ref"]),
            (&json!("prohibited_content"), &json!(r)),
            "{r}: {e}"
        );
    }
    // Folding keeps whole words, and what passes is stored exactly as sent.
    let kept = "scr\u{0430}p the b\u{200B}adge, ｂａｄｇｅ  too";
    c.send_msg("mod", kept, "ok").await;
    let history = s.history_all("mod", &token(&uid("r"), "r")).await;
    assert_eq!(
        history.len(),
        1,
        "refused messages are not stored: {history:?}"
    );
    assert_eq!(history[0]["content"], kept);

    // The seed endpoint goes through the same check.
    let mut seed = s
        .ws_connect("/ws/chat/mod?name=carol", &[])
        .await
        .unwrap_or_else(|e| panic!("seed refused: {e:?}"));
    seed.send_text("b\u{0430}\u{00AD}d").await;
    assert_eq!(seed.recv_json().await["code"], "prohibited_content");
}

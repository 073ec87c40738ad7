//! Private rooms, direct rooms, moderation and read markers
//! (docs/protocol.md, section 7b), over real WebSockets and real HTTP, on
//! embedded SQLite, on Postgres (one instance) and on a two-instance cluster.

mod common;

use common::cluster::{Backend, ClusterEnv, Node};
use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A user of a test: a fresh id, a display name, a token.
struct Person {
    id: String,
    name: String,
    token: String,
}

impl Person {
    fn new(name: &str) -> Person {
        let id = uid(&name.to_lowercase());
        let token = token(&id, name);
        Person {
            id,
            name: name.to_string(),
            token,
        }
    }

    /// A server admin (`"admin": true`, or `"admin"` in `roles` when `roles`).
    fn admin(name: &str, roles: bool) -> Person {
        let id = uid(&name.to_lowercase());
        let claims = if roles {
            json!({"sub": id, "name": name, "exp": now_secs() + 3600, "roles": ["admin"]})
        } else {
            json!({"sub": id, "name": name, "exp": now_secs() + 3600, "admin": true})
        };
        Person {
            token: sign_claims(&claims, SECRET),
            id,
            name: name.to_string(),
        }
    }

    async fn ws(&self, server: &Server) -> Client {
        server.ws(&self.token).await
    }
}

async fn call(
    server: &Server,
    method: &str,
    path: &str,
    who: &Person,
    body: Option<Value>,
) -> HttpResponse {
    let auth = format!("Bearer {}", who.token);
    let bytes = body.map(|b| serde_json::to_vec(&b).unwrap());
    let mut headers = vec![("Authorization", auth.as_str())];
    if bytes.is_some() {
        headers.push(("Content-Type", "application/json"));
    }
    server
        .request(method, path, &headers, bytes.as_deref())
        .await
}

async fn create(server: &Server, who: &Person, room: &str, kind: &str) -> HttpResponse {
    call(
        server,
        "POST",
        "/api/rooms",
        who,
        Some(json!({"name": room, "kind": kind})),
    )
    .await
}

async fn invite(
    server: &Server,
    who: &Person,
    room: &str,
    whom: &Person,
    role: &str,
) -> HttpResponse {
    call(
        server,
        "POST",
        &format!("/api/rooms/{room}/members"),
        who,
        Some(json!({"user": whom.id, "name": whom.name, "role": role})),
    )
    .await
}

/// kick, ban, unban (no body) or mute (`seconds`).
async fn moderate(
    server: &Server,
    who: &Person,
    room: &str,
    whom: &Person,
    action: &str,
) -> HttpResponse {
    let (action, body) = match action.split_once(':') {
        Some(("mute", secs)) => (
            "mute",
            json!({"seconds": secs.parse::<u64>().unwrap(), "name": whom.name}),
        ),
        _ => (action, json!({"name": whom.name})),
    };
    call(
        server,
        "POST",
        &format!("/api/rooms/{room}/members/{}/{action}", whom.id),
        who,
        Some(body),
    )
    .await
}

async fn remove(server: &Server, who: &Person, room: &str, whom: &Person) -> HttpResponse {
    call(
        server,
        "DELETE",
        &format!("/api/rooms/{room}/members/{}", whom.id),
        who,
        None,
    )
    .await
}

fn ok_event(resp: &HttpResponse, kind: &str) -> Value {
    assert_eq!(resp.status, 200, "{resp:?}");
    let event = resp.json()["event"].clone();
    assert_eq!(event["type"], kind, "{event}");
    event
}

fn refused(resp: &HttpResponse, status: u16, code: &str) {
    assert_eq!(
        (resp.status, resp.error_code().as_str()),
        (status, code),
        "{resp:?}"
    );
}

fn room_name(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Joins and expects `forbidden_room`.
async fn join_refused(c: &mut Client, room: &str) {
    c.send_json(json!({"type":"join","room":room})).await;
    let e = c.recv_error().await;
    assert_eq!(
        (e["code"].as_str(), e["room"].as_str()),
        (Some("forbidden_room"), Some(room)),
        "{e}"
    );
}

/// Every way a non-member could read a room: all refused with forbidden_room.
async fn assert_no_way_in(server: &Server, outsider: &Person, room: &str, secret: &str) {
    let mut c = outsider.ws(server).await;
    join_refused(&mut c, room).await;
    c.send_json(json!({"type":"history","room":room})).await;
    let e = c.recv_error().await;
    assert_eq!(e["code"], "forbidden_room", "ws history: {e}");
    c.send_json(json!({"type":"send","room":room,"content":"let me in","ref":"x1"}))
        .await;
    assert_eq!(c.recv_error().await["code"], "not_joined");
    for path in [
        format!("/api/rooms/{room}/messages"),
        format!("/api/rooms/{room}/stats"),
        format!("/api/rooms/{room}/members"),
    ] {
        let resp = call(server, "GET", &path, outsider, None).await;
        refused(&resp, 403, "forbidden_room");
        assert!(!resp.text().contains(secret), "{path} leaked: {resp:?}");
    }
    let listed = call(server, "GET", "/api/rooms?limit=1000", outsider, None).await;
    assert!(
        !listed.text().contains(room),
        "listed to an outsider: {}",
        listed.text()
    );
    let mine = call(server, "GET", "/api/me/rooms", outsider, None).await;
    assert!(!mine.text().contains(room), "{}", mine.text());
    let seed = server
        .ws_connect(&format!("/ws/chat/{room}?token={}", outsider.token), &[])
        .await;
    match seed {
        Err(refused) => assert_eq!(refused.status, 403, "{refused:?}"),
        Ok(_) => panic!("the seed endpoint let an outsider into {room}"),
    }
    c.expect_no_type("message", 200).await;
}

/// Sends and returns the sender's own `message` frame (after its ack),
/// skipping whatever else arrives meanwhile.
async fn say(c: &mut Client, room: &str, content: &str, r: &str) -> Value {
    c.send_json(json!({"type":"send","room":room,"content":content,"ref":r}))
        .await;
    let ack = c.recv_type("ack").await;
    assert_eq!(ack["ref"], r, "{ack}");
    loop {
        let m = c.recv_type("message").await;
        if m["id"] == ack["id"] {
            return m;
        }
    }
}

/// The next error frame, skipping everything else.
async fn next_error(c: &mut Client) -> Value {
    loop {
        let v = c.recv_main().await;
        if v["type"] == "error" {
            return v;
        }
    }
}

// ---------------------------------------------------------------------------
// Private rooms, both backends
// ---------------------------------------------------------------------------

async fn private_room_flow(backend: Backend) {
    let mut node = Node::start(backend);
    let server = &node.server;
    let (alice, bob, carol, dave) = (
        Person::new("Alice"),
        Person::new("Bob"),
        Person::new("Carol"),
        Person::new("Dave"),
    );
    let room = room_name("team");
    let secret = format!("secret-{room}");

    // Create: 201, owner; the name is then taken.
    let made = create(server, &alice, &room, "private").await;
    assert_eq!(made.status, 201, "{made:?}");
    assert_eq!(
        made.json()["room"],
        json!({"name": room, "kind": "private", "last_seq": 1, "role": "owner"})
    );
    refused(
        &create(server, &bob, &room, "private").await,
        409,
        "room_exists",
    );
    refused(
        &create(server, &bob, &room, "public").await,
        409,
        "room_exists",
    );
    refused(
        &create(server, &bob, "dm:abc", "private").await,
        400,
        "invalid_room",
    );
    refused(
        &create(server, &bob, "bad name", "private").await,
        400,
        "invalid_room",
    );
    refused(
        &create(server, &bob, &room_name("x"), "secret").await,
        400,
        "invalid_frame",
    );
    let used = room_name("used");
    populate(server, &used, 1, "u").await;
    refused(
        &create(server, &bob, &used, "private").await,
        409,
        "room_exists",
    );

    // The owner's connection: the replay starts with room_created.
    let mut a = alice.ws(server).await;
    let joined = a.join(&room).await;
    assert_eq!(
        (joined["last_seq"].as_i64(), joined["unread"].as_i64()),
        (Some(1), Some(0))
    );
    let created = a.recv_type("room_created").await;
    assert_eq!(created["seq"], 1);
    assert_eq!(created["kind"], "private");
    assert_eq!(
        created["members"],
        json!([{"id": alice.id, "name": "Alice", "role": "owner"}])
    );
    a.send_msg(&room, &secret, "s1").await;

    // Nobody else gets in, by any path.
    assert_no_way_in(server, &bob, &room, &secret).await;

    // An invitation: an event in the room, `room_added` for the invitee.
    let mut b = bob.ws(server).await;
    let added = ok_event(
        &invite(server, &alice, &room, &bob, "member").await,
        "member_added",
    );
    assert_eq!(added["member"], json!({"id": bob.id, "name": "Bob"}));
    assert_eq!(
        (added["role"].as_str(), added["user_id"].as_str()),
        (Some("member"), Some(alice.id.as_str()))
    );
    let live = a.recv_type("member_added").await;
    assert_eq!(live["seq"], added["seq"]);
    let note = b.recv_type("room_added").await;
    assert_eq!(
        note,
        json!({"type":"room_added","room":room,"kind":"private","by":{"id":alice.id,"name":"Alice"}})
    );
    assert_eq!(
        invite(server, &alice, &room, &bob, "member").await.json(),
        json!({"event": null}),
        "inviting a member again changes nothing"
    );

    // Bob reads what was said before he came.
    let joined = b.join(&room).await;
    assert_eq!(joined["unread"], 1, "{joined}");
    let page = call(
        server,
        "GET",
        &format!("/api/rooms/{room}/messages"),
        &bob,
        None,
    )
    .await;
    assert!(page.text().contains(&secret), "{page:?}");
    let listed = call(server, "GET", "/api/rooms?limit=1000", &bob, None)
        .await
        .json();
    let entry = listed["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == room.as_str())
        .cloned();
    assert_eq!(entry.expect("listed to a member")["kind"], "private");

    // Ranks: a member can't kick; an outsider can't invite; an admin can't
    // appoint admins or touch the owner.
    refused(
        &moderate(server, &bob, &room, &alice, "kick").await,
        403,
        "forbidden",
    );
    refused(
        &invite(server, &dave, &room, &carol, "member").await,
        403,
        "forbidden_room",
    );
    ok_event(
        &invite(server, &alice, &room, &carol, "member").await,
        "member_added",
    );
    ok_event(
        &invite(server, &alice, &room, &bob, "admin").await,
        "member_added",
    );
    refused(
        &invite(server, &bob, &room, &dave, "admin").await,
        403,
        "forbidden",
    );
    refused(
        &moderate(server, &bob, &room, &alice, "ban").await,
        403,
        "forbidden",
    );
    refused(
        &invite(server, &alice, &room, &dave, "owner").await,
        400,
        "invalid_frame",
    );

    // Mute: carol's sends get `muted` until it is lifted.
    let mut c = carol.ws(server).await;
    c.join(&room).await;
    let muted = ok_event(
        &moderate(server, &bob, &room, &carol, "mute:600").await,
        "member_muted",
    );
    assert!(muted["until"].is_string(), "{muted}");
    c.recv_type("member_muted").await;
    c.send_json(json!({"type":"send","room":room,"content":"hello?","ref":"m1"}))
        .await;
    let e = c.recv_error().await;
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_str()),
        (Some("muted"), Some("m1")),
        "{e}"
    );
    let wait = e["retry_after_ms"].as_u64().unwrap();
    assert!(wait > 590_000 && wait <= 600_000, "{e}");
    let unmuted = ok_event(
        &moderate(server, &bob, &room, &carol, "mute:0").await,
        "member_muted",
    );
    assert!(unmuted["until"].is_null(), "{unmuted}");
    c.recv_type("member_muted").await;
    c.send_msg(&room, "hello again", "m2").await;

    // Kick: the event, then `left` with the reason, then `room_removed`;
    // carol is no longer a member.
    let kicked = ok_event(
        &moderate(server, &bob, &room, &carol, "kick").await,
        "member_removed",
    );
    assert_eq!(kicked["reason"], "kicked");
    assert_eq!(c.recv_type("member_removed").await["seq"], kicked["seq"]);
    assert_eq!(
        c.recv_main().await,
        json!({"type":"left","room":room,"reason":"kicked"})
    );
    assert_eq!(c.recv_type("room_removed").await["reason"], "kicked");
    c.send_json(json!({"type":"send","room":room,"content":"still here?","ref":"m3"}))
        .await;
    assert_eq!(c.recv_error().await["code"], "not_joined");
    a.send_msg(&room, "after the kick", "s2").await;
    c.expect_no_type("message", 300).await;
    assert_no_way_in(server, &carol, &room, "after the kick").await;

    // Ban: not even an invitation lets her back until the ban is lifted.
    ok_event(
        &invite(server, &alice, &room, &carol, "member").await,
        "member_added",
    );
    ok_event(
        &moderate(server, &alice, &room, &carol, "ban").await,
        "member_removed",
    );
    refused(
        &invite(server, &alice, &room, &carol, "member").await,
        403,
        "forbidden",
    );
    let mut c = carol.ws(server).await;
    join_refused(&mut c, &room).await;
    ok_event(
        &moderate(server, &alice, &room, &carol, "unban").await,
        "member_unbanned",
    );
    assert_eq!(
        moderate(server, &alice, &room, &carol, "unban")
            .await
            .json(),
        json!({"event": null})
    );
    join_refused(&mut c, &room).await; // still needs an invitation
    ok_event(
        &invite(server, &alice, &room, &carol, "member").await,
        "member_added",
    );
    assert_eq!(c.recv_type("room_added").await["room"], room.as_str());
    c.join(&room).await;

    // Leaving: anyone may remove themselves.
    let left = ok_event(
        &remove(server, &carol, &room, &carol).await,
        "member_removed",
    );
    assert_eq!(left["reason"], "left");
    assert_eq!(c.recv_type("left").await["reason"], "left");

    // The members list (owners and admins also see bans).
    ok_event(
        &moderate(server, &alice, &room, &dave, "ban").await,
        "member_removed",
    );
    let list = call(
        server,
        "GET",
        &format!("/api/rooms/{room}/members"),
        &bob,
        None,
    )
    .await
    .json();
    let roles: Vec<(String, String)> = list["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().into(),
                m["role"].as_str().unwrap().into(),
            )
        })
        .collect();
    let mut want = vec![
        ("Alice".to_string(), "owner".to_string()),
        ("Bob".into(), "admin".into()),
    ];
    want.sort_by_key(|(name, _)| {
        if name == "Alice" {
            alice.id.clone()
        } else {
            bob.id.clone()
        }
    });
    assert_eq!(roles, want, "{list}");
    assert_eq!(list["kind"], "private");
    assert_eq!(list["banned"], json!([{"id": dave.id, "name": "Dave"}]));

    // `since` replays every event, membership included, gap-free.
    let mut late = alice.ws(server).await;
    let joined = late
        .join_with(json!({"type":"join","room":room,"since":0}))
        .await;
    assert_eq!(joined["recovered"], true);
    let last = joined["last_seq"].as_i64().unwrap();
    let mut kinds = Vec::new();
    for want in 1..=last {
        let v = late.recv_main().await;
        assert_eq!(v["seq"].as_i64(), Some(want), "{v}");
        kinds.push(v["type"].as_str().unwrap().to_string());
    }
    for kind in [
        "room_created",
        "member_added",
        "member_muted",
        "member_removed",
        "member_unbanned",
        "message",
    ] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "{kind} missing from {kinds:?}"
        );
    }

    // Everything survives a restart.
    drop((a, b, c, late));
    node.server.restart();
    let server = &node.server;
    let mut b = bob.ws(server).await;
    b.join(&room).await;
    assert_no_way_in(server, &carol, &room, &secret).await;
    refused(
        &moderate(server, &bob, &room, &alice, "kick").await,
        403,
        "forbidden",
    );
    let mut d = dave.ws(server).await;
    join_refused(&mut d, &room).await;
}

on_both_backends!(private_room_flow: private_rooms_on_sqlite, private_rooms_on_postgres);

// ---------------------------------------------------------------------------
// Direct rooms
// ---------------------------------------------------------------------------

async fn direct_room_flow(backend: Backend) {
    let node = Node::start(backend);
    let server = &node.server;
    let (alice, bob, carol) = (
        Person::new("Alice"),
        Person::new("Bob"),
        Person::new("Carol"),
    );
    let mut b = bob.ws(server).await;
    let mut a = alice.ws(server).await;

    let opened = call(
        server,
        "POST",
        "/api/dm",
        &alice,
        Some(json!({"user": bob.id, "name": "Bob"})),
    )
    .await;
    assert_eq!(opened.status, 201, "{opened:?}");
    let room = opened.json()["room"].clone();
    let name = room["name"].as_str().unwrap().to_string();
    assert!(name.starts_with("dm:") && name.len() == 43, "{room}");
    assert_eq!(room["kind"], "direct");
    assert_eq!(room["last_seq"], 1);
    let mut want = vec![
        json!({"id": alice.id, "name": "Alice"}),
        json!({"id": bob.id, "name": "Bob"}),
    ];
    assert_eq!(room["members"], json!(want));
    for c in [&mut a, &mut b] {
        let note = c.recv_type("room_added").await;
        assert_eq!(
            (note["room"].as_str(), note["kind"].as_str()),
            (Some(name.as_str()), Some("direct"))
        );
    }

    // Either side asking again gets the same room (200).
    let again = call(
        server,
        "POST",
        "/api/dm",
        &bob,
        Some(json!({"user": alice.id})),
    )
    .await;
    assert_eq!(again.status, 200, "{again:?}");
    want.sort_by_key(|m| m["id"].as_str().unwrap().to_string());
    assert_eq!(again.json()["room"]["name"], name.as_str());
    assert_eq!(again.json()["room"]["members"], json!(want));
    refused(
        &call(
            server,
            "POST",
            "/api/dm",
            &bob,
            Some(json!({"user": bob.id})),
        )
        .await,
        400,
        "invalid_frame",
    );
    refused(
        &call(server, "POST", "/api/dm", &bob, Some(json!({}))).await,
        400,
        "invalid_frame",
    );
    refused(
        &call(server, "POST", "/api/dm", &bob, Some(json!({"user": 7}))).await,
        400,
        "invalid_frame",
    );

    // The two of them talk; nobody else gets in, and nobody is added.
    for c in [&mut a, &mut b] {
        c.join(&name).await;
        c.recv_type("room_created").await;
    }
    let said = say(&mut a, &name, "just us", "d1").await;
    assert_eq!(b.recv_type("message").await["id"], said["id"]);
    assert_no_way_in(server, &carol, &name, "just us").await;
    refused(
        &invite(server, &alice, &name, &carol, "member").await,
        403,
        "forbidden",
    );
    refused(
        &moderate(server, &alice, &name, &bob, "kick").await,
        403,
        "forbidden",
    );
    let mut c = carol.ws(server).await;
    join_refused(&mut c, "dm:0000000000000000000000000000000000000000").await;

    // Listed among each one's rooms, with both members.
    for who in [&alice, &bob] {
        let mine = call(server, "GET", "/api/me/rooms", who, None).await.json();
        let dm = mine["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name.as_str())
            .cloned();
        let dm = dm.unwrap_or_else(|| panic!("{mine}"));
        assert_eq!(dm["kind"], "direct");
        assert_eq!(dm["members"], json!(want));
    }

    // A server admin may moderate a direct room.
    let root = Person::admin("Root", false);
    ok_event(
        &moderate(server, &root, &name, &bob, "mute:60").await,
        "member_muted",
    );
}

on_both_backends!(direct_room_flow: direct_rooms_on_sqlite, direct_rooms_on_postgres);

// ---------------------------------------------------------------------------
// Read markers and unread counts
// ---------------------------------------------------------------------------

/// The caller's entry for `room` in `/api/me/rooms`.
async fn my_room(server: &Server, who: &Person, room: &str) -> Value {
    let mine = call(server, "GET", "/api/me/rooms", who, None).await;
    assert_eq!(mine.status, 200, "{mine:?}");
    let body = mine.json();
    body["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == room)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Waits for the coalesced marker writes to reach the store.
async fn settle_markers() {
    sleep_ms(800).await;
}

async fn read_marker_flow(backend: Backend) {
    let mut node = Node::start(backend);
    let server = &node.server;
    let (alice, bob) = (Person::new("Alice"), Person::new("Bob"));
    let room = room_name("reading");
    let mut b = bob.ws(server).await;
    b.join(&room).await;
    let m1 = b.send_msg(&room, "one", "b1").await;
    b.send_msg(&room, "hello @alice, look", "b2").await;
    let m3 = b.send_msg(&room, "three for @ALICE", "b3").await;
    b.send_msg(
        &room,
        "mail to someone@alice.example is not a mention?",
        "b4",
    )
    .await;

    // Alice's first connection: everything is unread.
    let mut a1 = alice.ws(server).await;
    let joined = a1.join(&room).await;
    assert_eq!(
        (&joined["read_seq"], &joined["unread"], &joined["mentions"]),
        (&json!(0), &json!(4), &json!(3)),
        "{joined}"
    );
    assert_eq!(
        my_room(server, &alice, &room).await,
        Value::Null,
        "not hers until she reads"
    );
    let mut a2 = alice.ws(server).await;
    a2.join(&room).await;

    // A marker goes to her other connection, not back to the sender.
    a1.send_json(json!({"type":"read","room":room,"seq":m1["seq"]}))
        .await;
    assert_eq!(
        a2.recv_type("read").await,
        json!({"type":"read","room":room,"seq":m1["seq"]})
    );
    a1.expect_no_type("read", 200).await;
    // A connection joining before the marker is written still gets it.
    let mut a3 = alice.ws(server).await;
    let joined = a3.join(&room).await;
    assert_eq!(
        (&joined["read_seq"], &joined["unread"]),
        (&m1["seq"], &json!(3)),
        "{joined}"
    );
    drop(a3);
    // One that doesn't move forward goes nowhere.
    a1.send_json(json!({"type":"read","room":room,"seq":1}))
        .await;
    a2.expect_no_type("read", 200).await;
    settle_markers().await;
    let entry = my_room(server, &alice, &room).await;
    assert_eq!(
        (
            &entry["kind"],
            &entry["read_seq"],
            &entry["unread"],
            &entry["mentions"],
            &entry["last_seq"]
        ),
        (
            &json!("public"),
            &m1["seq"],
            &json!(3),
            &json!(3),
            &json!(4)
        ),
        "{entry}"
    );

    // Past the newest seq counts as the newest.
    a2.send_json(json!({"type":"read","room":room,"seq":1_000_000}))
        .await;
    assert_eq!(a1.recv_type("read").await["seq"], 4);
    settle_markers().await;
    let entry = my_room(server, &alice, &room).await;
    assert_eq!(
        (&entry["read_seq"], &entry["unread"], &entry["mentions"]),
        (&json!(4), &json!(0), &json!(0))
    );

    // Edits, reactions, deletes don't count; messages do, her own don't.
    b.send_json(
        json!({"type":"edit","room":room,"id":m3["id"],"content":"edited @Alice","ref":"e1"}),
    )
    .await;
    b.recv_type("ack").await;
    b.send_json(json!({"type":"react","room":room,"id":m1["id"],"emoji":"👍","ref":"r1"}))
        .await;
    b.recv_type("ack").await;
    a1.send_msg(&room, "my own words", "a1").await;
    let entry = my_room(server, &alice, &room).await;
    assert_eq!(
        (&entry["unread"], &entry["last_seq"]),
        (&json!(0), &json!(7)),
        "{entry}"
    );
    b.send_msg(&room, "new for @Alice", "b5").await;
    let entry = my_room(server, &alice, &room).await;
    assert_eq!(
        (&entry["unread"], &entry["mentions"]),
        (&json!(1), &json!(1)),
        "{entry}"
    );
    // /api/rooms tells the same for her rooms.
    let listed = call(server, "GET", "/api/rooms?limit=1000", &alice, None)
        .await
        .json();
    let there = listed["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == room.as_str())
        .cloned()
        .unwrap();
    assert_eq!(
        (&there["unread"], &there["mentions"], &there["read_seq"]),
        (&json!(1), &json!(1), &json!(4)),
        "{there}"
    );
    assert!(
        there.get("kind").is_none(),
        "a public room's entry has no kind: {there}"
    );

    // Refusals: not joined, bad seq.
    a1.send_json(json!({"type":"read","room":"elsewhere","seq":1}))
        .await;
    let e = next_error(&mut a1).await;
    assert_eq!(
        (e["code"].as_str(), e["room"].as_str()),
        (Some("not_joined"), Some("elsewhere"))
    );
    a1.send_json(json!({"type":"read","room":room,"seq":-1}))
        .await;
    assert_eq!(next_error(&mut a1).await["code"], "invalid_frame");
    a1.send_json(json!({"type":"read","room":room})).await;
    assert_eq!(next_error(&mut a1).await["code"], "invalid_frame");

    // Markers survive a restart; `joined` tells them.
    drop((a1, a2, b));
    node.server.restart();
    let server = &node.server;
    let mut a = alice.ws(server).await;
    let joined = a.join(&room).await;
    assert_eq!(
        (&joined["read_seq"], &joined["unread"], &joined["mentions"]),
        (&json!(4), &json!(1), &json!(1)),
        "{joined}"
    );
}

on_both_backends!(read_marker_flow: read_markers_on_sqlite, read_markers_on_postgres);

// ---------------------------------------------------------------------------
// Moderation of public rooms: server admins
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_admins_moderate_public_rooms() {
    let server = Server::start();
    let room = room_name("lobby");
    let (root, root2, eve, bob) = (
        Person::admin("Root", false),
        Person::admin("Root2", true),
        Person::new("Eve"),
        Person::new("Bob"),
    );
    let mut e = eve.ws(&server).await;
    e.join(&room).await;
    e.send_msg(&room, "spam spam", "e1").await;
    // A public room that came to be by a join has no owner: users can't moderate.
    refused(
        &moderate(&server, &bob, &room, &eve, "kick").await,
        403,
        "forbidden",
    );

    // A kick takes her connections out; she may come back. Without a name
    // in the request, the event names her as she is connected.
    let path = format!("/api/rooms/{room}/members/{}/kick", eve.id);
    let kicked = ok_event(
        &call(&server, "POST", &path, &root, None).await,
        "member_removed",
    );
    assert_eq!(kicked["member"], json!({"id": eve.id, "name": "Eve"}));
    assert_eq!(kicked["reason"], "kicked");
    assert_eq!(e.recv_type("left").await["reason"], "kicked");
    e.expect_no_type("room_removed", 200).await;
    e.join(&room).await;

    // A ban keeps her out (the `roles` form of the claim works too).
    ok_event(
        &moderate(&server, &root2, &room, &eve, "ban").await,
        "member_removed",
    );
    assert_eq!(e.recv_type("left").await["reason"], "banned");
    assert_eq!(e.recv_type("room_removed").await["reason"], "banned");
    join_refused(&mut e, &room).await;
    let page = call(
        &server,
        "GET",
        &format!("/api/rooms/{room}/messages"),
        &eve,
        None,
    )
    .await;
    refused(&page, 403, "forbidden_room");
    ok_event(
        &moderate(&server, &root, &room, &eve, "unban").await,
        "member_unbanned",
    );
    e.join(&room).await;

    // A mute refuses sends, edits and reactions; a delete of her own still goes.
    let mine = say(&mut e, &room, "before the mute", "e2").await;
    ok_event(
        &moderate(&server, &root, &room, &eve, "mute:60").await,
        "member_muted",
    );
    e.recv_type("member_muted").await;
    for frame in [
        json!({"type":"send","room":room,"content":"hi","ref":"e3"}),
        json!({"type":"edit","room":room,"id":mine["id"],"content":"x","ref":"e4"}),
        json!({"type":"react","room":room,"id":mine["id"],"emoji":"👍","ref":"e5"}),
    ] {
        e.send_json(frame).await;
        assert_eq!(next_error(&mut e).await["code"], "muted");
    }
    e.send_json(json!({"type":"delete","room":room,"id":mine["id"],"ref":"e6"}))
        .await;
    assert_eq!(e.recv_type("ack").await["ref"], "e6");

    // An owner of a public room created by REST moderates it.
    let owned = room_name("owned");
    assert_eq!(create(&server, &bob, &owned, "public").await.status, 201);
    let mut e = eve.ws(&server).await;
    e.join(&owned).await;
    let kicked = ok_event(
        &moderate(&server, &bob, &owned, &eve, "kick").await,
        "member_removed",
    );
    assert_eq!(kicked["member"], json!({"id": eve.id, "name": "Eve"}));
    ok_event(
        &invite(&server, &bob, &owned, &eve, "admin").await,
        "member_added",
    );
    refused(
        &moderate(&server, &eve, &owned, &bob, "kick").await,
        403,
        "forbidden",
    );
}

// ---------------------------------------------------------------------------
// Cluster mode
// ---------------------------------------------------------------------------

/// Waits until `check` holds (bounded).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "never: {what}");
        sleep_ms(100).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_membership_crosses_instances() {
    let env = ClusterEnv::new();
    let (a, b) = (env.instance(), env.instance());
    let (alice, bob, dave) = (
        Person::new("Alice"),
        Person::new("Bob"),
        Person::new("Dave"),
    );
    let room = room_name("cl-team");
    let secret = format!("cluster-secret-{room}");

    assert_eq!(create(&a, &alice, &room, "private").await.status, 201);
    refused(
        &create(&b, &bob, &room, "private").await,
        409,
        "room_exists",
    );
    let mut alice_a = alice.ws(&a).await;
    alice_a.join(&room).await;
    alice_a.send_msg(&room, &secret, "s1").await;
    let mut alice_b = alice.ws(&b).await;
    alice_b.join(&room).await;

    // Not a member: no way in on either instance.
    for server in [&a, &b] {
        assert_no_way_in(server, &bob, &room, &secret).await;
        assert_no_way_in(server, &dave, &room, &secret).await;
    }

    // Invited through B (the room opened on A first): room_added reaches
    // bob on A; he joins on both.
    let mut bob_a = bob.ws(&a).await;
    ok_event(
        &invite(&b, &alice, &room, &bob, "member").await,
        "member_added",
    );
    assert_eq!(bob_a.recv_type("room_added").await["room"], room.as_str());
    let mut bob_b = bob.ws(&b).await;
    bob_b.join(&room).await;
    bob_a.join(&room).await;
    let welcome = say(&mut alice_a, &room, "welcome bob", "s2").await;
    loop {
        let m = bob_b.recv_type("message").await;
        if m["id"] == welcome["id"] {
            break;
        }
    }

    // A read marker on A reaches alice's connection on B.
    alice_a
        .send_json(json!({"type":"read","room":room,"seq":3}))
        .await;
    assert_eq!(alice_b.recv_type("read").await["seq"], 3);

    // Kicked through A: bob's connections on both instances leave, and
    // he can't come back on either.
    let kicked = ok_event(
        &moderate(&a, &alice, &room, &bob, "kick").await,
        "member_removed",
    );
    for c in [&mut bob_a, &mut bob_b] {
        assert_eq!(c.recv_type("member_removed").await["seq"], kicked["seq"]);
        assert_eq!(c.recv_type("left").await["reason"], "kicked");
    }
    alice_b.send_msg(&room, "after bob", "s3").await;
    for c in [&mut bob_a, &mut bob_b] {
        c.expect_no_type("message", 300).await;
    }
    for server in [&a, &b] {
        assert_no_way_in(server, &bob, &room, "after bob").await;
    }

    // A member on B reads everything, including the history the other
    // instance wrote.
    eventually("history on B has all three", || async {
        let page = call(
            &b,
            "GET",
            &format!("/api/rooms/{room}/messages"),
            &alice,
            None,
        )
        .await;
        page.status == 200 && page.text().contains("after bob") && page.text().contains(&secret)
    })
    .await;
    let entry = my_room(&b, &alice, &room).await;
    assert_eq!(
        (&entry["kind"], &entry["role"]),
        (&json!("private"), &json!("owner")),
        "{entry}"
    );
}

// ---------------------------------------------------------------------------
// Export and import keep a private room private
// ---------------------------------------------------------------------------

async fn export_import_keeps_privacy(backend: Backend) {
    let source = Node::start(backend);
    let (alice, bob, dave, carol) = (
        Person::new("Alice"),
        Person::new("Bob"),
        Person::new("Dave"),
        Person::new("Carol"),
    );
    let room = room_name("vault");
    let secret = format!("export-secret-{room}");
    assert_eq!(
        create(&source.server, &alice, &room, "private")
            .await
            .status,
        201
    );
    ok_event(
        &invite(&source.server, &alice, &room, &bob, "admin").await,
        "member_added",
    );
    ok_event(
        &moderate(&source.server, &alice, &room, &dave, "ban").await,
        "member_removed",
    );
    let mut a = alice.ws(&source.server).await;
    a.join(&room).await;
    say(&mut a, &room, &secret, "x1").await;
    drop(a);

    let out = source.cli(&["export", "--room", &room, "--format", "ndjson"]);
    assert_eq!(out.code(), Some(0), "{out:?}");
    let kinds: Vec<String> = out
        .stdout
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["kind"].as_str().unwrap_or("message").to_string()
        })
        .collect();
    assert_eq!(
        kinds,
        ["room_created", "member_added", "member_removed", "message"]
    );
    let file = source.server.dir().join("vault.ndjson");
    std::fs::write(&file, &out.stdout).unwrap();

    let mut target = Node::start(backend);
    target.server.kill();
    let imported = target.cli(&["import", &file.display().to_string()]);
    assert_eq!(imported.code(), Some(0), "{imported:?}");
    target.server.restart();
    let server = &target.server;
    for outsider in [&dave, &carol] {
        assert_no_way_in(server, outsider, &room, &secret).await;
    }
    let page = call(
        server,
        "GET",
        &format!("/api/rooms/{room}/messages"),
        &bob,
        None,
    )
    .await;
    assert!(page.text().contains(&secret), "{page:?}");
    refused(
        &moderate(server, &bob, &room, &alice, "kick").await,
        403,
        "forbidden",
    );
    let again = target.cli(&["export", "--room", &room, "--format", "ndjson"]);
    assert_eq!(again.stdout, out.stdout, "the import is what was exported");
}

on_both_backends!(export_import_keeps_privacy: export_and_import_keep_privacy_on_sqlite, export_and_import_keep_privacy_on_postgres);

/// With Postgres down, an instance that never opened a private room opens it
/// on what Redis knows: members named by the room's recent events get in,
/// anyone else gets `unavailable` (never the room), and once Postgres is
/// back the room decides as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_private_room_fails_closed_while_postgres_is_down() {
    let env = ClusterEnv::new();
    let a = env.instance();
    let (alice, bob, eve) = (Person::new("Alice"), Person::new("Bob"), Person::new("Eve"));
    let room = room_name("cl-down");
    let public = room_name("cl-open");
    assert_eq!(create(&a, &alice, &room, "private").await.status, 201);
    ok_event(
        &invite(&a, &alice, &room, &bob, "member").await,
        "member_added",
    );
    let mut alice_a = alice.ws(&a).await;
    alice_a.join(&room).await;
    say(&mut alice_a, &room, "said before the outage", "o1").await;
    alice_a.join(&public).await;
    say(&mut alice_a, &public, "an open room", "o2").await;

    let b = env.instance();
    env.db.block();
    // Bob is named by the room's recent events: he gets in on B.
    let mut bob_b = bob.ws(&b).await;
    bob_b.join(&room).await;
    // Eve is not: no answer about the room but `unavailable`.
    let mut eve_b = eve.ws(&b).await;
    eve_b.send_json(json!({"type":"join","room":room})).await;
    let e = next_error(&mut eve_b).await;
    assert_eq!(
        (e["code"].as_str(), e["room"].as_str()),
        (Some("unavailable"), Some(room.as_str())),
        "{e}"
    );
    eve_b.expect_no_type("message", 300).await;
    // A public room (that has its seq in Redis) opens as usual.
    eve_b.join(&public).await;

    env.db.unblock();
    eventually("the room reads its members again on B", || async {
        let mut probe = eve.ws(&b).await;
        probe.send_json(json!({"type":"join","room":room})).await;
        let v = next_error(&mut probe).await;
        v["code"] == "forbidden_room"
    })
    .await;
    bob_b.send_json(json!({"type":"history","room":room})).await;
    let page = bob_b.recv_type("history").await;
    assert!(
        page.to_string().contains("said before the outage"),
        "{page}"
    );
}

/// Membership lets a user into a private room only as far as their token's
/// `rooms` claim allows; a member may use the seed endpoint like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rooms_claim_applies_on_top_of_membership() {
    let server = Server::start();
    let (alice, carol) = (Person::new("Alice"), Person::new("Carol"));
    let bob_id = uid("bob");
    let bob = Person {
        token: token_rooms(&bob_id, "Bob", &["lobby", "other-*"]),
        id: bob_id,
        name: "Bob".into(),
    };
    let room = room_name("claimed");
    assert_eq!(create(&server, &alice, &room, "private").await.status, 201);
    ok_event(
        &invite(&server, &alice, &room, &bob, "member").await,
        "member_added",
    );
    ok_event(
        &invite(&server, &alice, &room, &carol, "member").await,
        "member_added",
    );
    assert_no_way_in(&server, &bob, &room, "nothing").await;

    let mut seed = server
        .ws_connect(&format!("/ws/chat/{room}?token={}", carol.token), &[])
        .await
        .expect("a member may use the seed endpoint");
    let mut a = alice.ws(&server).await;
    a.join(&room).await;
    say(&mut a, &room, "seen by the seed client", "c1").await;
    let got = seed.recv_json().await;
    assert_eq!(got["message"], "seen by the seed client", "{got}");
    // Membership events are not for seed clients.
    ok_event(
        &moderate(&server, &alice, &room, &bob, "mute:5").await,
        "member_muted",
    );
    say(&mut a, &room, "second", "c2").await;
    assert_eq!(seed.recv_json().await["message"], "second");
}

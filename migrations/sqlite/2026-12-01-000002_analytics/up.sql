-- Counters behind GET /api/rooms/{room}/stats: messages per room, minute (of
-- the message's timestamp), poster and detected language. Filled off the hot
-- path by the analytics stage (src/analytics.rs).
CREATE TABLE room_activity (
    room      TEXT    NOT NULL,
    minute_ms BIGINT  NOT NULL,
    user_id   TEXT    NOT NULL,
    lang      TEXT    NOT NULL,
    user_name TEXT    NOT NULL,
    messages  BIGINT  NOT NULL,
    PRIMARY KEY (room, minute_ms, user_id, lang)
) WITHOUT ROWID;

CREATE INDEX room_activity_minute ON room_activity (minute_ms);

-- Per room, the newest seq the counters include. Counting moves it forward in
-- the same transaction, so every message is counted exactly once.
CREATE TABLE analytics_rooms (
    room        TEXT    NOT NULL PRIMARY KEY,
    counted_seq BIGINT  NOT NULL
) WITHOUT ROWID;

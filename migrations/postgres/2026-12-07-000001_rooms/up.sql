-- Private and direct rooms, members, bans and mutes, read markers
-- (docs/protocol.md, section 7b). A room without a row in room_settings is
-- public.
CREATE TABLE room_settings (
    room          TEXT   PRIMARY KEY,
    kind          TEXT   NOT NULL,
    owner         TEXT,
    created_at_ms BIGINT NOT NULL
);

-- One row per user a room knows: a member (role set), or someone banned or
-- muted. Each aspect carries the seq of the event that set it, so events
-- applied out of order (cluster mode: every instance persists part of the
-- stream) leave the latest one's effect. banned is 0 or 1.
CREATE TABLE room_members (
    room           TEXT   NOT NULL,
    user_id        TEXT   NOT NULL,
    user_name      TEXT   NOT NULL DEFAULT '',
    role           TEXT,
    banned         BIGINT NOT NULL DEFAULT 0,
    muted_until_ms BIGINT NOT NULL DEFAULT 0,
    member_seq     BIGINT NOT NULL DEFAULT 0,
    ban_seq        BIGINT NOT NULL DEFAULT 0,
    mute_seq       BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (room, user_id)
);
-- A user's rooms.
CREATE INDEX room_members_user ON room_members (user_id, room);

-- The highest seq each user has read in each room; it never moves back.
CREATE TABLE read_markers (
    user_id       TEXT   NOT NULL,
    room          TEXT   NOT NULL,
    read_seq      BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (user_id, room)
);

-- Every accepted message; (room, seq) is the identity and the history index.
CREATE TABLE messages (
    room          TEXT    NOT NULL,
    seq           BIGINT  NOT NULL,
    id            TEXT    NOT NULL,
    user_id       TEXT    NOT NULL,
    user_name     TEXT    NOT NULL,
    content       TEXT    NOT NULL,
    created_at_ms BIGINT  NOT NULL,
    client_ref    TEXT,
    PRIMARY KEY (room, seq)
);

CREATE INDEX messages_created_at ON messages (created_at_ms);

-- One row per room that ever had a message; last_seq survives retention.
CREATE TABLE rooms (
    name          TEXT    NOT NULL PRIMARY KEY,
    last_seq      BIGINT  NOT NULL,
    created_at_ms BIGINT  NOT NULL
);

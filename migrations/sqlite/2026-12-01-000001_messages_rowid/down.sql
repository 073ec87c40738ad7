CREATE TABLE messages_keyed (
    room          TEXT    NOT NULL,
    seq           BIGINT  NOT NULL,
    id            TEXT    NOT NULL,
    user_id       TEXT    NOT NULL,
    user_name     TEXT    NOT NULL,
    content       TEXT    NOT NULL,
    created_at_ms BIGINT  NOT NULL,
    client_ref    TEXT,
    PRIMARY KEY (room, seq)
) WITHOUT ROWID;

INSERT INTO messages_keyed SELECT room, seq, id, user_id, user_name, content, created_at_ms, client_ref FROM messages;

DROP TABLE messages;
ALTER TABLE messages_keyed RENAME TO messages;

CREATE INDEX messages_created_at ON messages (created_at_ms);

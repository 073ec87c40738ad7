-- Edits, deletes and reactions are entries of a room's log like messages
-- (kind, and the message they change in target); a message keeps its current
-- state in place (content, edited_at_ms, deleted), updated in the transaction
-- that stores the change. Existing rows are messages.
ALTER TABLE messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'message';
ALTER TABLE messages ADD COLUMN target TEXT;
ALTER TABLE messages ADD COLUMN reply_to TEXT;
ALTER TABLE messages ADD COLUMN edited_at_ms BIGINT;
ALTER TABLE messages ADD COLUMN deleted BOOLEAN NOT NULL DEFAULT false;

-- Changes name their message by id. Ids are UUIDv7, ordered by time across
-- all rooms, so this index grows at its end: a (room, id) index would take
-- an insert in the middle for every room of a batch and cost about five
-- times as much per message (docs/benchmarks.md).
CREATE INDEX messages_id ON messages (id);
-- A message's changes: a delete erases its edits; the latest edit, and the
-- latest reaction event of a user, win (changes may commit out of order).
CREATE INDEX messages_room_target ON messages (room, target, user_id) WHERE target IS NOT NULL;

-- Current reactions: one row per user and emoji on a message. message_seq
-- lets a history page read its messages' reactions by seq range.
CREATE TABLE reactions (
    room        TEXT    NOT NULL,
    message_id  TEXT    NOT NULL,
    emoji       TEXT    NOT NULL,
    user_id     TEXT    NOT NULL,
    message_seq BIGINT  NOT NULL,
    seq         BIGINT  NOT NULL,
    PRIMARY KEY (room, message_id, emoji, user_id)
);

CREATE INDEX reactions_room_message_seq ON reactions (room, message_seq);

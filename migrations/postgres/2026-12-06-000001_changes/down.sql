DROP TABLE reactions;
DROP INDEX messages_room_target;
DROP INDEX messages_id;
ALTER TABLE messages DROP COLUMN deleted;
ALTER TABLE messages DROP COLUMN edited_at_ms;
ALTER TABLE messages DROP COLUMN reply_to;
ALTER TABLE messages DROP COLUMN target;
ALTER TABLE messages DROP COLUMN kind;

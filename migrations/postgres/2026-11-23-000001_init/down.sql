DROP TABLE rooms;
DROP TABLE messages;

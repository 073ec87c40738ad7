DROP TABLE read_markers;
DROP TABLE room_members;
DROP TABLE room_settings;

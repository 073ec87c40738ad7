DROP TABLE analytics_rooms;
DROP TABLE room_activity;

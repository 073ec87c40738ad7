// Shared by both backends; keep in step with migrations/{sqlite,postgres}.

diesel::table! {
    messages (room, seq) {
        room -> Text,
        seq -> BigInt,
        id -> Text,
        user_id -> Text,
        user_name -> Text,
        content -> Text,
        created_at_ms -> BigInt,
        client_ref -> Nullable<Text>,
        kind -> Text,
        target -> Nullable<Text>,
        reply_to -> Nullable<Text>,
        edited_at_ms -> Nullable<BigInt>,
        deleted -> Bool,
    }
}

diesel::table! {
    reactions (room, message_id, emoji, user_id) {
        room -> Text,
        message_id -> Text,
        emoji -> Text,
        user_id -> Text,
        message_seq -> BigInt,
        seq -> BigInt,
    }
}

diesel::table! {
    rooms (name) {
        name -> Text,
        last_seq -> BigInt,
        created_at_ms -> BigInt,
    }
}

diesel::table! {
    room_activity (room, minute_ms, user_id, lang) {
        room -> Text,
        minute_ms -> BigInt,
        user_id -> Text,
        lang -> Text,
        user_name -> Text,
        messages -> BigInt,
    }
}

diesel::table! {
    analytics_rooms (room) {
        room -> Text,
        counted_seq -> BigInt,
    }
}
diesel::allow_tables_to_appear_in_same_query!(
    messages,
    rooms,
    room_activity,
    analytics_rooms,
    reactions
);

//! The rules of changes (edits, deletes, reactions, replies): what a change
//! may do to a message, decided against the message's state, and how a run of
//! log entries brings a message to its state. Pure code, shared by the room
//! (which checks changes before they are sequenced, see `room::flow`) and the
//! replays (which erase a deleted message's content).
//!
//! Every consumer applies a room's log in seq order with the same rules, so
//! they agree: an edit or reaction sequenced after its message's delete
//! changes nothing, and a reaction added twice is one reaction.

use crate::broker::Draft;
use crate::chat::{ChatMessage, Kind};
use crate::protocol::{ErrorCode, Rejection, MAX_EMOJI_PER_MESSAGE};
use std::collections::{BTreeMap, HashSet};

/// A message as the rules see it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TargetState {
    pub seq: u64,
    pub id: String,
    pub author: String,
    pub timestamp_ms: i64,
    pub deleted: bool,
    /// Users per emoji.
    pub emoji: BTreeMap<String, u64>,
    /// `(user, emoji)` pairs present: every pair when folded from the log,
    /// the asked-about users' pairs when read from the store.
    pub reacted: HashSet<(String, String)>,
}

impl TargetState {
    /// A message entry's state (before any of its changes).
    pub fn of(message: &ChatMessage) -> Self {
        Self {
            seq: message.seq,
            id: message.id.clone(),
            author: message.user_id.clone(),
            timestamp_ms: message.timestamp_ms,
            deleted: message.deleted,
            ..Self::default()
        }
    }

    /// Applies a change by `user` of kind `kind` (`content`: a reaction's emoji).
    fn apply(&mut self, kind: Kind, user: &str, content: &str) {
        match kind {
            Kind::Delete => {
                self.deleted = true;
                self.emoji.clear();
                self.reacted.clear();
            }
            Kind::React if !self.deleted => self.add(user, content),
            Kind::Unreact if !self.deleted => self.remove(user, content),
            _ => {}
        }
    }

    fn add(&mut self, user: &str, emoji: &str) {
        if self.reacted.insert((user.to_string(), emoji.to_string())) {
            *self.emoji.entry(emoji.to_string()).or_insert(0) += 1;
        }
    }

    fn remove(&mut self, user: &str, emoji: &str) {
        if !self.reacted.remove(&(user.to_string(), emoji.to_string())) {
            return;
        }
        if let Some(n) = self.emoji.get_mut(emoji) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.emoji.remove(emoji);
            }
        }
    }

    /// Applies a later log entry about this message.
    pub fn apply_entry(&mut self, entry: &ChatMessage) {
        if entry.kind.is_change() && entry.target.as_deref() == Some(self.id.as_str()) {
            self.apply(entry.kind, &entry.user_id, &entry.content);
        }
    }

    /// What an `unchanged` ack names: the message itself.
    pub fn ack(&self, room: &str) -> ChatMessage {
        ChatMessage {
            room: room.to_string(),
            seq: self.seq,
            id: self.id.clone(),
            user_id: self.author.clone(),
            timestamp_ms: self.timestamp_ms,
            ..ChatMessage::default()
        }
    }
}

/// The message a draft needs to know about: a change's target, a reply's original.
pub fn target_of(draft: &Draft) -> Option<&str> {
    match draft.kind {
        Kind::Message => draft.reply_to.as_deref(),
        kind if kind.is_change() => draft.target.as_deref(),
        _ => None,
    }
}

/// The state of message `id` from a run of log entries in seq order: folded
/// from the message itself when it is among them, else `base` (read from the
/// store) with the run's changes to it applied on top.
pub fn resolve<'a>(
    entries: impl Iterator<Item = &'a ChatMessage>,
    id: &str,
    base: Option<TargetState>,
) -> Option<TargetState> {
    let mut state = base;
    for entry in entries {
        if entry.kind == Kind::Message && entry.id == id {
            state = Some(TargetState::of(entry));
        } else if let Some(state) = state.as_mut() {
            state.apply_entry(entry);
        }
    }
    state
}

/// What the rules say of one draft.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Sequence it.
    Accept,
    /// It would change nothing: ack it as `unchanged`, naming the target.
    Unchanged(TargetState),
    Refuse(Rejection),
}

/// Checks a draft against its target's state (`None`: no such message) and,
/// when accepted, applies it there, so the next draft of the batch sees it.
/// `moderator`: the sender may delete anyone's message.
pub fn check(draft: &Draft, moderator: bool, target: Option<&mut TargetState>) -> Verdict {
    if target_of(draft).is_none() {
        return Verdict::Accept;
    }
    let Some(state) = target else {
        return refuse(
            ErrorCode::NotFound,
            "there is no message with this id in the room",
        );
    };
    let user = draft.user.id.as_str();
    let deleted = || refuse(ErrorCode::MessageDeleted, "this message was deleted");
    match draft.kind {
        Kind::Message if state.deleted => deleted(),
        Kind::Message => Verdict::Accept,
        Kind::Edit if state.author != user => {
            refuse(ErrorCode::Forbidden, "only the author edits a message")
        }
        Kind::Edit if state.deleted => deleted(),
        Kind::Edit => Verdict::Accept,
        Kind::Delete if state.author != user && !moderator => refuse(
            ErrorCode::Forbidden,
            "only the author or a moderator deletes a message",
        ),
        Kind::Delete if state.deleted => Verdict::Unchanged(state.clone()),
        Kind::React | Kind::Unreact if state.deleted => deleted(),
        Kind::Delete | Kind::React | Kind::Unreact => {
            let pair = (user.to_string(), draft.content.clone());
            let has = state.reacted.contains(&pair);
            match draft.kind {
                Kind::React if has => return Verdict::Unchanged(state.clone()),
                Kind::Unreact if !has => return Verdict::Unchanged(state.clone()),
                Kind::React
                    if !state.emoji.contains_key(&draft.content)
                        && state.emoji.len() >= MAX_EMOJI_PER_MESSAGE =>
                {
                    return refuse(
                        ErrorCode::TooManyReactions,
                        format!("a message has at most {MAX_EMOJI_PER_MESSAGE} different emoji"),
                    );
                }
                _ => {}
            }
            state.apply(draft.kind, user, &draft.content);
            Verdict::Accept
        }
        // Membership events name no message (`target_of` is `None`).
        _ => Verdict::Accept,
    }
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> Verdict {
    Verdict::Refuse(Rejection::new(code, message))
}

/// Erases what a run of log entries says of the messages deleted within it:
/// the message's content (it becomes a tombstone) and its edits' content.
/// Replays read from Redis or mixed with the store pass through this, so a
/// deleted message's text never goes out again.
pub fn scrub(entries: &mut [ChatMessage]) {
    let deleted: HashSet<String> = entries
        .iter()
        .filter(|e| e.kind == Kind::Delete)
        .filter_map(|e| e.target.clone())
        .collect();
    if deleted.is_empty() {
        return;
    }
    for entry in entries.iter_mut() {
        let hit = match entry.kind {
            Kind::Message => deleted.contains(&entry.id),
            Kind::Edit => entry.target.as_ref().is_some_and(|t| deleted.contains(t)),
            _ => false,
        };
        if hit {
            erase(entry);
        }
    }
}

/// What deleting leaves of a message (a tombstone) or of one of its edits.
pub fn erase(entry: &mut ChatMessage) {
    entry.content.clear();
    if entry.is_message() {
        entry.deleted = true;
        entry.edited_at_ms = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::UserInfo;
    use std::sync::Arc;

    fn user(id: &str) -> Arc<UserInfo> {
        Arc::new(UserInfo {
            id: id.into(),
            name: id.to_uppercase(),
        })
    }

    fn message(seq: u64, id: &str, author: &str) -> ChatMessage {
        ChatMessage {
            room: "g".into(),
            seq,
            id: id.into(),
            user_id: author.into(),
            content: format!("text of {id}"),
            ..ChatMessage::default()
        }
    }

    fn change(seq: u64, kind: Kind, target: &str, by: &str, content: &str) -> ChatMessage {
        ChatMessage {
            room: "g".into(),
            seq,
            id: format!("e{seq}"),
            user_id: by.into(),
            content: content.into(),
            kind,
            target: Some(target.into()),
            ..ChatMessage::default()
        }
    }

    fn draft(kind: Kind, by: &str, target: &str, content: &str) -> Draft {
        Draft::change(user(by), kind, target.into(), content.into(), None)
    }

    #[test]
    fn only_the_author_edits_and_nobody_edits_a_deleted_message() {
        let mut m = TargetState::of(&message(1, "m1", "ann"));
        assert_eq!(
            check(&draft(Kind::Edit, "ann", "m1", "x"), false, Some(&mut m)),
            Verdict::Accept
        );
        let Verdict::Refuse(r) = check(&draft(Kind::Edit, "bob", "m1", "x"), true, Some(&mut m))
        else {
            panic!("a moderator does not edit")
        };
        assert_eq!(r.code, ErrorCode::Forbidden);
        assert_eq!(
            check(&draft(Kind::Delete, "ann", "m1", ""), false, Some(&mut m)),
            Verdict::Accept
        );
        let Verdict::Refuse(r) = check(&draft(Kind::Edit, "ann", "m1", "x"), false, Some(&mut m))
        else {
            panic!("deleted")
        };
        assert_eq!(r.code, ErrorCode::MessageDeleted);
        assert!(matches!(
            check(&draft(Kind::Delete, "ann", "m1", ""), false, Some(&mut m)),
            Verdict::Unchanged(_)
        ));
        let Verdict::Refuse(r) = check(&draft(Kind::Edit, "ann", "m9", "x"), false, None) else {
            panic!("unknown")
        };
        assert_eq!(r.code, ErrorCode::NotFound);
    }

    #[test]
    fn moderators_delete_anyones_message() {
        let mut m = TargetState::of(&message(1, "m1", "ann"));
        let Verdict::Refuse(r) = check(&draft(Kind::Delete, "bob", "m1", ""), false, Some(&mut m))
        else {
            panic!("not his")
        };
        assert_eq!(r.code, ErrorCode::Forbidden);
        assert_eq!(
            check(&draft(Kind::Delete, "bob", "m1", ""), true, Some(&mut m)),
            Verdict::Accept
        );
        assert!(m.deleted);
    }

    #[test]
    fn reactions_are_a_set_with_a_bounded_number_of_emoji() {
        let mut m = TargetState::of(&message(1, "m1", "ann"));
        assert_eq!(
            check(&draft(Kind::React, "bob", "m1", "👍"), false, Some(&mut m)),
            Verdict::Accept
        );
        assert!(matches!(
            check(&draft(Kind::React, "bob", "m1", "👍"), false, Some(&mut m)),
            Verdict::Unchanged(_)
        ));
        assert_eq!(
            check(&draft(Kind::React, "cat", "m1", "👍"), false, Some(&mut m)),
            Verdict::Accept
        );
        assert_eq!(m.emoji["👍"], 2);
        assert_eq!(
            check(
                &draft(Kind::Unreact, "bob", "m1", "👍"),
                false,
                Some(&mut m)
            ),
            Verdict::Accept
        );
        assert!(matches!(
            check(
                &draft(Kind::Unreact, "bob", "m1", "👍"),
                false,
                Some(&mut m)
            ),
            Verdict::Unchanged(_)
        ));
        assert_eq!(m.emoji["👍"], 1);
        for i in 1..MAX_EMOJI_PER_MESSAGE {
            let e = format!(":e{i}:");
            assert_eq!(
                check(&draft(Kind::React, "bob", "m1", &e), false, Some(&mut m)),
                Verdict::Accept
            );
        }
        let Verdict::Refuse(r) = check(
            &draft(Kind::React, "bob", "m1", ":one-more:"),
            false,
            Some(&mut m),
        ) else {
            panic!("over the emoji limit")
        };
        assert_eq!(r.code, ErrorCode::TooManyReactions);
        assert_eq!(
            check(&draft(Kind::React, "dan", "m1", "👍"), false, Some(&mut m)),
            Verdict::Accept,
            "an emoji already there is always welcome"
        );
    }

    #[test]
    fn replies_need_a_live_message() {
        let reply = Draft::new(user("bob"), "+1".into(), None).replying_to(Some("m1".into()));
        let mut m = TargetState::of(&message(1, "m1", "ann"));
        assert_eq!(check(&reply, false, Some(&mut m)), Verdict::Accept);
        m.deleted = true;
        assert!(
            matches!(check(&reply, false, Some(&mut m)), Verdict::Refuse(r) if r.code == ErrorCode::MessageDeleted)
        );
        assert!(
            matches!(check(&reply, false, None), Verdict::Refuse(r) if r.code == ErrorCode::NotFound)
        );
        let plain = Draft::new(user("bob"), "hi".into(), None);
        assert_eq!(check(&plain, false, None), Verdict::Accept);
    }

    #[test]
    fn resolving_folds_the_log_or_overlays_the_store() {
        let log = [
            message(1, "m1", "ann"),
            change(2, Kind::React, "m1", "bob", "👍"),
            change(3, Kind::React, "m0", "bob", "👍"),
            change(4, Kind::Unreact, "m1", "bob", "👍"),
            change(5, Kind::React, "m1", "cat", "🎉"),
        ];
        let s = resolve(log.iter(), "m1", None).expect("in the log");
        assert_eq!(s.emoji.len(), 1);
        assert!(s.reacted.contains(&("cat".into(), "🎉".into())));
        assert!(
            resolve(log.iter(), "m0", None).is_none(),
            "not in the log, no base"
        );
        let base = TargetState::of(&message(0, "m0", "dan"));
        let s = resolve(log.iter(), "m0", Some(base)).expect("from the store");
        assert_eq!(s.emoji["👍"], 1);
        let deleted = [change(6, Kind::Delete, "m0", "dan", "")];
        let s = resolve(deleted.iter(), "m0", Some(s)).unwrap();
        assert!(s.deleted && s.emoji.is_empty());
        // A reaction after the delete changes nothing.
        let late = [change(7, Kind::React, "m0", "bob", "👍")];
        assert!(resolve(late.iter(), "m0", Some(s))
            .unwrap()
            .emoji
            .is_empty());
    }

    #[test]
    fn scrubbing_erases_deleted_messages_and_their_edits() {
        let mut log = vec![
            message(1, "m1", "ann"),
            message(2, "m2", "ann"),
            change(3, Kind::Edit, "m1", "ann", "secret v2"),
            change(4, Kind::Delete, "m1", "ann", ""),
            change(5, Kind::Edit, "m1", "ann", "too late"),
            change(6, Kind::Edit, "m2", "ann", "kept"),
        ];
        scrub(&mut log);
        assert!(log[0].deleted && log[0].content.is_empty());
        assert!(log[2].content.is_empty() && log[4].content.is_empty());
        assert_eq!(log[1].content, "text of m2");
        assert_eq!(log[5].content, "kept");
    }
}

//! Membership and presence: the room's members on this instance, who is
//! visible in the room (connected here, or through other instances), the
//! typing throttle, and presence coalescing (changes within a short window go
//! out as one net `presence` frame).

use crate::broker::RemotePresence;
use crate::message::{FrameFormat, Outlet};
use crate::protocol::{self, UserInfo};
use crate::FastMap;
use bytestring::ByteString;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Typing relays: at most one per user per room in this window.
const TYPING_WINDOW: Duration = Duration::from_secs(2);

/// One session in the room.
pub(super) struct Member {
    pub(super) user: Arc<UserInfo>,
    /// May delete anyone's messages.
    pub(super) moderator: bool,
    pub(super) to: Outlet,
    pub(super) format: FrameFormat,
}

/// A user's connections to this room on this instance.
struct LocalUser {
    user: Arc<UserInfo>,
    connections: usize,
}

/// A user present through other instances.
struct RemoteUser {
    user: Arc<UserInfo>,
    instances: HashSet<Arc<str>>,
}

/// What adding a member changed.
pub(super) struct Arrival {
    /// The user's first connection here: other instances are told.
    pub(super) first_here: bool,
    /// The user was not visible in the room before: members are told.
    pub(super) newly_visible: bool,
}

/// What removing a member changed.
pub(super) struct Departure {
    pub(super) member: Member,
    /// The user's last connection here left: other instances are told.
    pub(super) last_here: Option<Arc<UserInfo>>,
    /// ... and the user is no longer visible in the room: members are told.
    pub(super) gone: bool,
}

/// See the module docs.
#[derive(Default)]
pub(super) struct Membership {
    /// This instance's members of the room, by session.
    members: FastMap<Uuid, Member>,
    /// Users connected here, with how many of their sessions are members
    /// (other instances hear of the first and the last).
    local: FastMap<String, LocalUser>,
    /// Users present through other instances, and which instances.
    remote: HashMap<String, RemoteUser>,
    /// When each user's last typing notice was relayed.
    typing: FastMap<String, Instant>,
    /// Users whose visibility changed since the last presence frame, with
    /// whether they were visible before.
    presence_changes: FastMap<String, (Arc<UserInfo>, bool)>,
    /// A presence frame is scheduled.
    presence_flush_due: bool,
    /// A presence refresh with the broker is under way.
    refreshing: bool,
}

impl Membership {
    pub(super) fn get(&self, session: &Uuid) -> Option<&Member> {
        self.members.get(session)
    }

    pub(super) fn contains(&self, session: &Uuid) -> bool {
        self.members.contains_key(session)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub(super) fn len(&self) -> usize {
        self.members.len()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&Uuid, &Member)> {
        self.members.iter()
    }

    /// Members whose session is gone (without a `Leave`).
    pub(super) fn disconnected(&self) -> Vec<Uuid> {
        self.members
            .iter()
            .filter(|(_, m)| !m.to.connected())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Adds a session that is not a member yet.
    pub(super) fn add(&mut self, session: Uuid, member: Member) -> Arrival {
        let user = member.user.clone();
        let arrival = match self.local.get_mut(&user.id) {
            Some(local) => {
                local.connections += 1;
                Arrival {
                    first_here: false,
                    newly_visible: false,
                }
            }
            None => {
                let newly_visible = !self.visible(&user.id);
                self.local.insert(
                    user.id.clone(),
                    LocalUser {
                        user,
                        connections: 1,
                    },
                );
                Arrival {
                    first_here: true,
                    newly_visible,
                }
            }
        };
        self.members.insert(session, member);
        arrival
    }

    pub(super) fn remove(&mut self, session: &Uuid) -> Option<Departure> {
        let member = self.members.remove(session)?;
        let user_id = &member.user.id;
        let last_connection = match self.local.get_mut(user_id) {
            Some(local) => {
                local.connections -= 1;
                local.connections == 0
            }
            None => false,
        };
        let mut departure = Departure {
            last_here: None,
            gone: false,
            member,
        };
        if last_connection {
            let user_id = departure.member.user.id.clone();
            if let Some(local) = self.local.remove(&user_id) {
                departure.gone = !self.remote.contains_key(&user_id);
                if departure.gone {
                    self.typing.remove(&user_id);
                }
                departure.last_here = Some(local.user);
            }
        }
        Some(departure)
    }

    /// Present in the room: connected here or through another instance.
    pub(super) fn visible(&self, user_id: &str) -> bool {
        self.local.contains_key(user_id) || self.remote.contains_key(user_id)
    }

    /// Everyone visible, by name.
    pub(super) fn visible_users(&self) -> Vec<&UserInfo> {
        let mut users: Vec<&UserInfo> = self.local.values().map(|p| p.user.as_ref()).collect();
        users.extend(
            self.remote
                .iter()
                .filter(|(id, _)| !self.local.contains_key(*id))
                .map(|(_, r)| r.user.as_ref()),
        );
        users.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        users
    }

    /// How many users are visible.
    pub(super) fn online(&self) -> usize {
        self.local.len()
            + self
                .remote
                .keys()
                .filter(|id| !self.local.contains_key(*id))
                .count()
    }

    /// The users connected here, for a presence refresh.
    pub(super) fn local_users(&self) -> Vec<Arc<UserInfo>> {
        self.local.values().map(|p| p.user.clone()).collect()
    }

    /// Starts a presence refresh unless one is under way.
    pub(super) fn begin_refresh(&mut self) -> bool {
        !std::mem::replace(&mut self.refreshing, true)
    }

    pub(super) fn end_refresh(&mut self) {
        self.refreshing = false;
    }

    // ----------------------------------------------------------- presence

    /// Notes that `user` just became visible (`joined`) or not; `true` when
    /// the presence frame is to be scheduled. A user who joined and left
    /// within the window (or the reverse) is not announced at all.
    pub(super) fn note_presence(&mut self, user: &Arc<UserInfo>, joined: bool) -> bool {
        self.presence_changes
            .entry(user.id.clone())
            .or_insert_with(|| (user.clone(), !joined));
        !std::mem::replace(&mut self.presence_flush_due, true)
    }

    /// The net presence changes since the last frame, as frames; `None` when
    /// nothing changed after all.
    pub(super) fn take_presence<'a>(&mut self, room: &'a str) -> Option<PresenceFrames<'a>> {
        self.presence_flush_due = false;
        let changes = std::mem::take(&mut self.presence_changes);
        let (mut joined, mut left) = (Vec::new(), Vec::new());
        for (id, (user, was_visible)) in changes {
            match (was_visible, self.visible(&id)) {
                (false, true) => joined.push(user),
                (true, false) => left.push(user),
                _ => {}
            }
        }
        if joined.is_empty() && left.is_empty() {
            return None;
        }
        let by_name =
            |a: &Arc<UserInfo>, b: &Arc<UserInfo>| a.name.cmp(&b.name).then(a.id.cmp(&b.id));
        joined.sort_by(by_name);
        left.sort_by(by_name);
        let left_refs: Vec<&UserInfo> = left.iter().map(|u| u.as_ref()).collect();
        let joined_refs: Vec<&UserInfo> = joined.iter().map(|u| u.as_ref()).collect();
        let common = ByteString::from(protocol::presence_json(room, &joined_refs, &left_refs));
        Some(PresenceFrames {
            room,
            common,
            joined,
            left,
            personal: FastMap::default(),
        })
    }

    /// Replaces the view of other instances' users: who became visible
    /// (`true`) or not (`false`).
    pub(super) fn reconcile_remote(
        &mut self,
        entries: Vec<RemotePresence>,
    ) -> Vec<(Arc<UserInfo>, bool)> {
        let mut fresh: HashMap<String, RemoteUser> = HashMap::new();
        for e in entries {
            fresh
                .entry(e.user.id.clone())
                .or_insert_with(|| RemoteUser {
                    user: e.user.clone(),
                    instances: HashSet::new(),
                })
                .instances
                .insert(e.instance);
        }
        let old = std::mem::replace(&mut self.remote, fresh);
        let mut changes: Vec<(Arc<UserInfo>, bool)> = Vec::new();
        for (id, r) in &old {
            if !self.visible(id) {
                changes.push((r.user.clone(), false));
            }
        }
        for (id, r) in &self.remote {
            if !old.contains_key(id) && !self.local.contains_key(id) {
                changes.push((r.user.clone(), true));
            }
        }
        changes
    }

    /// `user` joined through `instance`: whether it became visible.
    pub(super) fn remote_joined(&mut self, instance: Arc<str>, user: &Arc<UserInfo>) -> bool {
        let newly_visible = !self.visible(&user.id);
        self.remote
            .entry(user.id.clone())
            .or_insert_with(|| RemoteUser {
                user: user.clone(),
                instances: HashSet::new(),
            })
            .instances
            .insert(instance);
        newly_visible
    }

    /// `user` left through `instance`: whether it is no longer visible.
    pub(super) fn remote_left(&mut self, instance: &Arc<str>, user: &UserInfo) -> bool {
        let was_visible = self.visible(&user.id);
        if let Some(r) = self.remote.get_mut(&user.id) {
            r.instances.remove(instance);
            if r.instances.is_empty() {
                self.remote.remove(&user.id);
            }
        }
        let gone = was_visible && !self.visible(&user.id);
        if gone {
            self.typing.remove(&user.id);
        }
        gone
    }

    /// Whether to relay `user`'s typing now (not within [`TYPING_WINDOW`] of
    /// the last relayed one); `true` counts it as relayed.
    pub(super) fn typing_relayed(&mut self, user_id: &str, now: Instant) -> bool {
        if self
            .typing
            .get(user_id)
            .is_some_and(|at| now.duration_since(*at) < TYPING_WINDOW)
        {
            return false;
        }
        self.typing.insert(user_id.to_string(), now);
        true
    }
}

/// One round of presence frames: the common one, and for a user who just
/// joined, one without itself (it got `joined`), or none.
pub(super) struct PresenceFrames<'a> {
    room: &'a str,
    common: ByteString,
    joined: Vec<Arc<UserInfo>>,
    left: Vec<Arc<UserInfo>>,
    /// Frames made for users who joined, by user (empty: nothing to send).
    personal: FastMap<String, ByteString>,
}

impl PresenceFrames<'_> {
    /// The frame for a member who is `user_id`, if any.
    pub(super) fn for_user(&mut self, user_id: &str) -> Option<ByteString> {
        if !self.joined.iter().any(|u| u.id == user_id) {
            return Some(self.common.clone());
        }
        let (room, joined, left) = (self.room, &self.joined, &self.left);
        let own = self.personal.entry(user_id.to_string()).or_insert_with(|| {
            let others: Vec<&UserInfo> = joined
                .iter()
                .filter(|u| u.id != user_id)
                .map(|u| u.as_ref())
                .collect();
            let left: Vec<&UserInfo> = left.iter().map(|u| u.as_ref()).collect();
            if others.is_empty() && left.is_empty() {
                ByteString::new()
            } else {
                protocol::presence_json(room, &others, &left).into()
            }
        });
        (!own.is_empty()).then(|| own.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str, name: &str) -> Arc<UserInfo> {
        Arc::new(UserInfo {
            id: id.into(),
            name: name.into(),
        })
    }

    fn member(user: &Arc<UserInfo>) -> Member {
        let to = super::super::test_outlet();
        Member {
            user: user.clone(),
            moderator: false,
            to,
            format: FrameFormat::V1,
        }
    }

    fn remote(instance: &str, user: &Arc<UserInfo>) -> RemotePresence {
        RemotePresence {
            instance: instance.into(),
            user: user.clone(),
        }
    }

    fn names(m: &Membership) -> Vec<&str> {
        m.visible_users().iter().map(|u| u.name.as_str()).collect()
    }

    #[actix::test]
    async fn connections_are_counted_per_user() {
        let ann = user("u1", "Ann");
        let mut m = Membership::default();
        let (s1, s2) = (Uuid::new_v4(), Uuid::new_v4());
        let first = m.add(s1, member(&ann));
        assert!(first.first_here && first.newly_visible);
        let second = m.add(s2, member(&ann));
        assert!(!second.first_here && !second.newly_visible);
        assert_eq!((m.len(), m.online()), (2, 1));

        let left = m.remove(&s1).expect("a member");
        assert!(
            left.last_here.is_none() && !left.gone,
            "one connection left"
        );
        let left = m.remove(&s2).expect("a member");
        assert_eq!(left.last_here.map(|u| u.id.clone()).as_deref(), Some("u1"));
        assert!(left.gone);
        assert!(m.remove(&s2).is_none(), "removed once");
        assert!(m.is_empty() && m.online() == 0);
    }

    #[actix::test]
    async fn a_user_also_present_elsewhere_stays_visible() {
        let ann = user("u1", "Ann");
        let mut m = Membership::default();
        assert!(m.remote_joined("b".into(), &ann));
        let s = Uuid::new_v4();
        let arrival = m.add(s, member(&ann));
        assert!(arrival.first_here && !arrival.newly_visible);
        assert_eq!(m.online(), 1, "counted once");
        let left = m.remove(&s).expect("a member");
        assert!(left.last_here.is_some() && !left.gone);
        assert!(m.remote_left(&"b".into(), &ann));
        assert!(!m.visible("u1"));
    }

    #[test]
    fn remote_users_count_per_instance() {
        let ann = user("u1", "Ann");
        let mut m = Membership::default();
        assert!(m.remote_joined("b".into(), &ann));
        assert!(!m.remote_joined("c".into(), &ann));
        assert!(!m.remote_left(&"b".into(), &ann), "still through c");
        assert!(m.remote_left(&"c".into(), &ann));
        assert!(!m.remote_left(&"c".into(), &ann), "already gone");
    }

    #[test]
    fn reconciling_reports_who_came_and_went() {
        let (ann, bob, cy) = (user("u1", "Ann"), user("u2", "Bob"), user("u3", "Cy"));
        let mut m = Membership::default();
        m.remote_joined("b".into(), &ann);
        m.remote_joined("b".into(), &bob);
        let mut changes = m.reconcile_remote(vec![remote("b", &bob), remote("c", &cy)]);
        changes.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        let changes: Vec<(&str, bool)> = changes.iter().map(|(u, j)| (u.id.as_str(), *j)).collect();
        assert_eq!(changes, [("u1", false), ("u3", true)]);
        assert_eq!(names(&m), ["Bob", "Cy"]);
    }

    #[test]
    fn typing_is_relayed_once_per_window() {
        let mut m = Membership::default();
        let now = Instant::now();
        assert!(m.typing_relayed("u1", now));
        assert!(!m.typing_relayed("u1", now + Duration::from_secs(1)));
        assert!(m.typing_relayed("u2", now));
        assert!(m.typing_relayed("u1", now + TYPING_WINDOW));
    }

    #[actix::test]
    async fn leaving_forgets_the_typing_window() {
        let ann = user("u1", "Ann");
        let mut m = Membership::default();
        let s = Uuid::new_v4();
        m.add(s, member(&ann));
        assert!(m.typing_relayed("u1", Instant::now()));
        m.remove(&s);
        assert!(
            m.typing_relayed("u1", Instant::now()),
            "a new visit types at once"
        );
    }

    #[test]
    fn presence_changes_coalesce_to_the_net_change() {
        let (ann, bob) = (user("u1", "Ann"), user("u2", "Bob"));
        let mut m = Membership::default();
        m.remote_joined("b".into(), &ann);
        assert!(m.note_presence(&ann, true), "schedule a frame");
        m.remote_left(&"b".into(), &ann);
        assert!(!m.note_presence(&ann, false), "already scheduled");
        assert!(
            m.take_presence("general").is_none(),
            "joined and left: nothing"
        );

        m.remote_joined("b".into(), &bob);
        assert!(m.note_presence(&bob, true), "scheduled again after a flush");
        let mut frames = m.take_presence("general").expect("bob joined");
        let frame = frames.for_user("u9").expect("for everyone else");
        assert_eq!(
            frame,
            protocol::presence_json("general", &[bob.as_ref()], &[])
        );
        assert!(frames.for_user("u2").is_none(), "bob got `joined` instead");
    }

    #[test]
    fn a_joiner_hears_of_the_others() {
        let (ann, bob, cy) = (user("u1", "Ann"), user("u2", "Bob"), user("u3", "Cy"));
        let mut m = Membership::default();
        m.remote_joined("b".into(), &cy);
        for u in [&ann, &bob] {
            m.remote_joined("b".into(), u);
            m.note_presence(u, true);
        }
        m.remote_left(&"b".into(), &cy);
        m.note_presence(&cy, false);
        let mut frames = m.take_presence("general").expect("changes");
        assert_eq!(
            frames.for_user("u1").expect("bob joined, cy left"),
            protocol::presence_json("general", &[bob.as_ref()], &[cy.as_ref()])
        );
        assert_eq!(
            frames.for_user("u9").expect("both"),
            protocol::presence_json("general", &[ann.as_ref(), bob.as_ref()], &[cy.as_ref()])
        );
    }

    #[test]
    fn one_refresh_at_a_time() {
        let mut m = Membership::default();
        assert!(m.begin_refresh());
        assert!(!m.begin_refresh());
        m.end_refresh();
        assert!(m.begin_refresh());
    }
}

// The client's state and every change to it. No I/O and no DOM here: app.js
// feeds server frames and user actions in, the view re-renders on change.

export const ROOM_RE = /^[A-Za-z0-9_.:-]{1,64}$/;

/** The server's room-name rule; an error text, or null when the name is fine. */
export function roomNameError(name) {
  if (!name) return "Enter a room name.";
  if (name.length > 64) return "Room names are at most 64 characters.";
  if (!ROOM_RE.test(name)) return "Use only letters, digits and _ . : - in room names.";
  return null;
}

/** The server's display-name rule (1–32 characters after trimming, no control characters). */
export function displayNameError(name) {
  const trimmed = name.trim();
  const chars = [...trimmed].length;
  if (chars === 0) return "Enter a display name.";
  if (chars > 32) return "Display names are at most 32 characters.";
  if (/\p{Cc}/u.test(trimmed)) return "Display names cannot contain control characters.";
  return null;
}

const TYPING_SHOWN_MS = 3000;
export const JOIN_HISTORY = 50; // events replayed on a first join
export const COUNT_CAP = 1000; // the server counts unread messages and mentions up to this (docs/protocol.md 7b)

/** Room roles, and what a server admin counts as (docs/protocol.md 7b, "Roles"). */
const RANK = { member: 1, admin: 2, owner: 3 };
const SERVER_ADMIN_RANK = 4;

/** Lowercases ASCII letters only (mentions ignore ASCII case, nothing else). */
const asciiLower = (text) => String(text).replace(/[A-Z]/g, (c) => c.toLowerCase());

function newRoom(name) {
  return {
    name,
    joined: false, // a `joined` frame arrived on the current connection
    replayUntil: 0, // the joined frame's last_seq: the replay that follows it ends there
    synced: false, // ever joined: a rejoin then uses `since`
    messages: new Map(), // seq -> message, shown
    byId: new Map(), // message id -> the same message objects: the targets of changes and replies
    lastSeq: 0, // highest seq received from the room's stream (messages and changes): the next `since`
    atStart: false, // a history page said there is nothing older (next_before: null)
    heldFrom: Infinity, // every message with seq >= heldFrom is held (the replay and history pages are gap-free)
    // Read markers (docs/protocol.md 7b). readSeq is the user's marker as far
    // as this page knows (it never moves back); base holds the counts the
    // server gave for a marker ({readSeq, upTo, unread, mentions}: messages
    // up to upTo), from `joined` or /api/me/rooms.
    readSeq: 0,
    base: null,
    divider: undefined, // the "new messages" line goes after this seq; null: no line; undefined: not decided yet
    read: { wanted: 0, sent: 0, sentAt: 0, timer: 0 }, // `read` frames: the newest seq to mark, the last sent, when
    events: new Map(), // seq -> membership event (room_created, member_added, …): system lines
    lastRemoval: null, // the newest member_removed event that named the user
    removed: null, // {reason, by}: the server took this connection out of the room (kicked, banned, removed)
    mutedUntil: 0, // ms: the user is muted in this room until then
    roster: null, // the room's members over REST: {members: Map id -> {name, role, muted_until}, banned: [{id, name}]}
    loadingOlder: false,
    olderError: null,
    members: new Map(), // user id -> name
    typing: new Map(), // user id -> {name, until}
    pending: [], // own sends without an ack: {ref, n, content, reply_to, status: "pending"|"failed", error}
    // Own changes (edit, delete, react, unreact) not yet in the room's stream:
    // {ref, n, kind, id, content, emoji, status: "pending"|"acked", ackSeq}.
    // "acked" ones wait until the stream reaches their seq (the event then applies).
    changes: [],
  };
}

export class Store {
  constructor() {
    this.listeners = new Set();
    this.reset();
  }

  reset() {
    this.token = null;
    this.user = null; // {id, name}
    this.moderator = false; // the token's claims say so (docs/protocol.md 7a): Delete on everyone's messages
    this.serverAdmin = false; // the token's claims say so (docs/protocol.md 7b): may moderate every room
    this.readMarkers = false; // the server keeps read markers (a `joined` carried read_seq): `read` frames are understood
    this.info = new Map(); // room name -> {kind, role, peer: {id, name} | null}: what we know of rooms, open or not
    this.people = new Map(); // user id -> display name: everyone seen (presence, messages, members), for invites and DMs
    this.connection = { state: "stopped" };
    this.rooms = new Map(); // the rooms this client has open (joined), in opening order
    this.directory = new Map(); // name -> {last_seq, online} from /api/rooms
    this.current = null; // the room in view
    this.pageVisible = true; // a hidden tab's current room collects unread messages too
  }

  subscribe(fn) {
    this.listeners.add(fn);
  }

  /** Tells the view what changed: "rooms", "messages", "members", "typing", "connection", "user". */
  changed(...parts) {
    for (const fn of this.listeners) fn(new Set(parts));
  }

  room(name) {
    return this.rooms.get(name) ?? null;
  }

  get currentRoom() {
    return this.current ? this.room(this.current) : null;
  }

  isOwn(userId) {
    return this.user !== null && userId === this.user.id;
  }

  // -------------------------------------------------------------- rooms

  openRoom(name) {
    if (!this.rooms.has(name)) {
      this.rooms.set(name, newRoom(name));
      this.changed("rooms");
    }
    return this.rooms.get(name);
  }

  closeRoom(name) {
    this.rooms.delete(name);
    if (this.current === name) this.current = null;
    this.changed("rooms", "messages", "members", "typing");
  }

  /** Shows a room. Coming to it from elsewhere places the "new messages" line at the read marker. */
  view(name) {
    const switched = this.current !== name;
    this.current = name;
    const room = this.room(name);
    if (room && switched) room.divider = room.base || room.synced ? this.dividerFor(room) : undefined;
    this.changed("rooms", "messages", "members", "typing");
  }

  setPageVisible(visible) {
    const was = this.pageVisible;
    this.pageVisible = visible;
    const room = this.currentRoom;
    // Back to a tab that collected unread messages: the line goes above them.
    if (visible && !was && room && (room.base || room.synced) && this.counts(room).unread > 0) room.divider = room.readSeq;
    if (visible && this.current) this.view(this.current);
  }

  /** The user reads this room: the badge goes, the line stays where it is. */
  viewing(name) {
    return this.current === name && this.pageVisible;
  }

  /** Where the "new messages" line goes when the room comes into view: after the marker, if anything is unread. */
  dividerFor(room) {
    const { unread } = this.counts(room);
    return unread > 0 ? room.readSeq : null;
  }

  setDirectory(rooms) {
    this.directory = new Map(rooms.map((r) => [r.name, { last_seq: r.last_seq, online: r.online, kind: r.kind }]));
    for (const r of rooms) if (r.kind) this.setInfo(r.name, { kind: r.kind });
    this.changed("rooms");
  }

  // -------------------------------------------------- kinds, roles, people

  /** What we know of a room (created on first use). */
  infoOf(name) {
    let info = this.info.get(name);
    if (!info) {
      info = { kind: name.startsWith("dm:") ? "direct" : null, role: null, peer: null };
      this.info.set(name, info);
    }
    return info;
  }

  /** Merges what a server answer says of a room: {kind, role, members} (role: undefined leaves it). */
  setInfo(name, { kind, role, members } = {}) {
    const info = this.infoOf(name);
    if (kind) info.kind = kind;
    if (role !== undefined) info.role = role;
    if (Array.isArray(members)) {
      for (const m of members) this.addPerson(m.id, m.name);
      const me = members.find((m) => this.isOwn(m.id));
      if (me?.role && role === undefined) info.role = me.role;
      if (info.kind === "direct") {
        const other = members.find((m) => !this.isOwn(m.id));
        if (other) info.peer = { id: other.id, name: other.name };
      }
    }
    return info;
  }

  /** "public", "private" or "direct" (a room we know nothing of is public, as in v1). */
  kindOf(name) {
    return this.info.get(name)?.kind ?? (name.startsWith("dm:") ? "direct" : "public");
  }

  /** What the room list and header call a room: a direct room by the other user's name. */
  labelOf(name) {
    if (this.kindOf(name) !== "direct") return name;
    return this.info.get(name)?.peer?.name ?? this.#dmPeerFromMessages(name)?.name ?? "Direct message";
  }

  /** The other user of a direct room, as far as known. */
  peerOf(name) {
    return this.info.get(name)?.peer ?? this.#dmPeerFromMessages(name);
  }

  #dmPeerFromMessages(name) {
    const room = this.room(name);
    if (!room) return null;
    for (const [id, n] of room.members) if (!this.isOwn(id)) return { id, name: n };
    for (const m of room.messages.values()) if (!this.isOwn(m.user_id)) return { id: m.user_id, name: m.user };
    return null;
  }

  addPerson(id, name) {
    if (typeof id !== "string" || typeof name !== "string" || !id || this.isOwn(id)) return;
    this.people.set(id, name);
  }

  /** The user's rank in a room: 4 server admin, 3 owner, 2 admin, 1 member, 0 none. */
  rankIn(name) {
    if (this.serverAdmin) return SERVER_ADMIN_RANK;
    return RANK[this.info.get(name)?.role] ?? 0;
  }

  /** A user's role in a room as far as known (the REST roster), "member" otherwise. */
  roleOf(name, userId) {
    return this.room(name)?.roster?.members.get(userId)?.role ?? "member";
  }

  /** May the user kick, ban or mute `userId` in the room? (The server decides; this only shows the menu.) */
  canModerate(name, userId) {
    if (this.isOwn(userId)) return false;
    if (this.kindOf(name) === "direct" && !this.serverAdmin) return false;
    const rank = this.rankIn(name);
    return rank >= RANK.admin && rank > (RANK[this.roleOf(name, userId)] ?? RANK.member);
  }

  canInvite(name) {
    return this.kindOf(name) === "private" && this.rankIn(name) >= RANK.admin;
  }

  /** The REST member list of a room (all its pages). */
  setRoster(name, members, banned) {
    const room = this.room(name);
    if (!room) return;
    room.roster = { members: new Map(), banned: Array.isArray(banned) ? banned : null }; // null: the server did not say
    for (const m of members) {
      room.roster.members.set(m.id, { name: m.name, role: m.role ?? "member", muted_until: m.muted_until ?? null });
      this.addPerson(m.id, m.name);
      if (this.isOwn(m.id)) {
        this.infoOf(name).role = m.role ?? "member";
        room.mutedUntil = m.muted_until ? Date.parse(m.muted_until) || 0 : 0;
      }
    }
    for (const b of room.roster.banned ?? []) this.addPerson(b.id, b.name);
    this.changed("members", "rooms");
  }

  // ---------------------------------------------------- unread and mentions

  /** Does this content mention the user ("@" and their display name, ASCII case ignored)? */
  mentionsMe(content) {
    const name = this.user?.name;
    return Boolean(name) && asciiLower(content).includes(`@${asciiLower(name)}`);
  }

  /**
   * The room's unread messages and mentions: {unread, mentions}. Messages the
   * page holds after the marker are counted here; those the server counted
   * (base) stand for what the page does not hold.
   */
  counts(room) {
    const r = room.readSeq;
    const b = room.base;
    let unread = 0;
    let mentions = 0;
    let from = r; // messages held with seq > from are counted here
    if (b && r < b.upTo && (r + 1 < room.heldFrom || (r === b.readSeq && !settled(room)))) {
      // The server's numbers cover (r, upTo]. If the marker moved since they
      // were given they are too high; app.js then asks for fresh ones (onRead).
      unread = b.unread;
      mentions = b.mentions;
      from = b.upTo;
    }
    if (room.lastSeq > from) {
      for (const m of room.messages.values()) {
        if (m.seq <= from || m.deleted || this.isOwn(m.user_id)) continue;
        unread += 1;
        if (this.mentionsMe(m.content)) mentions += 1;
      }
    }
    return { unread: Math.min(unread, COUNT_CAP), mentions: Math.min(mentions, COUNT_CAP) };
  }

  /** The user has read a room up to `seq` (here, or on another connection: a `read` frame). */
  setRead(name, seq) {
    const room = this.room(name);
    if (!room || !(seq > room.readSeq)) return false;
    room.readSeq = seq;
    this.changed("rooms");
    return true;
  }

  /**
   * A `read` frame: another connection of the user moved the marker. Returns
   * "resync" when neither the page nor the server's last numbers can say what
   * is unread after it (rejoin for fresh numbers).
   */
  onRead(frame) {
    const room = this.room(frame.room);
    if (!room || !this.setRead(frame.room, frame.seq)) return null;
    const b = room.base;
    return b && room.readSeq < b.upTo && room.readSeq + 1 < room.heldFrom ? "resync" : null;
  }

  /** A room of /api/me/rooms: what it says and, until the room is joined, its counts. */
  onMyRoom(r) {
    this.setInfo(r.name, { kind: r.kind, role: r.role ?? null, members: r.members });
    const room = this.room(r.name);
    if (room && !room.joined && Number.isInteger(r.read_seq)) {
      room.base = { readSeq: r.read_seq, upTo: r.last_seq ?? r.read_seq, unread: r.unread ?? 0, mentions: r.mentions ?? 0 };
      room.readSeq = Math.max(room.readSeq, r.read_seq);
    } else if (room && Number.isInteger(r.read_seq)) {
      room.readSeq = Math.max(room.readSeq, r.read_seq);
    }
    this.changed("rooms");
  }

  /** The connection dropped: nothing is joined any more (typing and presence will be re-learned). */
  disconnected() {
    for (const room of this.rooms.values()) {
      room.joined = false;
      room.typing.clear();
    }
    this.changed("rooms", "members", "typing");
  }

  // ---------------------------------------------------------- server frames

  /**
   * Returns {reload, read}: reload when the server could not replay the gap
   * (recovered: false); read, a seq to mark read (a public room never read:
   * what is there when it is first opened is not "unread").
   */
  onJoined(frame) {
    const room = this.room(frame.room);
    if (!room) return { reload: false, read: 0 };
    const first = !room.synced;
    const L = frame.last_seq;
    room.joined = true;
    room.removed = null;
    room.replayUntil = L;
    room.members = new Map((frame.members ?? []).map((m) => [m.id, m.name]));
    for (const m of frame.members ?? []) this.addPerson(m.id, m.name);
    const outcome = { reload: false, read: 0 };
    const reset = frame.recovered === false && room.lastSeq > L; // the server's data was reset: our marker means nothing there
    if (reset) {
      room.readSeq = 0;
      room.read.wanted = 0;
      room.read.sent = 0;
    }
    if (frame.recovered === false) {
      // Nothing was replayed: drop the local copy and start again from history.
      room.messages.clear();
      room.byId.clear();
      room.events.clear();
      room.atStart = false;
      room.lastSeq = L;
      room.heldFrom = L + 1;
      outcome.reload = true;
    } else if (first) {
      room.heldFrom = Math.max(1, L - JOIN_HISTORY + 1); // the replay: the newest JOIN_HISTORY events
    }
    if (Number.isInteger(frame.read_seq)) {
      this.readMarkers = true;
      room.base = { readSeq: frame.read_seq, upTo: L, unread: frame.unread ?? 0, mentions: frame.mentions ?? 0 };
      room.readSeq = Math.max(room.readSeq, frame.read_seq);
      if (first && frame.read_seq === 0 && L > room.readSeq && this.kindOf(room.name) === "public") {
        room.readSeq = L;
        outcome.read = L;
      }
    } else if (first) {
      room.readSeq = Math.max(room.readSeq, L); // a server without read markers: the first replay is not unread
    }
    room.synced = true;
    if (this.current === room.name && room.divider === undefined) room.divider = this.dividerFor(room);
    settleChanges(room);
    this.changed("rooms", "messages", "members");
    return outcome;
  }

  /** A live or replayed message. Replays may overlap what we have: de-duplicated by seq. */
  onMessage(frame) {
    const room = this.room(frame.room);
    if (!room) return;
    room.lastSeq = Math.max(room.lastSeq, frame.seq);
    settleChanges(room);
    if (room.typing.delete(frame.user_id)) this.changed("typing");
    const held = room.messages.get(frame.seq);
    if (held) {
      // Already shown (an own send, from its ack). A replay may bring it as a tombstone.
      if (frame.deleted && held.id === frame.id && !held.deleted) {
        tombstone(held);
        this.changed("messages");
      }
      return;
    }
    putMessage(room, toMessage(frame));
    this.addPerson(frame.user_id, frame.user);
    this.changed("messages", "rooms");
  }

  /**
   * A history page (oldest first), fetched with `before` (undefined: the
   * newest page). A page holds every message below `before` down to its
   * oldest, so what is held stays gap-free.
   */
  addHistory(name, messages, { before, atStart = false } = {}) {
    const room = this.room(name);
    if (!room) return;
    // Pages carry messages in their current state; ones already held are kept
    // (the room's stream keeps them current).
    for (const m of messages) if (!room.messages.has(m.seq)) putMessage(room, toMessage(m));
    if (before === undefined || before >= room.heldFrom) {
      if (atStart) room.heldFrom = 1;
      else if (messages.length) room.heldFrom = Math.min(room.heldFrom, messages[0].seq);
    }
    this.changed("messages", "rooms");
  }

  /**
   * A membership event (docs/protocol.md 7b): a system line in the timeline,
   * and what it changes for the user (role, mute). Returns true when it is new.
   */
  onRoomEvent(frame) {
    const room = this.room(frame.room);
    if (!room || room.events.has(frame.seq)) return false;
    room.lastSeq = Math.max(room.lastSeq, frame.seq);
    settleChanges(room);
    room.events.set(frame.seq, { ...frame, date: new Date(frame.timestamp) });
    this.addPerson(frame.user_id, frame.user);
    if (frame.member) this.addPerson(frame.member.id, frame.member.name);
    const info = this.infoOf(room.name);
    const aboutMe = frame.member && this.isOwn(frame.member.id);
    if (frame.type === "room_created") {
      this.setInfo(room.name, { kind: frame.kind, members: frame.members });
    } else if (frame.type === "member_added" && aboutMe) {
      info.role = frame.role ?? "member";
    } else if (frame.type === "member_removed" && aboutMe) {
      room.lastRemoval = { reason: frame.reason, by: frame.user, byId: frame.user_id };
      // Live (not replayed): `left` follows, and the room takes nothing more from this connection.
      if (frame.seq > room.replayUntil) room.joined = false;
    } else if (frame.type === "member_muted" && aboutMe) {
      room.mutedUntil = frame.until ? Date.parse(frame.until) || 0 : 0;
    }
    this.changed("messages", "rooms", "members");
    return true;
  }

  /**
   * `left` with a reason: the server took this connection out of the room.
   * Returns {reason, by} (by: who did it, when the event said), or null for
   * the answer to an own `leave`.
   */
  onLeft(frame) {
    const room = this.room(frame.room);
    if (!room || !frame.reason) return null;
    return this.#removedFrom(room, frame.reason);
  }

  /** `room_removed`: the user is no longer a member (on any connection). Null when already known. */
  onRoomRemoved(frame) {
    const room = this.room(frame.room);
    if (this.info.has(frame.room)) this.info.get(frame.room).role = null;
    if (!room || room.removed) return null;
    return this.#removedFrom(room, frame.reason ?? "removed");
  }

  #removedFrom(room, reason) {
    if (room.removed) {
      room.joined = false;
      return null;
    }
    const by = room.lastRemoval && room.lastRemoval.reason === reason && !this.isOwn(room.lastRemoval.byId) ? room.lastRemoval.by : null;
    room.removed = { reason, by };
    room.joined = false;
    room.typing.clear();
    room.members.clear();
    if (this.info.has(room.name) && this.kindOf(room.name) !== "public") this.info.get(room.name).role = null;
    this.changed("rooms", "messages", "members", "typing");
    return room.removed;
  }

  /** `room_added`: the user was invited, or a direct room with them was opened. True when the room is not open here. */
  onRoomAdded(frame) {
    this.setInfo(frame.room, { kind: frame.kind });
    if (frame.by) this.addPerson(frame.by.id, frame.by.name);
    if (frame.kind === "direct" && frame.by && !this.isOwn(frame.by.id)) {
      const info = this.infoOf(frame.room);
      if (!info.peer) info.peer = { id: frame.by.id, name: frame.by.name };
    }
    this.changed("rooms");
    const room = this.room(frame.room);
    return !room || Boolean(room.removed);
  }

  /**
   * An `edited`, `deleted` or `reaction` frame (docs/protocol.md 7a): applied
   * in seq order, once; one whose target is not held is ignored (a history
   * page brings that message in its current state).
   */
  onChange(frame) {
    const room = this.room(frame.room);
    if (!room || !(frame.seq > room.lastSeq)) return;
    room.lastSeq = frame.seq;
    const m = room.byId.get(frame.target);
    if (m) applyChange(m, frame);
    settleChanges(room);
    this.changed("messages");
  }

  /** The ack of an own send (the pending copy becomes the stored message at once) or change. */
  onAck(frame) {
    const change = this.findChange(frame.ref);
    if (change) {
      if (frame.unchanged) change.room.changes = change.room.changes.filter((c) => c !== change.change);
      else {
        change.change.status = "acked";
        change.change.ackSeq = frame.seq;
        settleChanges(change.room);
      }
      this.changed("messages");
      return;
    }
    for (const room of this.rooms.values()) {
      const index = room.pending.findIndex((p) => p.ref === frame.ref);
      if (index < 0) continue;
      const [sent] = room.pending.splice(index, 1);
      const target = this.room(frame.room) ?? room;
      if (!target.messages.has(frame.seq)) {
        putMessage(target, toMessage({
          seq: frame.seq,
          id: frame.id,
          user: this.user?.name ?? "",
          user_id: this.user?.id ?? "",
          content: sent.content,
          timestamp: frame.timestamp,
          reply_to: sent.reply_to,
        }));
      }
      this.changed("messages");
      return;
    }
  }

  onPresence(frame) {
    const room = this.room(frame.room);
    if (!room) return;
    for (const u of frame.joined ?? []) {
      room.members.set(u.id, u.name);
      this.addPerson(u.id, u.name);
    }
    for (const u of frame.left ?? []) {
      room.members.delete(u.id);
      room.typing.delete(u.id);
    }
    this.changed("members", "rooms", "typing");
  }

  onTyping(frame) {
    const room = this.room(frame.room);
    if (!room || this.isOwn(frame.user_id)) return;
    room.typing.set(frame.user_id, { name: frame.user, until: Date.now() + TYPING_SHOWN_MS });
    this.changed("typing");
  }

  /** Drops expired typing marks; true if any were dropped. */
  expireTyping(now = Date.now()) {
    let dropped = false;
    for (const room of this.rooms.values()) {
      for (const [id, t] of room.typing) {
        if (t.until <= now) {
          room.typing.delete(id);
          dropped = true;
        }
      }
    }
    if (dropped) this.changed("typing");
    return dropped;
  }

  // ------------------------------------------------------------ own sends

  addPending(name, ref, content, replyTo = null) {
    const room = this.room(name);
    if (!room) return null;
    const pending = { ref, n: nextOrder++, content, reply_to: replyTo, status: "pending", error: null };
    room.pending.push(pending);
    this.changed("messages");
    return pending;
  }

  findPending(ref) {
    for (const room of this.rooms.values()) {
      const pending = room.pending.find((p) => p.ref === ref);
      if (pending) return { room, pending };
    }
    return null;
  }

  setPendingStatus(ref, status, error = null) {
    const found = this.findPending(ref);
    if (!found) return false;
    found.pending.status = status;
    found.pending.error = error;
    this.changed("messages");
    return true;
  }

  discardPending(ref) {
    const found = this.findPending(ref);
    if (!found) return;
    found.room.pending = found.room.pending.filter((p) => p !== found.pending);
    this.changed("messages");
  }

  // ---------------------------------------------------------- own changes

  /** An own edit, delete, react or unreact, shown at once and pending until its event is in the stream. */
  addChange(name, ref, change) {
    const room = this.room(name);
    if (!room || !room.byId.has(change.id)) return null;
    const entry = { ref, n: nextOrder++, kind: change.kind, id: change.id, content: change.content ?? null, emoji: change.emoji ?? null, status: "pending", ackSeq: 0 };
    room.changes.push(entry);
    this.changed("messages");
    return entry;
  }

  findChange(ref) {
    if (!ref) return null;
    for (const room of this.rooms.values()) {
      const change = room.changes.find((c) => c.ref === ref);
      if (change) return { room, change };
    }
    return null;
  }

  dropChange(ref) {
    const found = this.findChange(ref);
    if (!found) return null;
    found.room.changes = found.room.changes.filter((c) => c !== found.change);
    this.changed("messages");
    return found.change;
  }

  /** Own sends and changes not acked yet, in the order they were made: resent after a reconnect. */
  unacked() {
    const out = [];
    for (const room of this.rooms.values()) {
      for (const p of room.pending) if (p.status === "pending") out.push({ kind: "send", ref: p.ref, n: p.n });
      for (const c of room.changes) if (c.status === "pending") out.push({ kind: c.kind, ref: c.ref, n: c.n });
    }
    return out.sort((a, b) => a.n - b.n);
  }

  /** The user's newest message in a room that can still be edited (Up arrow), or null. */
  lastOwnMessage(name) {
    const room = this.room(name);
    if (!room) return null;
    let last = null;
    for (const m of room.messages.values()) {
      if (this.isOwn(m.user_id) && !m.deleted && !isBeingDeleted(room, m.id) && (!last || m.seq > last.seq)) last = m;
    }
    return last;
  }

  /**
   * What to show for a message: its stored state with the user's own changes
   * that are not in the stream yet laid over it.
   * {content, edited, deleted, deleting, saving, reactions: [{emoji, count, mine}]}
   */
  shown(room, m) {
    const me = this.user?.id;
    let content = m.content;
    let saving = false;
    let deleting = false;
    const mine = new Map(); // emoji -> wanted (the last own change wins)
    for (const c of room.changes) {
      if (c.id !== m.id) continue;
      if (c.kind === "edit") {
        content = c.content;
        saving = true;
      } else if (c.kind === "delete") deleting = true;
      else mine.set(c.emoji, c.kind === "react");
    }
    if (m.deleted) return { content: "", edited: false, deleted: true, deleting: false, saving: false, reactions: [] };
    const reactions = [];
    for (const [emoji, r] of m.reactions) {
      const has = r.users.has(me);
      const wanted = mine.has(emoji) ? mine.get(emoji) : has;
      const count = r.users.size + r.extra + (wanted === has ? 0 : wanted ? 1 : -1);
      if (count > 0) reactions.push({ emoji, count, mine: wanted });
    }
    for (const [emoji, wanted] of mine) if (wanted && !m.reactions.has(emoji)) reactions.push({ emoji, count: 1, mine: true });
    return { content, edited: Boolean(m.edited_at) || saving, deleted: false, deleting, saving, reactions };
  }

  totalUnread() {
    let n = 0;
    for (const room of this.rooms.values()) if (!room.removed) n += this.counts(room).unread;
    return n;
  }
}

/** Joined, and the replay that follows `joined` has arrived. */
export function settled(room) {
  return room.joined && room.lastSeq >= room.replayUntil;
}

/**
 * Where the next older history page ends (its `before`), or null when there is
 * nothing older. A room whose replay held only changes shows no message yet:
 * its newest page is then the one before lastSeq + 1.
 */
export function olderCursor(room) {
  if (room.atStart) return null;
  const oldest = oldestSeq(room);
  if (oldest !== null) return oldest > 1 ? oldest : null;
  return room.lastSeq > 0 ? room.lastSeq + 1 : null;
}

/** The lowest seq shown in a room, or null when it shows none. */
export function oldestSeq(room) {
  let oldest = null;
  for (const seq of room.messages.keys()) if (oldest === null || seq < oldest) oldest = seq;
  return oldest;
}

let nextOrder = 1; // the order of own sends and changes, for resending them in order

/** Message state, from a live/replayed frame or a history object (which carries current state). */
function toMessage(m) {
  const reactions = new Map(); // emoji -> {users: Set of user ids, extra: reactors not named}
  for (const r of Array.isArray(m.reactions) ? m.reactions : []) {
    const users = new Set(Array.isArray(r.users) ? r.users : []);
    const extra = Math.max(0, (Number.isInteger(r.count) ? r.count : users.size) - users.size);
    if (users.size + extra > 0) reactions.set(r.emoji, { users, extra });
  }
  const message = {
    seq: m.seq,
    id: m.id,
    user: m.user,
    user_id: m.user_id,
    content: m.content,
    timestamp: m.timestamp,
    date: new Date(m.timestamp),
    reply_to: m.reply_to ?? null,
    edited_at: m.edited_at ?? null,
    deleted: m.deleted === true,
    reactions,
    rev: 0, // bumped on every change: part of the view's reconcile signature
  };
  if (message.deleted) tombstone(message);
  return message;
}

function putMessage(room, m) {
  const old = room.messages.get(m.seq);
  if (old) room.byId.delete(old.id);
  room.messages.set(m.seq, m);
  room.byId.set(m.id, m);
}

function tombstone(m) {
  m.deleted = true;
  m.content = "";
  m.edited_at = null;
  m.reactions = new Map();
  m.rev += 1;
}

/** docs/protocol.md 7a, "How a client keeps its view right": replacements and set changes, so idempotent. */
function applyChange(m, frame) {
  if (m.deleted) return; // a deleted message stays a tombstone (later edits and reactions change nothing)
  if (frame.type === "deleted") {
    tombstone(m);
  } else if (frame.type === "edited") {
    m.content = frame.content;
    m.edited_at = frame.timestamp;
    m.rev += 1;
  } else if (frame.type === "reaction") {
    let r = m.reactions.get(frame.emoji);
    if (frame.added) {
      if (!r) m.reactions.set(frame.emoji, (r = { users: new Set(), extra: 0 }));
      r.users.add(frame.user_id);
    } else if (r) {
      // Removing someone a history page did not name (it names the first 5) takes one of the unnamed.
      if (!r.users.delete(frame.user_id) && r.extra > 0) r.extra -= 1;
      if (r.users.size + r.extra === 0) m.reactions.delete(frame.emoji);
    }
    m.rev += 1;
  }
}

/** Own changes whose event the room's stream has delivered are done: the stored state shows them. */
function settleChanges(room) {
  if (room.changes.some((c) => c.status === "acked" && c.ackSeq <= room.lastSeq)) {
    room.changes = room.changes.filter((c) => !(c.status === "acked" && c.ackSeq <= room.lastSeq));
  }
}

function isBeingDeleted(room, id) {
  return room.changes.some((c) => c.id === id && c.kind === "delete");
}

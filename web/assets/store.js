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

function newRoom(name) {
  return {
    name,
    joined: false, // a `joined` frame arrived on the current connection
    replayUntil: 0, // the joined frame's last_seq: the replay that follows it ends there
    synced: false, // ever joined: a rejoin then uses `since`
    messages: new Map(), // seq -> message, shown
    lastSeq: 0, // highest seq received from the room's stream: the next `since`
    unreadAfter: Infinity, // live messages above this seq count as unread
    unread: 0,
    loadingOlder: false,
    olderError: null,
    members: new Map(), // user id -> name
    typing: new Map(), // user id -> {name, until}
    pending: [], // own sends without an ack: {ref, content, status: "pending"|"failed", error}
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

  view(name) {
    this.current = name;
    const room = this.room(name);
    if (room) {
      room.unread = 0;
      if (room.synced) room.unreadAfter = Math.max(room.unreadAfter, room.lastSeq);
    }
    this.changed("rooms", "messages", "members", "typing");
  }

  setPageVisible(visible) {
    this.pageVisible = visible;
    if (visible && this.current) this.view(this.current);
  }

  setDirectory(rooms) {
    this.directory = new Map(rooms.map((r) => [r.name, { last_seq: r.last_seq, online: r.online }]));
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

  /** Returns "reload" when the server could not replay the gap (recovered: false). */
  onJoined(frame) {
    const room = this.room(frame.room);
    if (!room) return null;
    room.joined = true;
    room.replayUntil = frame.last_seq;
    room.members = new Map((frame.members ?? []).map((m) => [m.id, m.name]));
    let outcome = null;
    if (frame.recovered === false) {
      // Nothing was replayed: drop the local copy and start again from history.
      room.messages.clear();
      room.lastSeq = frame.last_seq;
      room.unreadAfter = Math.min(room.unreadAfter, frame.last_seq);
      outcome = "reload";
    }
    if (!room.synced) {
      room.synced = true;
      room.unreadAfter = frame.last_seq; // the initial replay is not "unread"
    }
    this.changed("rooms", "messages", "members");
    return outcome;
  }

  /** A live or replayed message. Replays may overlap what we have: de-duplicated by seq. */
  onMessage(frame) {
    const room = this.room(frame.room);
    if (!room) return;
    room.lastSeq = Math.max(room.lastSeq, frame.seq);
    if (room.typing.delete(frame.user_id)) this.changed("typing");
    if (room.messages.has(frame.seq)) return;
    room.messages.set(frame.seq, toMessage(frame));
    const seen = this.current === room.name && this.pageVisible;
    if (frame.seq > room.unreadAfter && !this.isOwn(frame.user_id) && !seen) room.unread += 1;
    if (seen) room.unreadAfter = Math.max(room.unreadAfter, frame.seq);
    this.changed("messages", "rooms");
  }

  /** Older messages from a history page (never counted as unread). */
  addHistory(name, messages) {
    const room = this.room(name);
    if (!room) return;
    for (const m of messages) if (!room.messages.has(m.seq)) room.messages.set(m.seq, toMessage(m));
    this.changed("messages");
  }

  /** The ack of an own send: the pending copy becomes the stored message at once. */
  onAck(frame) {
    for (const room of this.rooms.values()) {
      const index = room.pending.findIndex((p) => p.ref === frame.ref);
      if (index < 0) continue;
      const [sent] = room.pending.splice(index, 1);
      const target = this.room(frame.room) ?? room;
      if (!target.messages.has(frame.seq)) {
        target.messages.set(frame.seq, {
          seq: frame.seq,
          id: frame.id,
          user: this.user?.name ?? "",
          user_id: this.user?.id ?? "",
          content: sent.content,
          timestamp: frame.timestamp,
          date: new Date(frame.timestamp),
        });
      }
      this.changed("messages");
      return;
    }
  }

  onPresence(frame) {
    const room = this.room(frame.room);
    if (!room) return;
    for (const u of frame.joined ?? []) room.members.set(u.id, u.name);
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

  addPending(name, ref, content) {
    const room = this.room(name);
    if (!room) return null;
    const pending = { ref, content, status: "pending", error: null };
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

  totalUnread() {
    let n = 0;
    for (const room of this.rooms.values()) n += room.unread;
    return n;
  }
}

/** Joined, and the replay that follows `joined` has arrived. */
export function settled(room) {
  return room.joined && room.lastSeq >= room.replayUntil;
}

/** The lowest seq shown in a room, or null when it shows none. */
export function oldestSeq(room) {
  let oldest = null;
  for (const seq of room.messages.keys()) if (oldest === null || seq < oldest) oldest = seq;
  return oldest;
}

function toMessage(m) {
  return {
    seq: m.seq,
    id: m.id,
    user: m.user,
    user_id: m.user_id,
    content: m.content,
    timestamp: m.timestamp,
    date: new Date(m.timestamp),
  };
}

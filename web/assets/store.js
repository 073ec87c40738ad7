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
    byId: new Map(), // message id -> the same message objects: the targets of changes and replies
    lastSeq: 0, // highest seq received from the room's stream (messages and changes): the next `since`
    atStart: false, // a history page said there is nothing older (next_before: null)
    unreadAfter: Infinity, // live messages above this seq count as unread
    unread: 0,
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
      room.byId.clear();
      room.atStart = false;
      room.lastSeq = frame.last_seq;
      room.unreadAfter = Math.min(room.unreadAfter, frame.last_seq);
      outcome = "reload";
    }
    if (!room.synced) {
      room.synced = true;
      room.unreadAfter = frame.last_seq; // the initial replay is not "unread"
    }
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
    const seen = this.current === room.name && this.pageVisible;
    if (frame.seq > room.unreadAfter && !this.isOwn(frame.user_id) && !seen) room.unread += 1;
    if (seen) room.unreadAfter = Math.max(room.unreadAfter, frame.seq);
    this.changed("messages", "rooms");
  }

  /** Older messages from a history page (never counted as unread). */
  addHistory(name, messages) {
    const room = this.room(name);
    if (!room) return;
    // Pages carry messages in their current state; ones already held are kept
    // (the room's stream keeps them current).
    for (const m of messages) if (!room.messages.has(m.seq)) putMessage(room, toMessage(m));
    this.changed("messages");
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
    for (const room of this.rooms.values()) n += room.unread;
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

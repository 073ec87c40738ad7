// confab web UI: wires the REST client, the WebSocket connection, the store
// and the view together. Protocol: docs/protocol.md.

import {
  allPages, createRoom, invite, listRooms, login, moderate, mute, myRooms, openDm, peekToken, removeMember, roomMembers, roomMessages, socketUrl, tokenStore,
} from "./api.js";
import { Connection } from "./connection.js";
import { duration } from "./dom.js";
import { View } from "./render.js";
import { JOIN_HISTORY, olderCursor, roomNameError, settled, Store } from "./store.js";

const OPEN_ROOMS_KEY = "confab.rooms";
const LAST_ROOM_KEY = "confab.lastRoom";
const DEFAULT_ROOM = "general";
const PAGE_SIZE = 50; // messages per history page
const TYPING_EVERY_MS = 2000; // at most one typing frame per room this often
const DIRECTORY_EVERY_MS = 15000; // refresh /api/rooms (online counts, new rooms)
const MAX_SEND_BYTES = 60000; // below the server's default max_frame_bytes (65536): a bigger frame would close the socket
const READ_EVERY_MS = 1000; // at most one `read` frame per room this often
const ROSTER_DELAY_MS = 250; // membership events in a burst: one member-list fetch

const store = new Store();
let connection = null;
let directoryTimer = 0;
const typingSentAt = new Map(); // room -> ms
const rosterTimers = new Map(); // room -> timer of a pending member-list fetch
const refPrefix = randomId();
let refCounter = 0;

// ------------------------------------------------------------ user actions

const actions = {
  async signInAsGuest(name) {
    try {
      const { token, user } = await login(name);
      startSession(token, user);
      return null;
    } catch (e) {
      if (e.code === "forbidden") return "Guest login is turned off on this server. Sign in with a token instead.";
      return e.message;
    }
  },

  async signInWithToken(token) {
    const claims = peekToken(token);
    if (!claims?.sub) return "That does not look like a confab token.";
    try {
      await listRooms(token); // verifies the token
    } catch (e) {
      return e.status === 401 ? "That token is not valid, or it has expired." : e.message;
    }
    startSession(token, { id: claims.sub, name: claims.name ?? claims.sub });
    return null;
  },

  signOut() {
    endSession();
    localStorage.removeItem(OPEN_ROOMS_KEY);
    localStorage.removeItem(LAST_ROOM_KEY);
    history.replaceState(null, "", location.pathname);
    view.showLogin();
  },

  /** Opens (joins) a room if needed and shows it, through the URL: #/room/NAME. */
  go(name) {
    const hash = roomHash(name);
    if (location.hash !== hash) location.hash = hash;
    else showRoom(name);
  },

  /** Leaves a public room (this page stops following it), or closes a room the user was taken out of. */
  leave(name) {
    const room = store.room(name);
    if (room && !room.removed) connection?.send({ type: "leave", room: name });
    closeRoom(name);
  },

  /** Leaves a private room for good: the user removes themselves (docs/protocol.md 7b). */
  async leavePrivate(name) {
    try {
      await removeMember(store.token, name, store.user.id);
    } catch (e) {
      return failed("Couldn't leave the room", e);
    }
    closeRoom(name);
    return true;
  },

  /** After a kick from a public room: join it again. */
  rejoin(name) {
    const room = store.room(name);
    if (!room) return;
    room.removed = null;
    saveRooms();
    connection?.send(joinFrame(room));
    store.changed("rooms", "messages");
  },

  /** POST /api/rooms, then invites `invitees` ([{id, name}]) and opens the room. An error text, or null. */
  async createRoom(name, kind, invitees = []) {
    let created;
    try {
      created = await createRoom(store.token, name, kind);
    } catch (e) {
      if (e.code === "room_exists") return `“${name}” is taken: pick another name.`;
      if (e.code === "invalid_room") return "That name can't be used for a room.";
      return e.message;
    }
    store.setInfo(name, { kind: created?.room?.kind ?? kind, role: created?.room?.role ?? "owner" });
    actions.go(name);
    const refused = [];
    for (const person of invitees) {
      try {
        await invite(store.token, name, person.id, person.name);
      } catch (e) {
        refused.push(`${person.name ?? person.id} (${e.message})`);
      }
    }
    if (refused.length) view.toast(`Couldn't invite ${refused.join(", ")}`);
    return null;
  },

  /** Invites a user by id into a room. An error text, or null. */
  async invite(room, userId, name) {
    try {
      await invite(store.token, room, userId, name);
    } catch (e) {
      if (e.code === "forbidden") return "Only the room's owner and admins can invite.";
      return e.message;
    }
    loadRoster(room);
    return null;
  },

  /** Opens (or finds) the direct room with a user and shows it. An error text, or null. */
  async dm(userId, name) {
    if (userId === store.user?.id) return "That's you.";
    let answer;
    try {
      answer = await openDm(store.token, userId, name);
    } catch (e) {
      return e.message;
    }
    const room = answer?.room;
    if (!room?.name) return "The server did not say which room.";
    store.setInfo(room.name, { kind: "direct", members: room.members });
    if (!store.infoOf(room.name).peer && name) store.infoOf(room.name).peer = { id: userId, name };
    actions.go(room.name);
    return null;
  },

  /** kick, ban, unban ({action}) or mute ({action: "mute", seconds}) a user in a room; true when done. */
  async moderate(room, userId, action, seconds = 0) {
    try {
      const name = store.people.get(userId);
      if (action === "mute") await mute(store.token, room, userId, seconds, name);
      else await moderate(store.token, room, userId, action, name);
    } catch (e) {
      return failed(`Couldn't ${action} ${store.people.get(userId) ?? userId}`, e);
    }
    loadRoster(room);
    return true;
  },

  loadRoster(room) {
    loadRoster(room);
  },

  /** Shows the message at once as pending; the ack (matched by ref) marks it sent. `replyTo`: a message id. */
  send(room, content, replyTo = null) {
    const ref = newRef();
    if (!store.addPending(room, ref, content, replyTo)) return false;
    transmit(ref);
    return true;
  },

  /** Own changes (docs/protocol.md 7a): shown at once, pending until acked, resent after a reconnect with the same ref. */
  edit(room, id, content) {
    return change(room, { kind: "edit", id, content });
  },

  remove(room, id) {
    return change(room, { kind: "delete", id });
  },

  /** Adds the user's reaction, or takes it away when `on` is false. */
  react(room, id, emoji, on) {
    return change(room, { kind: on ? "react" : "unreact", id, emoji });
  },

  /** Resends a failed message with its original ref: the server never stores a ref twice. */
  retry(ref) {
    if (store.setPendingStatus(ref, "pending")) transmit(ref);
  },

  discard(ref) {
    store.discardPending(ref);
  },

  typing(room) {
    const now = Date.now();
    if (now - (typingSentAt.get(room) ?? 0) < TYPING_EVERY_MS || !store.room(room)?.joined) return;
    if (connection?.send({ type: "typing", room })) typingSentAt.set(room, now);
  },

  /** The page before the oldest message shown, over REST. */
  async loadOlder(name, { force = false } = {}) {
    const room = store.room(name);
    if (!room || room.loadingOlder || (room.olderError && !force)) return;
    const before = olderCursor(room);
    if (before === null) return;
    await fetchPage(room, { before });
  },

  retryNow() {
    connection?.retryNow();
  },
};

const view = new View(store, actions);

// ---------------------------------------------------------------- session

function startSession(token, user) {
  tokenStore.set(token);
  store.reset();
  store.pageVisible = !document.hidden;
  store.token = token;
  store.user = user;
  store.moderator = isModerator(peekToken(token));
  store.serverAdmin = isServerAdmin(peekToken(token));
  view.showChat();
  for (const name of savedRooms()) store.openRoom(name);
  routeFromHash();
  connection = new Connection({ url: () => socketUrl(store.token), onFrame, onState });
  connection.start();
  refreshDirectory();
  directoryTimer = setInterval(refreshDirectory, DIRECTORY_EVERY_MS);
}

function endSession() {
  connection?.stop();
  connection = null;
  clearInterval(directoryTimer);
  tokenStore.clear();
  typingSentAt.clear();
  for (const timer of rosterTimers.values()) clearTimeout(timer);
  rosterTimers.clear();
  for (const room of store.rooms.values()) clearTimeout(room.read.timer);
  store.reset();
  store.changed("all");
}

function expireSession() {
  endSession();
  view.showLogin("Your session has expired. Sign in again.");
}

/** After a failed connect: is it the token? (The browser hides the upgrade's 401.) */
async function checkToken() {
  const token = store.token;
  try {
    await listRooms(token);
  } catch (e) {
    if (e.status === 401 && store.token === token) expireSession();
  }
}

async function refreshDirectory() {
  const token = store.token;
  if (!token) return;
  try {
    const rooms = await allPages((after) => listRooms(token, { after }), "rooms", 10);
    if (store.token !== token) return;
    store.setDirectory(rooms);
    // The user's private and direct rooms are listed too: follow any not open yet.
    for (const r of rooms) if (r.kind === "private" || r.kind === "direct") followRoom(r.name);
    // Markers moved elsewhere that this page was not told of (a `read` frame
    // goes only to connections open at the time) catch up here.
    for (const r of rooms) if (Number.isInteger(r.read_seq)) catchUpMarker(r.name, r.read_seq);
  } catch (e) {
    if (e.status === 401 && store.token === token) expireSession();
  }
}

/**
 * GET /api/me/rooms (docs/protocol.md 7b): kinds, roles, direct rooms' other
 * user, unread counts; the private and direct rooms are opened (joined) so
 * their badges count live. Public rooms stay this page's choice.
 */
async function refreshMyRooms() {
  const token = store.token;
  if (!token) return;
  let rooms;
  try {
    rooms = await allPages((after) => myRooms(token, { after }), "rooms");
  } catch (e) {
    if (e.status === 401 && store.token === token) expireSession();
    return; // an older server (404): no private rooms
  }
  if (store.token !== token) return;
  for (const r of rooms) {
    if (r.kind === "private" || r.kind === "direct") followRoom(r.name);
    store.onMyRoom(r);
  }
  if (store.current) rosterIfNeeded(store.current); // its kind or the user's role may be known only now
}

/** The room in view gets its REST member list when it is private or direct, or the user moderates it. */
function rosterIfNeeded(name, delay = 0) {
  const room = store.room(name);
  if (!room || room.removed) return;
  if (room.roster || (store.current === name && (store.kindOf(name) !== "public" || store.rankIn(name) >= 2))) loadRoster(name, delay);
}

/** The user's marker in a room is at least `seq` (a REST answer said so). */
function catchUpMarker(name, seq) {
  const room = store.room(name);
  if (!room || !room.joined) return;
  if (store.onRead({ room: name, seq }) === "resync") connection?.send(joinFrame(room));
}

/** Opens and joins a room in the background (it shows in the list; the view stays where it is). */
function followRoom(name) {
  if (roomNameError(name)) return;
  const room = store.room(name);
  if (room && !room.removed) return;
  if (room) room.removed = null;
  const opened = store.openRoom(name);
  saveRooms();
  connection?.send(joinFrame(opened));
  store.changed("rooms", "messages");
}

function closeRoom(name) {
  typingSentAt.delete(name);
  clearTimeout(store.room(name)?.read.timer);
  store.closeRoom(name);
  saveRooms();
  const next = [...store.rooms.values()].find((r) => !r.removed)?.name ?? store.rooms.keys().next().value;
  if (next) actions.go(next);
  else {
    history.replaceState(null, "", location.pathname);
    localStorage.removeItem(LAST_ROOM_KEY);
    store.changed("rooms", "messages");
  }
}

/** Reports a failed REST action; false. */
function failed(what, e) {
  if (e.status === 401) checkToken();
  const why = e.code === "forbidden" ? "you are not allowed to" : e.code === "not_found" ? "they are not a member" : e.message;
  view.toast(`${what}: ${why}`);
  return false;
}

/** The REST member list (roles, mutes, bans) of a private or direct room, or of one the user moderates. */
function loadRoster(name, delay = 0) {
  clearTimeout(rosterTimers.get(name));
  rosterTimers.set(name, setTimeout(async () => {
    rosterTimers.delete(name);
    const token = store.token;
    const room = store.room(name);
    if (!token || !room || room.removed) return;
    if (store.kindOf(name) === "public" && store.rankIn(name) < 2) return;
    try {
      let banned = null;
      const members = await allPages(async (after) => {
        const page = await roomMembers(token, name, { after });
        if (Array.isArray(page?.banned)) banned = (banned ?? []).concat(page.banned);
        if (page?.kind) store.setInfo(name, { kind: page.kind });
        return page;
      }, "members");
      if (store.token === token) store.setRoster(name, members, banned);
    } catch {
      /* not a member (any more), or an older server: the presence list stays */
    }
  }, delay));
}

// ------------------------------------------------------------ read markers

/**
 * The room in view is read up to its newest seq: the badge goes at once, and
 * a `read` frame tells the server (at most one per READ_EVERY_MS per room,
 * only when the seq grew; the server passes it to the user's other pages).
 */
function markRead(room) {
  if (!room || room.removed || !settled(room) || !store.viewing(room.name)) return;
  const seq = room.lastSeq;
  if (seq > room.readSeq) store.setRead(room.name, seq);
  sendRead(room, seq);
}

function sendRead(room, seq) {
  if (!store.readMarkers) return;
  room.read.wanted = Math.max(room.read.wanted, seq);
  if (room.read.timer || room.read.wanted <= room.read.sent) return;
  const wait = room.read.sentAt + READ_EVERY_MS - Date.now();
  if (wait > 0) {
    room.read.timer = setTimeout(() => {
      room.read.timer = 0;
      if (store.room(room.name) === room) sendRead(room, room.read.wanted);
    }, wait);
    return;
  }
  if (!room.joined) return; // sent after the rejoin (onJoined marks again)
  if (connection?.send({ type: "read", room: room.name, seq: room.read.wanted })) {
    room.read.sent = room.read.wanted;
    room.read.sentAt = Date.now();
  }
}

store.subscribe((parts) => {
  if (parts.has("messages") || parts.has("rooms") || parts.has("all")) markRead(store.currentRoom);
});

// ------------------------------------------------------------------ rooms

const roomHash = (name) => `#/room/${name}`;

function savedRooms() {
  try {
    const names = JSON.parse(localStorage.getItem(OPEN_ROOMS_KEY) ?? "[]");
    return Array.isArray(names) ? names.filter((n) => typeof n === "string" && !roomNameError(n)) : [];
  } catch {
    return [];
  }
}

function saveRooms() {
  localStorage.setItem(OPEN_ROOMS_KEY, JSON.stringify([...store.rooms.values()].filter((r) => !r.removed).map((r) => r.name)));
}

function joinFrame(room) {
  return room.synced
    ? { type: "join", room: room.name, since: room.lastSeq } // recovery: everything after what we have
    : { type: "join", room: room.name, history: JOIN_HISTORY };
}

function showRoom(name) {
  const isNew = !store.room(name);
  const room = store.openRoom(name);
  if (isNew) {
    saveRooms();
    connection?.send(joinFrame(room));
  }
  store.view(name);
  rosterIfNeeded(name);
  localStorage.setItem(LAST_ROOM_KEY, name);
  if (location.hash !== roomHash(name)) history.replaceState(null, "", roomHash(name));
  view.focusComposer();
}

/** Deep links: #/room/NAME. Without one: the last room, or the default room. */
function routeFromHash() {
  if (!store.token) return;
  const match = /^#\/room\/(.*)$/.exec(location.hash);
  let name = null;
  if (match) {
    try {
      name = decodeURIComponent(match[1]);
    } catch {
      name = match[1];
    }
    const problem = roomNameError(name);
    if (problem) {
      view.toast(`Can't open “${name}”: ${problem}`);
      name = null;
    }
  }
  if (!name) {
    const last = localStorage.getItem(LAST_ROOM_KEY);
    name = last && !roomNameError(last) ? last : (store.rooms.keys().next().value ?? DEFAULT_ROOM);
  }
  showRoom(name);
}

/** One history page (newest when `before` is undefined) merged into the room. */
async function fetchPage(room, { before } = {}) {
  room.loadingOlder = true;
  room.olderError = null;
  store.changed("messages");
  try {
    const page = await roomMessages(store.token, room.name, { before, limit: PAGE_SIZE });
    if (store.room(room.name) === room) {
      if (page.next_before === null) room.atStart = true;
      store.addHistory(room.name, page.messages, { before, atStart: page.next_before === null });
    }
  } catch (e) {
    room.olderError = e.message;
    if (e.status === 401) checkToken();
  } finally {
    room.loadingOlder = false;
    store.changed("messages");
  }
}

// ------------------------------------------------------------------ sends

const newRef = () => `${refPrefix}-${++refCounter}`;

function transmit(ref) {
  const own = store.findChange(ref);
  if (own) {
    const { room, change: c } = own;
    const frame = { type: c.kind, room: room.name, id: c.id, ref };
    if (c.kind === "edit") frame.content = c.content;
    if (c.kind === "react" || c.kind === "unreact") frame.emoji = c.emoji;
    connection?.send(frame); // not connected: resent (same ref) after the reconnect
    return;
  }
  const found = store.findPending(ref);
  if (!found) return;
  const send = { type: "send", room: found.room.name, content: found.pending.content, ref };
  if (found.pending.reply_to) send.reply_to = found.pending.reply_to;
  const frame = JSON.stringify(send);
  if (new TextEncoder().encode(frame).length > MAX_SEND_BYTES) {
    store.setPendingStatus(ref, "failed", "this message is too large to send");
    return;
  }
  // Not connected: it stays pending and is resent (same ref) after the reconnect.
  connection?.send(frame);
}

function change(name, what) {
  const ref = newRef();
  if (!store.addChange(name, ref, what)) return false;
  transmit(ref);
  return true;
}

/** docs/protocol.md 7a: `"mod": true`, or a `roles` array holding "mod". (The server checks; this only shows Delete.) */
function isModerator(claims) {
  return claims?.mod === true || (Array.isArray(claims?.roles) && claims.roles.includes("mod"));
}

/** docs/protocol.md 7b: `"admin": true`, or a `roles` array holding "admin". (The server checks; this only shows the menu.) */
function isServerAdmin(claims) {
  return claims?.admin === true || (Array.isArray(claims?.roles) && claims.roles.includes("admin"));
}

// ------------------------------------------------------------- the socket

function onState(state, info) {
  store.connection = {
    state,
    retryAt: info.retryAt ?? 0,
    everOpen: store.connection.everOpen || state === "open",
  };
  if (state === "waiting") {
    store.disconnected();
    if (info.code === 1008 || !info.opened) checkToken();
  }
  store.changed("connection");
}

function onFrame(frame) {
  switch (frame.type) {
    case "welcome":
      store.user = frame.user;
      store.changed("user", "messages");
      // Rejoin every open room (with `since` where we have state), then
      // resend whatever was never acked (sends and changes, in the order
      // they were made), with the same refs.
      for (const room of store.rooms.values()) if (!room.removed) connection.send(joinFrame(room));
      for (const { ref } of store.unacked()) transmit(ref);
      refreshDirectory();
      refreshMyRooms();
      break;
    case "joined": {
      const outcome = store.onJoined(frame);
      const room = store.room(frame.room);
      if (!room) break;
      room.read.sent = Math.max(room.read.sent, frame.read_seq ?? 0);
      if (outcome.reload) fetchPage(room);
      if (outcome.read) sendRead(room, outcome.read);
      markRead(room);
      break;
    }
    case "read":
      if (store.onRead(frame) === "resync") {
        const room = store.room(frame.room);
        if (room?.joined) connection.send(joinFrame(room)); // fresh counts for the new marker
      }
      break;
    case "room_created":
    case "member_added":
    case "member_removed":
    case "member_muted":
    case "member_unbanned":
      if (store.onRoomEvent(frame)) rosterIfNeeded(frame.room, ROSTER_DELAY_MS);
      break;
    case "left": {
      const removed = store.onLeft(frame);
      if (removed) onRemoved(frame.room, removed);
      break;
    }
    case "room_removed": {
      const removed = store.onRoomRemoved(frame);
      if (removed) onRemoved(frame.room, removed);
      break;
    }
    case "room_added":
      if (store.onRoomAdded(frame)) followRoom(frame.room);
      break;
    case "message":
      store.onMessage(frame);
      break;
    case "edited":
    case "deleted":
    case "reaction":
      store.onChange(frame);
      break;
    case "ack":
      store.onAck(frame);
      break;
    case "presence":
      store.onPresence(frame);
      break;
    case "typing":
      store.onTyping(frame);
      break;
    case "error":
      onError(frame);
      break;
    default: // left, history, pong and future frames: nothing to do
  }
}

const CHANGE_FAILED = { edit: "Couldn't save the edit", delete: "Couldn't delete the message", react: "Couldn't add the reaction", unreact: "Couldn't remove the reaction" };

const REMOVED_TEXT = { kicked: "kicked from", banned: "banned from", removed: "removed from", left: "no longer in" };

/** The server took the user out of a room: say so; the room stays in the list, greyed, until closed. */
function onRemoved(name, { reason, by }) {
  saveRooms();
  clearTimeout(store.room(name)?.read.timer);
  if (reason === "left") return; // the user's own doing (here or on another page)
  const label = store.kindOf(name) === "direct" ? store.labelOf(name) : `#${name}`;
  view.toast(`You were ${REMOVED_TEXT[reason] ?? "removed from"} ${label}${by ? ` by ${by}` : ""}.`);
}

/** The words for an error frame: the server's message, made specific where we know more. */
function errorText(frame) {
  if (frame.code === "muted") {
    const room = frame.room ? store.room(frame.room) : null;
    if (room && frame.retry_after_ms) room.mutedUntil = Date.now() + frame.retry_after_ms;
    store.changed("messages");
    return frame.retry_after_ms ? `you are muted in this room for ${duration(frame.retry_after_ms)} more` : "you are muted in this room";
  }
  return frame.message || frame.code;
}

function onError(frame) {
  const text = errorText(frame);
  const own = store.findChange(frame.ref);
  if (own) {
    if (frame.code === "rate_limited" && frame.retry_after_ms) {
      setTimeout(() => transmit(frame.ref), frame.retry_after_ms); // still pending: try again when allowed
      return;
    }
    store.dropChange(frame.ref);
    view.toast(`${CHANGE_FAILED[own.change.kind]}: ${text}`);
    if (own.change.kind === "edit" && frame.code !== "message_deleted" && frame.code !== "not_found") {
      view.reopenEdit(own.room.name, own.change.id, own.change.content); // keep what was typed
    }
    return;
  }
  if (frame.ref && store.findPending(frame.ref)) {
    if (frame.code === "rate_limited" && frame.retry_after_ms) {
      setTimeout(() => transmit(frame.ref), frame.retry_after_ms); // still pending: try again when allowed
    } else store.setPendingStatus(frame.ref, "failed", text);
    return;
  }
  const room = frame.room ? store.room(frame.room) : null;
  if (room && (frame.code === "invalid_room" || frame.code === "forbidden_room") && !room.joined) {
    const why = frame.code === "forbidden_room" ? "it is private, or you are not allowed in it" : text;
    view.toast(`Can't open ${store.kindOf(room.name) === "direct" ? "this conversation" : `#${room.name}`}: ${why}.`);
    room.removed = room.removed ?? { reason: "forbidden", by: null };
    closeRoom(room.name);
    return;
  }
  if (room && frame.code === "not_joined") {
    if (!room.removed) connection?.send(joinFrame(room));
    return;
  }
  if (room && frame.code === "unavailable" && !room.joined) {
    setTimeout(() => store.room(room.name) === room && !room.joined && connection?.send(joinFrame(room)), 3000);
  }
  view.toast(text);
}

// ------------------------------------------------------------------- boot

function randomId() {
  return Array.from(crypto.getRandomValues(new Uint8Array(6)), (b) => b.toString(16).padStart(2, "0")).join("");
}

setInterval(() => store.expireTyping(), 500);
window.addEventListener("hashchange", routeFromHash);
window.addEventListener("online", () => connection?.retryNow());
document.addEventListener("visibilitychange", () => {
  store.setPageVisible(!document.hidden);
  if (!document.hidden) connection?.retryNow();
});

const saved = tokenStore.get();
const claims = saved ? peekToken(saved) : null;
if (claims?.sub && !(claims.exp && claims.exp * 1000 <= Date.now())) {
  startSession(saved, { id: claims.sub, name: claims.name ?? claims.sub });
} else {
  if (saved) tokenStore.clear();
  view.showLogin(saved ? "Your session has expired. Sign in again." : "");
}

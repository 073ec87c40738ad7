// confab web UI: wires the REST client, the WebSocket connection, the store
// and the view together. Protocol: docs/protocol.md.

import { listRooms, login, peekToken, roomMessages, socketUrl, tokenStore } from "./api.js";
import { Connection } from "./connection.js";
import { View } from "./render.js";
import { olderCursor, roomNameError, Store } from "./store.js";

const OPEN_ROOMS_KEY = "confab.rooms";
const LAST_ROOM_KEY = "confab.lastRoom";
const DEFAULT_ROOM = "general";
const JOIN_HISTORY = 50; // messages replayed on a first join
const PAGE_SIZE = 50; // messages per history page
const TYPING_EVERY_MS = 2000; // at most one typing frame per room this often
const DIRECTORY_EVERY_MS = 15000; // refresh /api/rooms (online counts, new rooms)
const MAX_SEND_BYTES = 60000; // below the server's default max_frame_bytes (65536): a bigger frame would close the socket

const store = new Store();
let connection = null;
let directoryTimer = 0;
const typingSentAt = new Map(); // room -> ms
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

  leave(name) {
    connection?.send({ type: "leave", room: name });
    typingSentAt.delete(name);
    store.closeRoom(name);
    saveRooms();
    const next = store.rooms.keys().next().value;
    if (next) actions.go(next);
    else {
      history.replaceState(null, "", location.pathname);
      localStorage.removeItem(LAST_ROOM_KEY);
      store.changed("rooms", "messages");
    }
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
    const { rooms } = await listRooms(token);
    if (store.token === token) store.setDirectory(rooms);
  } catch (e) {
    if (e.status === 401 && store.token === token) expireSession();
  }
}

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
  localStorage.setItem(OPEN_ROOMS_KEY, JSON.stringify([...store.rooms.keys()]));
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
      store.addHistory(room.name, page.messages);
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
      for (const room of store.rooms.values()) connection.send(joinFrame(room));
      for (const { ref } of store.unacked()) transmit(ref);
      refreshDirectory();
      break;
    case "joined":
      if (store.onJoined(frame) === "reload") {
        const room = store.room(frame.room);
        if (room) fetchPage(room);
      }
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

function onError(frame) {
  const text = frame.message || frame.code;
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
  if (room && (frame.code === "invalid_room" || frame.code === "forbidden_room")) {
    view.toast(`Can't join #${room.name}: ${text}`);
    actions.leave(room.name);
    return;
  }
  if (room && frame.code === "not_joined") {
    connection?.send(joinFrame(room));
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

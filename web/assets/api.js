// The REST side of confab (docs/protocol.md, sections 1, 2 and 11) and the
// token kept in localStorage.

const TOKEN_KEY = "confab.token";
const TIMEOUT_MS = 15000;

export const tokenStore = {
  get: () => localStorage.getItem(TOKEN_KEY),
  set: (token) => localStorage.setItem(TOKEN_KEY, token),
  clear: () => localStorage.removeItem(TOKEN_KEY),
};

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status; // 0: the server could not be reached
    this.code = code;
  }
}

async function request(path, { method = "GET", token, body } = {}) {
  const headers = {};
  if (token) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
  let res;
  try {
    res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: abort.signal,
      cache: "no-store",
    });
  } catch {
    throw new ApiError(0, "network", "The server cannot be reached.");
  } finally {
    clearTimeout(timer);
  }
  const data = await res.json().catch(() => null);
  if (!res.ok) {
    throw new ApiError(res.status, data?.error?.code ?? `http_${res.status}`, data?.error?.message ?? `HTTP ${res.status}`);
  }
  return data;
}

/** Guest login: {token, user: {id, name}}. */
export const login = (name) => request("/api/login", { method: "POST", body: { name } });

/**
 * {rooms: [{name, kind, last_seq, online, read_seq?, unread?, mentions?}], next_after}. A presented
 * token is always verified, so this doubles as a token check.
 */
export function listRooms(token, { after, limit } = {}) {
  return request(`/api/rooms${pageQuery({ after, limit })}`, { token });
}

/** The caller's rooms (docs/protocol.md 7b): {rooms: [{name, kind, role, last_seq, read_seq, unread, mentions, members?}], next_after}. */
export function myRooms(token, { after, limit } = {}) {
  return request(`/api/me/rooms${pageQuery({ after, limit })}`, { token });
}

/** Every page of a paged list ({…, next_after}): the items under `key`, at most `maxPages` pages. */
export async function allPages(fetchPage, key, maxPages = 20) {
  const items = [];
  let after;
  for (let i = 0; i < maxPages; i++) {
    const page = await fetchPage(after);
    items.push(...(page?.[key] ?? []));
    if (page?.next_after === null || page?.next_after === undefined || page.next_after === after) break;
    after = page.next_after;
  }
  return items;
}

/** POST /api/rooms: {room: {name, kind, last_seq, role}}. kind: "public" or "private". */
export const createRoom = (token, name, kind) => request("/api/rooms", { method: "POST", token, body: { name, kind } });

/** POST /api/dm: the direct room with `user` (new or existing): {room: {name, kind, last_seq, members}}. */
export function openDm(token, user, name) {
  const body = { user };
  if (name) body.name = name;
  return request("/api/dm", { method: "POST", token, body });
}

const roomPath = (room) => `/api/rooms/${encodeURIComponent(room)}`;
const memberPath = (room, user) => `${roomPath(room)}/members/${encodeURIComponent(user)}`;

/** {room, kind, members: [{id, name, role, muted_until?}], banned?: [{id, name}], next_after}. */
export function roomMembers(token, room, { after, limit } = {}) {
  return request(`${roomPath(room)}/members${pageQuery({ after, limit })}`, { token });
}

/** Invites `user` (or changes their role): {event}. */
export function invite(token, room, user, name, role = "member") {
  const body = { user, role };
  if (name) body.name = name;
  return request(`${roomPath(room)}/members`, { method: "POST", token, body });
}

/** Removes a member (the caller themselves: leaves a private room): {event}. */
export const removeMember = (token, room, user) => request(memberPath(room, user), { method: "DELETE", token });

/** "kick", "ban" or "unban": {event}. `name`: the user's display name as we know it (shown in the event). */
export function moderate(token, room, user, action, name) {
  return request(`${memberPath(room, user)}/${action}`, { method: "POST", token, body: name ? { name } : {} });
}

/** Mutes `user` for `seconds` (0 unmutes): {event}. */
export function mute(token, room, user, seconds, name) {
  const body = { seconds };
  if (name) body.name = name;
  return request(`${memberPath(room, user)}/mute`, { method: "POST", token, body });
}

function pageQuery({ after, limit }) {
  const query = new URLSearchParams();
  if (after !== undefined && after !== null) query.set("after", String(after));
  if (limit !== undefined) query.set("limit", String(limit));
  const text = query.toString();
  return text ? `?${text}` : "";
}

/** One page of history, oldest first: {room, messages, next_before}. */
export function roomMessages(token, room, { before, limit = 50 } = {}) {
  const query = new URLSearchParams({ limit: String(limit) });
  if (before !== undefined) query.set("before", String(before));
  return request(`/api/rooms/${encodeURIComponent(room)}/messages?${query}`, { token });
}

/** The WebSocket URL for this page's server. */
export function socketUrl(token) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws?token=${encodeURIComponent(token)}`;
}

/** The unverified claims of a JWT ({sub, name, exp, mod, admin, roles}), or null if it is not one. */
export function peekToken(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(part.padEnd(Math.ceil(part.length / 4) * 4, "=")), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === "object" ? claims : null;
  } catch {
    return null;
  }
}

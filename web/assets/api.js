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

/** {rooms: [{name, last_seq, online}]}. A presented token is always verified, so this doubles as a token check. */
export const listRooms = (token) => request("/api/rooms", { token });

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

/** The unverified claims of a JWT ({sub, name, exp}), or null if it is not one. */
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

// Test harness: runs target/debug/confab on a fresh data dir, launches
// Debian's chromium through playwright-core, and talks to the server from
// Node (REST + the `ws` package) to seed data.

import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import WebSocket from "ws";

const here = dirname(fileURLToPath(import.meta.url));
export const repoRoot = resolve(here, "../..");
export const BINARY = process.env.CONFAB_BIN ?? join(repoRoot, "target/debug/confab");
export const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
export const JWT_SECRET = "browser-tests-secret-0123456789abcdef";
const START_TIMEOUT_MS = 30000;

/** A free TCP port on 127.0.0.1 (for the restart test, which must keep its port). */
export function freePort() {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.once("error", fail);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => ok(port));
    });
  });
}

export function tempDir(prefix = "confab-browser-") {
  return mkdtempSync(join(tmpdir(), prefix));
}

/**
 * Starts `confab serve`. `port` 0 lets the OS pick one; the port is read from
 * the "listening on 127.0.0.1:PORT" log line. Returns {url, port, dir, stop()}.
 */
export async function startServer({ port = 0, dir = tempDir() } = {}) {
  if (!existsSync(BINARY)) throw new Error(`${BINARY} is missing: run \`cargo build\` first (or set CONFAB_BIN)`);
  const env = { ...process.env };
  delete env.CONFAB_CONFIG;
  for (const key of Object.keys(env)) if (key.startsWith("CONFAB__")) delete env[key];
  Object.assign(env, {
    CONFAB__SERVER__BIND: `127.0.0.1:${port}`,
    CONFAB__STORAGE__DATA_DIR: join(dir, "data"),
    CONFAB__AUTH__JWT_SECRET: JWT_SECRET,
    CONFAB__LIMITS__MESSAGES_PER_SEC: "100000",
    CONFAB__LIMITS__MESSAGE_BURST: "100000",
    CONFAB__MODERATION__SPAM_REPEATS: "1000000",
    CONFAB__LIMITS__JOINS_PER_SEC: "100000",
    CONFAB__LIMITS__LOGINS_PER_MINUTE: "0",
    CONFAB__SERVER__SHUTDOWN_GRACE_SECS: "2",
  });
  const child = spawn(BINARY, ["serve"], { cwd: dir, env, stdio: ["ignore", "ignore", "pipe"] });
  let log = "";
  const exited = new Promise((ok) => child.once("exit", (code, signal) => ok({ code, signal })));
  const boundPort = await new Promise((ok, fail) => {
    const timer = setTimeout(() => fail(new Error(`confab did not start within ${START_TIMEOUT_MS} ms:\n${log}`)), START_TIMEOUT_MS);
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (chunk) => {
      log += chunk;
      const match = /listening on 127\.0\.0\.1:(\d+)/.exec(log);
      if (match) {
        clearTimeout(timer);
        ok(Number(match[1]));
      }
    });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      fail(new Error(`confab exited (${code ?? signal}) before listening:\n${log}`));
    });
  });
  return {
    port: boundPort,
    dir,
    url: `http://127.0.0.1:${boundPort}`,
    log: () => log,
    /** SIGTERM (graceful: sockets close with 1001), SIGKILL after 10 s. */
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGTERM");
      const killer = setTimeout(() => child.kill("SIGKILL"), 10000);
      await exited;
      clearTimeout(killer);
    },
  };
}

export function removeDir(dir) {
  rmSync(dir, { recursive: true, force: true });
}

export function launchBrowser() {
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox"] });
}

/**
 * A browser context signed in as a guest through the UI. `dialogs` collects
 * every JS dialog (alert/confirm) the page opens, `errors` its uncaught
 * errors, `sentFrames`/`receivedFrames` its WebSocket frames (parsed).
 */
export async function openUser(browser, baseUrl, name, { viewport = { width: 1200, height: 750 }, path = "/", token = null } = {}) {
  const context = await browser.newContext({ viewport, locale: "en-US" });
  context.setDefaultTimeout(10000);
  const page = await context.newPage();
  const user = { name, context, page, dialogs: [], errors: [], sentFrames: [], receivedFrames: [] };
  page.on("dialog", (dialog) => {
    user.dialogs.push(dialog.message());
    dialog.dismiss().catch(() => {});
  });
  page.on("pageerror", (error) => user.errors.push(error.message));
  page.on("websocket", (ws) => {
    ws.on("framesent", (f) => user.sentFrames.push(JSON.parse(String(f.payload))));
    ws.on("framereceived", (f) => user.receivedFrames.push(JSON.parse(String(f.payload))));
  });
  await page.goto(baseUrl + path);
  if (token) {
    // The same user in several contexts: sign in with the token (from guestLogin or mintToken).
    await page.getByText("Sign in with a token").click();
    await page.getByLabel("Access token").fill(token);
    await page.getByRole("button", { name: "Sign in with token" }).click();
  } else {
    await page.getByLabel("Display name").fill(name);
    await page.getByRole("button", { name: "Continue as guest" }).click();
  }
  await page.locator('#me-status[data-state="open"]').waitFor({ state: "attached" }); // (in a drawer on narrow screens)
  return user;
}

/** Types into the composer and presses Enter. Lines after the first are entered with Shift+Enter. */
export async function sendFromUi(page, text) {
  const input = page.locator("#composer-input");
  const lines = text.split("\n");
  await input.fill(lines[0]);
  for (const line of lines.slice(1)) {
    await input.press("Shift+Enter");
    await input.pressSequentially(line);
  }
  await input.press("Enter");
}

/**
 * Everything the room in view shows of its stored messages, in DOM order:
 * [{seq, text, edited, deleted, reply: [author, snippet] | [text] | null, reactions: ["👍 2", …]}].
 */
export function shownState(page) {
  return page.locator("#messages .msg[data-seq]").evaluateAll((items) =>
    items.map((li) => {
      const reply = li.querySelector(".reply-preview");
      return {
        seq: Number(li.dataset.seq),
        text: li.querySelector(".msg-text").innerText,
        edited: li.querySelector(".msg-edited") !== null,
        deleted: li.classList.contains("deleted"),
        reply: reply ? [...reply.querySelectorAll("span")].map((s) => s.textContent) : null,
        reactions: [...li.querySelectorAll(".reaction")].map((c) => `${c.dataset.emoji} ${c.querySelector(".count").textContent}`),
      };
    }),
  );
}

/** The shown messages of the room in view: [{seq, user, text}] in DOM order. */
export function shownMessages(page) {
  return page.locator("#messages .msg[data-seq]").evaluateAll((items) =>
    items.map((li) => ({
      seq: Number(li.dataset.seq),
      user: li.dataset.user,
      text: li.querySelector(".msg-text").innerText,
    })),
  );
}

// ------------------------------------------------------------- Node client

/** A token signed with the test servers' secret (docs/protocol.md 2), e.g. {sub, name, mod: true}; valid for an hour. */
export function mintToken(claims) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const body = `${part({ alg: "HS256", typ: "JWT" })}.${part({ exp: Math.floor(Date.now() / 1000) + 3600, ...claims })}`;
  return `${body}.${createHmac("sha256", JWT_SECRET).update(body).digest("base64url")}`;
}

export async function guestLogin(baseUrl, name) {
  const res = await fetch(`${baseUrl}/api/login`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ name }),
  });
  if (!res.ok) throw new Error(`login failed: ${res.status} ${await res.text()}`);
  return res.json();
}

/** A REST call with a token (docs/protocol.md 7b): the JSON answer; throws with the status and error code otherwise. */
export async function api(baseUrl, token, method, path, body) {
  const headers = { authorization: `Bearer ${token}` };
  if (body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(baseUrl + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await res.json().catch(() => null);
  if (!res.ok) {
    const error = new Error(`${method} ${path}: ${res.status} ${JSON.stringify(data)}`);
    error.status = res.status;
    error.code = data?.error?.code;
    throw error;
  }
  return data;
}

/** A /ws client from Node (no Origin header, like most non-browser clients). */
export class WsClient {
  static async connect(baseUrl, token) {
    const client = new WsClient(new WebSocket(`${baseUrl.replace(/^http/, "ws")}/ws?token=${encodeURIComponent(token)}`));
    await client.next((f) => f.type === "welcome");
    return client;
  }

  constructor(ws) {
    this.ws = ws;
    this.frames = [];
    this.waiters = new Set();
    ws.on("message", (data) => {
      const frame = JSON.parse(String(data));
      this.frames.push(frame);
      for (const waiter of this.waiters) waiter();
    });
    ws.on("close", () => {
      this.closed = true;
      for (const waiter of this.waiters) waiter();
    });
  }

  send(frame) {
    this.ws.send(JSON.stringify(frame));
  }

  /** Resolves with the first frame (received so far or later) matching `pred`. */
  next(pred, timeoutMs = 10000) {
    return this.until(() => this.frames.find(pred), timeoutMs, "a matching frame");
  }

  /** Resolves once `check()` returns something truthy (re-checked on every frame). */
  until(check, timeoutMs = 10000, what = "the condition") {
    return new Promise((ok, fail) => {
      const waiter = () => {
        const value = check();
        if (value) {
          done();
          ok(value);
        } else if (this.closed) {
          done();
          fail(new Error(`socket closed while waiting for ${what}`));
        }
      };
      const timer = setTimeout(() => {
        done();
        fail(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`));
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        this.waiters.delete(waiter);
      };
      this.waiters.add(waiter);
      waiter();
    });
  }

  async join(room, extra = {}) {
    this.send({ type: "join", room, ...extra });
    return this.next((f) => f.type === "joined" && f.room === room);
  }

  /** Sends `contents` to `room` and waits for all their acks. */
  async sendAll(room, contents, timeoutMs = 20000) {
    const refs = new Set();
    for (const [i, content] of contents.entries()) {
      const ref = `seed-${Date.now()}-${i}-${Math.random().toString(36).slice(2)}`;
      refs.add(ref);
      this.send({ type: "send", room, content, ref });
    }
    await this.until(() => this.frames.filter((f) => f.type === "ack" && refs.has(f.ref)).length === refs.size, timeoutMs, `${refs.size} acks`);
    const error = this.frames.find((f) => f.type === "error" && refs.has(f.ref));
    if (error) throw new Error(`seeding failed: ${JSON.stringify(error)}`);
  }

  /** Sends one frame with a fresh ref: resolves with its ack, rejects with its error frame. */
  async request(frame, timeoutMs = 10000) {
    const ref = `req-${Date.now()}-${Math.random().toString(36).slice(2)}`;
    this.send({ ...frame, ref });
    const answer = await this.next((f) => f.ref === ref && (f.type === "ack" || f.type === "error"), timeoutMs);
    if (answer.type === "error") throw new Error(`${frame.type} refused: ${JSON.stringify(answer)}`);
    return answer;
  }

  /** The id of the message with this content in `room` (seen live or replayed). */
  async messageId(room, content) {
    return (await this.next((f) => f.type === "message" && f.room === room && f.content === content)).id;
  }

  close() {
    this.ws.close();
  }
}

/** A signed-in Node client that has joined `room`. */
export async function nodeUser(baseUrl, name, room) {
  const { token, user } = await guestLogin(baseUrl, name);
  const client = await WsClient.connect(baseUrl, token);
  client.user = user;
  client.token = token;
  if (room) await client.join(room, { history: 0 });
  return client;
}

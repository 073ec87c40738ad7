// Browser tests of the bundled web UI: `node tests/browser/run.mjs`
// (or `npm test --prefix tests/browser`). Needs target/debug/confab (cargo
// build) and /usr/bin/chromium (Debian's `chromium` package).

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import {
  freePort, launchBrowser, nodeUser, openUser, removeDir, sendFromUi, shownMessages, startServer, tempDir, guestLogin,
} from "./harness.mjs";

const TEST_TIMEOUT_MS = 60000;
let browser;
let server;
const contexts = [];

before(async () => {
  [browser, server] = await Promise.all([launchBrowser(), startServer()]);
});

after(async () => {
  await browser?.close();
  await server?.stop();
  if (server) removeDir(server.dir);
});

async function user(name, options) {
  const u = await openUser(browser, server.url, name, options);
  contexts.push(u.context);
  return u;
}

async function closeAll() {
  while (contexts.length) await contexts.pop().close();
}

const message = (page, text) => page.locator("#messages .msg[data-seq] .msg-text").filter({ hasText: text });

test("two users in two browser contexts chat both ways, with presence and typing", { timeout: TEST_TIMEOUT_MS }, async () => {
  const alice = await user("alice");
  const bob = await user("bob");
  try {
    // Both land in the default room and see each other in the presence list.
    await assert.doesNotReject(alice.page.waitForURL(/#\/room\/general$/));
    await alice.page.locator("#member-list .member", { hasText: "bob" }).waitFor();
    await bob.page.locator("#member-list .member", { hasText: "alice" }).waitFor();
    assert.equal(await alice.page.locator("#room-sub").textContent(), "2 online");

    // Typing shows "alice is typing…" to bob (and never to alice herself).
    await alice.page.locator("#composer-input").pressSequentially("Hi Bo");
    await bob.page.locator("#typing", { hasText: "alice is typing…" }).waitFor();
    assert.equal(await alice.page.locator("#typing").textContent(), "");
    await alice.page.locator("#composer-input").fill("");

    // alice -> bob; the sender sees her own message marked sent (it has its seq from the ack).
    await sendFromUi(alice.page, "Hi Bob! Ready for the demo?");
    await message(alice.page, "Hi Bob! Ready for the demo?").waitFor();
    await message(bob.page, "Hi Bob! Ready for the demo?").waitFor();
    assert.equal(await alice.page.locator("#messages .msg.pending, #messages .msg.failed").count(), 0);

    // The typing note disappears when the message arrives.
    await bob.page.waitForFunction(() => document.getElementById("typing").textContent === "");

    // bob -> alice, two lines (Shift+Enter) then a second message grouped under the first.
    await sendFromUi(bob.page, "Yes!\nGive me two minutes.");
    await sendFromUi(bob.page, "Starting now.");
    await message(alice.page, "Starting now.").waitFor();
    const seen = await shownMessages(alice.page);
    assert.deepEqual(seen.map((m) => m.text), ["Hi Bob! Ready for the demo?", "Yes!\nGive me two minutes.", "Starting now."]);
    assert.deepEqual(seen, await shownMessages(bob.page));
    const bobItems = alice.page.locator("#messages .msg[data-seq]");
    assert.equal(await bobItems.nth(1).evaluate((li) => li.classList.contains("grouped")), false);
    assert.equal(await bobItems.nth(2).evaluate((li) => li.classList.contains("grouped")), true, "consecutive messages of one user are grouped");
    assert.match(await bobItems.nth(1).locator("time").getAttribute("datetime"), /^\d{4}-\d\d-\d\dT/);
    assert.equal(await alice.page.locator("#messages .day").count(), 1, "one day separator");

    // bob leaves: alice's presence list drops him.
    await bob.context.close();
    await alice.page.locator("#member-list .member", { hasText: "bob" }).waitFor({ state: "detached" });
    assert.deepEqual(alice.errors, []);
  } finally {
    await closeAll();
  }
});

test("history pages in with `before` while scrolling up", { timeout: TEST_TIMEOUT_MS }, async () => {
  const TOTAL = 230;
  const seeder = await nodeUser(server.url, "seeder", "paging");
  await seeder.sendAll("paging", Array.from({ length: TOTAL }, (_, i) => `history message ${i + 1}`));
  seeder.close();

  const alice = await user("alice", { path: "/#/room/paging" });
  const historyUrls = [];
  alice.page.on("request", (req) => {
    if (req.url().includes("/api/rooms/paging/messages")) historyUrls.push(new URL(req.url()).search);
  });
  try {
    // The join replays the newest 50.
    await message(alice.page, `history message ${TOTAL}`).waitFor();
    let shown = await shownMessages(alice.page);
    assert.equal(shown.length, 50);
    assert.equal(shown[0].seq, TOTAL - 49);

    // Jump to the top: the previous page comes in above, and what was on
    // screen stays exactly where it was (the reader is not thrown around).
    const count = () => alice.page.locator("#messages .msg[data-seq]").count();
    const scroller = alice.page.locator("#scroller");
    const oldTop = `#messages .msg[data-seq="${TOTAL - 49}"] .msg-text`;
    const y0 = await scroller.evaluate((el, sel) => {
      el.scrollTop = 0;
      return document.querySelector(sel).getBoundingClientRect().top;
    }, oldTop);
    await alice.page.waitForFunction(() => document.querySelectorAll("#messages .msg[data-seq]").length >= 100);
    const y1 = await alice.page.locator(oldTop).evaluate((el) => el.getBoundingClientRect().top);
    assert.ok(Math.abs(y1 - y0) < 2, `the view moved from ${y0} to ${y1}`);
    assert.ok((await scroller.evaluate((el) => el.scrollTop)) > 0);

    // Then scroll up with the mouse wheel until the beginning of the room.
    await scroller.hover();
    for (let i = 0; i < 20; i++) {
      const before = await count();
      if (before === TOTAL) break;
      await alice.page.mouse.wheel(0, -100000);
      await alice.page.waitForFunction((n) => document.querySelectorAll("#messages .msg[data-seq]").length > n, before);
    }
    await alice.page.locator("#history-status", { hasText: "beginning of #paging" }).waitFor();
    shown = await shownMessages(alice.page);
    assert.equal(shown.length, TOTAL);
    assert.deepEqual(shown.map((m) => m.seq), Array.from({ length: TOTAL }, (_, i) => i + 1));
    assert.deepEqual(shown.map((m) => m.text), Array.from({ length: TOTAL }, (_, i) => `history message ${i + 1}`));
    // Pages were fetched over REST with `before` = the oldest seq shown.
    assert.deepEqual(historyUrls, [181, 131, 81, 31].map((before) => `?limit=50&before=${before}`));
  } finally {
    await closeAll();
  }
});

test("user content is rendered as text: no HTML, no script, no dialog (at 360 px wide)", { timeout: TEST_TIMEOUT_MS }, async () => {
  const payload = "<img src=x onerror=alert(1)>";
  // The display name is an attack too: it shows up in presence, authors and typing.
  const mallory = await user(payload, { viewport: { width: 360, height: 740 }, path: "/#/room/xss" });
  const alice = await user("alice", { path: "/#/room/xss" });
  try {
    await alice.page.locator("#member-list .member-name", { hasText: payload }).waitFor();
    await mallory.page.locator("#composer-input").pressSequentially("<i>");
    await alice.page.locator("#typing", { hasText: `${payload} is typing…` }).waitFor();
    await sendFromUi(mallory.page, payload);
    await sendFromUi(mallory.page, "<b>bold?</b>\n<script>alert(2)</script>");
    await message(alice.page, "<script>alert(2)</script>").waitFor();
    await message(mallory.page, "<script>alert(2)</script>").waitFor();
    for (const u of [alice, mallory]) {
      const shown = await shownMessages(u.page);
      assert.deepEqual(shown.map((m) => m.text), [payload, "<b>bold?</b>\n<script>alert(2)</script>"]);
      assert.equal(await u.page.locator("#app img, #app b, #messages script").count(), 0);
    }
    assert.equal(await alice.page.locator("#messages .msg-author").first().textContent(), payload);
    await alice.page.waitForTimeout(300);
    assert.deepEqual(alice.dialogs, []);
    assert.deepEqual(mallory.dialogs, []);

    // Usable at 360 px: nothing overflows sideways, the composer is on screen,
    // and the room list opens as a drawer.
    const page = mallory.page;
    assert.ok(await page.evaluate(() => document.documentElement.scrollWidth <= 360));
    const box = await page.locator("#composer-input").boundingBox();
    assert.ok(box && box.x >= 0 && box.x + box.width <= 360 && box.y + box.height <= 740, `composer at ${JSON.stringify(box)}`);
    assert.equal(await page.locator("#sidebar").isVisible(), false);
    await page.getByRole("button", { name: "Show rooms" }).click();
    await page.locator("#sidebar .room-link", { hasText: "xss" }).waitFor();
    await page.getByRole("button", { name: "Close the room list" }).click();
    await page.locator("#sidebar").waitFor({ state: "hidden" });
  } finally {
    await closeAll();
  }
});

test("after a server restart the page reconnects, rejoins with `since` and shows what was sent meanwhile", { timeout: TEST_TIMEOUT_MS }, async () => {
  // A server of its own, on a fixed port, so it can come back at the same address.
  const dir = tempDir();
  const port = await freePort();
  let own = await startServer({ port, dir });
  const u = await openUser(browser, own.url, "alice", { path: "/#/room/restart" });
  const page = u.page;
  try {
    const carol = await nodeUser(own.url, "carol", "restart");
    await carol.sendAll("restart", ["before the restart"]);
    await sendFromUi(page, "hello before");
    await message(page, "hello before").waitFor();
    await message(page, "before the restart").waitFor();
    carol.close();

    await own.stop();
    await page.locator('#banner[data-state="waiting"], #banner[data-state="connecting"]').first().waitFor();
    assert.match(await page.locator("#banner-text").textContent(), /Connection lost|Reconnecting/);
    const seenBefore = Math.max(...u.receivedFrames.filter((f) => f.type === "message").map((f) => f.seq));

    // Written while the server is down: shown as pending, sent after the reconnect.
    await sendFromUi(page, "written while offline");
    await page.locator('#messages .msg[data-status="pending"]', { hasText: "written while offline" }).waitFor();

    // The server comes back; while the page is still cut off, dave writes.
    await u.context.setOffline(true);
    own = await startServer({ port, dir });
    const dave = await nodeUser(own.url, "dave", "restart");
    await dave.sendAll("restart", ["sent meanwhile 1", "sent meanwhile 2", "sent meanwhile 3"]);
    await u.context.setOffline(false);

    await message(page, "sent meanwhile 3").waitFor({ timeout: 30000 });
    await message(page, "written while offline").waitFor();
    await page.locator("#banner").waitFor({ state: "hidden" });
    await dave.next((f) => f.type === "message" && f.content === "written while offline");

    const shown = await shownMessages(page);
    assert.deepEqual(shown.map((m) => m.text), [
      "before the restart", "hello before", "sent meanwhile 1", "sent meanwhile 2", "sent meanwhile 3", "written while offline",
    ]);
    assert.deepEqual(shown.map((m) => m.seq), [1, 2, 3, 4, 5, 6], "nothing missed, nothing duplicated");
    const joins = u.sentFrames.filter((f) => f.type === "join" && f.room === "restart");
    assert.deepEqual(joins.at(-1), { type: "join", room: "restart", since: seenBefore }, "rejoined with since = the last seq seen");
    const rejoined = u.receivedFrames.filter((f) => f.type === "joined" && f.room === "restart").at(-1);
    assert.equal(rejoined.recovered, true);
    assert.equal(rejoined.last_seq, 5, "dave's messages were stored before the page came back, and were replayed");
    const sends = u.sentFrames.filter((f) => f.type === "send" && f.content === "written while offline");
    assert.ok(sends.length >= 1 && sends.every((f) => f.ref === sends[0].ref), "resends reuse the ref");
    assert.equal(dave.frames.filter((f) => f.type === "message" && f.content === "written while offline").length, 1);
    dave.close();
  } finally {
    await u.context.close();
    await own.stop();
    removeDir(dir);
  }
});

test("when the server cannot replay the gap (recovered: false), the room is reloaded from history", { timeout: TEST_TIMEOUT_MS }, async () => {
  // The server comes back with its data reset: the page's `since` is above the
  // room's last_seq, so the server answers recovered: false and replays nothing.
  const [dir, resetDir] = [tempDir(), tempDir()];
  const port = await freePort();
  let own = await startServer({ port, dir });
  const u = await openUser(browser, own.url, "alice", { path: "/#/room/reset" });
  const page = u.page;
  try {
    const carol = await nodeUser(own.url, "carol", "reset");
    await carol.sendAll("reset", ["old 1", "old 2", "old 3"]);
    await message(page, "old 3").waitFor();
    carol.close();

    await own.stop();
    await u.context.setOffline(true);
    own = await startServer({ port, dir: resetDir });
    const dave = await nodeUser(own.url, "dave", "reset");
    await dave.sendAll("reset", ["new 1", "new 2"]);
    await u.context.setOffline(false);

    await message(page, "new 2").waitFor({ timeout: 30000 });
    const rejoined = u.receivedFrames.filter((f) => f.type === "joined" && f.room === "reset").at(-1);
    assert.equal(rejoined.recovered, false);
    await message(page, "old 1").waitFor({ state: "detached" });
    await dave.sendAll("reset", ["new 3"]);
    await message(page, "new 3").waitFor();
    const shown = await shownMessages(page);
    assert.deepEqual(shown.map((m) => [m.seq, m.text]), [[1, "new 1"], [2, "new 2"], [3, "new 3"]]);
    dave.close();
  } finally {
    await u.context.close();
    await own.stop();
    removeDir(dir);
    removeDir(resetDir);
  }
});

test("a too-long message shows the server's error with retry and discard", { timeout: TEST_TIMEOUT_MS }, async () => {
  const alice = await user("alice", { path: "/#/room/limits" });
  const bob = await user("bob", { path: "/#/room/limits" });
  try {
    await alice.page.locator("#composer-input").fill("x".repeat(2001));
    await alice.page.locator("#composer-input").press("Enter");
    const failed = alice.page.locator('#messages .msg[data-status="failed"]');
    await failed.waitFor();
    assert.match(await failed.locator(".msg-error").textContent(), /^Not sent: a message is at most 2000 characters$/);
    assert.equal(await failed.getByRole("button", { name: "Retry" }).count(), 1);

    // A retry goes out with the same ref, and fails the same way.
    await failed.getByRole("button", { name: "Retry" }).click();
    await alice.page.locator('#messages .msg[data-status="failed"]').waitFor();
    const refs = alice.sentFrames.filter((f) => f.type === "send").map((f) => f.ref);
    assert.equal(refs.length, 2);
    assert.equal(refs[0], refs[1]);

    await alice.page.locator('#messages .msg[data-status="failed"]').getByRole("button", { name: "Discard" }).click();
    await failed.waitFor({ state: "detached" });

    // Exactly at the limit is fine, and nothing of the failed one reached bob.
    await alice.page.locator("#composer-input").fill("y".repeat(2000));
    await alice.page.locator("#composer-input").press("Enter");
    await message(bob.page, "y".repeat(2000)).waitFor();
    assert.deepEqual((await shownMessages(bob.page)).map((m) => m.text.length), [2000]);
  } finally {
    await closeAll();
  }
});

test("rooms: name validation, unread counts, deep links, reload restores the room, leave, sign out, token sign-in", { timeout: TEST_TIMEOUT_MS }, async () => {
  const alice = await user("alice", { path: "/#/room/lobby" });
  const bob = await user("bob", { path: "/#/room/random" });
  const page = alice.page;
  try {
    await page.locator("#room-title", { hasText: "lobby" }).waitFor();

    // Names are checked like the server does.
    await page.getByLabel("Room to join").fill("no spaces!");
    await page.getByRole("button", { name: "Join", exact: true }).click();
    await page.locator("#join-error", { hasText: "letters, digits" }).waitFor();
    assert.match(page.url(), /#\/room\/lobby$/);

    // Join random, go back to lobby; bob writes in random: 2 unread.
    await page.getByLabel("Room to join").fill("random");
    await page.getByRole("button", { name: "Join", exact: true }).click();
    await page.waitForURL(/#\/room\/random$/);
    await page.locator("#member-list .member", { hasText: "bob" }).waitFor();
    await page.locator("#room-list .room-link", { hasText: "lobby" }).click();
    await page.waitForURL(/#\/room\/lobby$/);
    await sendFromUi(bob.page, "psst, alice");
    await sendFromUi(bob.page, "are you there?");
    const randomLink = page.locator("#room-list .room-link", { hasText: "random" });
    await randomLink.locator(".badge", { hasText: "2" }).waitFor();
    assert.equal(await page.title(), "(2) #lobby · confab");
    await randomLink.click();
    await message(page, "are you there?").waitFor();
    await randomLink.locator(".badge").waitFor({ state: "detached" });

    // The directory lists rooms alice has not joined, with online counts.
    const carol = await nodeUser(server.url, "carol", "carols-room");
    await page.reload();
    // Reload: still signed in, back in random, lobby still open, nothing unread.
    await page.waitForURL(/#\/room\/random$/);
    await message(page, "are you there?").waitFor();
    await page.locator("#room-list .room-link", { hasText: "lobby" }).waitFor();
    await page.locator("#directory-list .room-link", { hasText: "carols-room" }).locator(".online", { hasText: "1" }).waitFor();
    carol.close();

    // A deep link opens (joins) the room.
    await page.goto(`${server.url}/#/room/deep.link:1`);
    await page.locator("#room-title", { hasText: "deep.link:1" }).waitFor();
    await page.locator("#room-sub", { hasText: "1 online" }).waitFor();

    // Leave: the room is gone from "Your rooms", another open room is shown.
    await page.getByRole("button", { name: "Leave" }).click();
    await page.locator("#room-list .room-link", { hasText: "deep.link:1" }).waitFor({ state: "detached" });
    await page.waitForURL(/#\/room\/(lobby|random)$/);

    // Sign out clears the token; a pasted token signs in again.
    await page.getByRole("button", { name: "Sign out" }).click();
    await page.getByLabel("Display name").waitFor();
    assert.equal(await page.evaluate(() => localStorage.getItem("confab.token")), null);
    const { token } = await guestLogin(server.url, "tokenuser");
    await page.getByText("Sign in with a token").click();
    await page.getByLabel("Access token").fill("not-a-token");
    await page.getByRole("button", { name: "Sign in with token" }).click();
    await page.locator("#login-error", { hasText: "does not look like a confab token" }).waitFor();
    await page.getByLabel("Access token").fill(token);
    await page.getByRole("button", { name: "Sign in with token" }).click();
    await page.locator("#me-name", { hasText: "tokenuser" }).waitFor();
    await page.locator('#me-status[data-state="open"]').waitFor();
    assert.equal(await page.evaluate(() => localStorage.getItem("confab.token")), token);
    assert.deepEqual(alice.errors, []);
  } finally {
    await closeAll();
  }
});

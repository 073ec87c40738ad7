// Browser tests of the bundled web UI: `node tests/browser/run.mjs`
// (or `npm test --prefix tests/browser`). Needs target/debug/confab (cargo
// build) and /usr/bin/chromium (Debian's `chromium` package).

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import {
  api, freePort, launchBrowser, nodeUser, openUser, removeDir, sendFromUi, shownMessages, shownState, startServer, tempDir, guestLogin, WsClient, mintToken,
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

const escapeRe = (text) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

/** The stored message (li) whose text is exactly `text`. */
const item = (page, text) =>
  page.locator("#messages .msg[data-seq]").filter({ has: page.locator(".msg-text", { hasText: new RegExp(`^${escapeRe(text)}$`) }) });

/** Hovers a message (its actions show on hover) and clicks one of them: "Reply", "Add reaction", "Edit", "Delete". */
async function act(page, text, action) {
  const li = item(page, text);
  await li.hover();
  await li.getByRole("button", { name: action, exact: true }).click();
}

/** A message's reaction chip for `emoji`. */
const chip = (page, text, emoji) => item(page, text).locator(`.reaction[data-emoji="${emoji}"]`);

/** Waits until the chip shows `count` (0: no chip). */
async function chipCount(page, text, emoji, count) {
  const c = chip(page, text, emoji);
  if (count === 0) await c.waitFor({ state: "detached" });
  else await c.locator(".count", { hasText: new RegExp(`^${count}$`) }).waitFor();
}

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

// ------------------------------------------- edits, deletes, reactions, replies (docs/protocol.md 7a)

test("edit: Up in an empty composer edits the last own message; the other user sees the new content and (edited)", { timeout: TEST_TIMEOUT_MS }, async () => {
  const alice = await user("alice", { path: "/#/room/edits" });
  const bob = await user("bob", { path: "/#/room/edits" });
  const page = alice.page;
  try {
    await sendFromUi(page, "first message");
    await sendFromUi(page, "helo wrold");
    await item(page, "helo wrold").waitFor(); // stored (acked): it has a seq
    await item(bob.page, "helo wrold").waitFor();

    // Up opens the edit box on the newest own message, with the caret in it; Escape cancels.
    const input = page.locator("#composer-input");
    await input.press("ArrowUp");
    const box = page.getByRole("textbox", { name: "Edit message" });
    await box.waitFor();
    assert.equal(await box.inputValue(), "helo wrold");
    assert.equal(await box.evaluate((el) => el === document.activeElement && el.closest(".msg").dataset.seq), "2");
    await box.fill("never saved");
    await box.press("Escape");
    await box.waitFor({ state: "detached" });
    await item(page, "helo wrold").waitFor();
    assert.ok(await input.evaluate((el) => el === document.activeElement), "Escape gives the composer its focus back");

    // Up again, fix it; bob reacts meanwhile: the edit box keeps the text, the focus and the caret.
    await input.press("ArrowUp");
    await box.fill("hello world");
    await box.evaluate((el) => el.setSelectionRange(5, 5));
    await act(bob.page, "helo wrold", "Add reaction");
    await bob.page.getByRole("button", { name: "React with 👍" }).click();
    await page.locator('#messages .msg.editing .reaction[data-emoji="👍"]').waitFor();
    assert.deepEqual(await box.evaluate((el) => [el === document.activeElement, el.value, el.selectionStart]), [true, "hello world", 5]);

    // Enter saves: both users see the new text marked (edited).
    await box.press("Enter");
    for (const p of [page, bob.page]) {
      await item(p, "hello world").locator(".msg-edited", { hasText: "(edited)" }).waitFor();
      await item(p, "helo wrold").waitFor({ state: "detached" });
    }
    await page.locator("#messages .msg.saving").waitFor({ state: "detached" });
    const id = await item(page, "hello world").getAttribute("data-id");
    const edits = alice.sentFrames.filter((f) => f.type === "edit");
    assert.equal(edits.length, 1, "Escape sent nothing");
    assert.deepEqual({ ...edits[0], ref: typeof edits[0].ref }, { type: "edit", room: "edits", id, content: "hello world", ref: "string" });

    // The Edit action works on an older message too; saving unchanged text sends nothing.
    await act(page, "first message", "Edit");
    await box.press("Enter");
    await box.waitFor({ state: "detached" });
    assert.equal(alice.sentFrames.filter((f) => f.type === "edit").length, 1);
    await act(page, "first message", "Edit");
    await box.fill("first message, edited");
    await box.press("Enter");
    await item(bob.page, "first message, edited").locator(".msg-edited").waitFor();
    assert.equal(await item(bob.page, "first message, edited").getAttribute("data-seq"), "1");

    // bob can reply to and react to alice's messages, not edit or delete them; Up does nothing for him.
    const theirs = item(bob.page, "hello world");
    await theirs.hover();
    await theirs.getByRole("button", { name: "Reply", exact: true }).waitFor();
    assert.equal(await theirs.getByRole("button", { name: "Edit", exact: true }).count(), 0);
    assert.equal(await theirs.getByRole("button", { name: "Delete", exact: true }).count(), 0);
    await bob.page.locator("#composer-input").press("ArrowUp");
    assert.equal(await bob.page.locator(".edit-input").count(), 0);

    // An edit the server refuses is reported like other errors, and the edit box comes back with the text.
    await input.press("ArrowUp");
    await box.fill("z".repeat(2001));
    await box.press("Enter");
    await page.locator("#toast", { hasText: "Couldn't save the edit: a message is at most 2000 characters" }).waitFor();
    await box.waitFor();
    assert.equal((await box.inputValue()).length, 2001);
    await box.press("Escape");
    await item(page, "hello world").waitFor();
    assert.deepEqual(alice.errors, []);
    assert.deepEqual(bob.errors, []);
  } finally {
    await closeAll();
  }
});

test("delete: confirmed in an in-page dialog, the message becomes a tombstone for both users", { timeout: TEST_TIMEOUT_MS }, async () => {
  const alice = await user("alice", { path: "/#/room/deletes" });
  const bob = await user("bob", { path: "/#/room/deletes" });
  const page = alice.page;
  try {
    await sendFromUi(page, "delete me");
    await sendFromUi(page, "keep me");
    await item(bob.page, "keep me").waitFor();
    await item(page, "keep me").waitFor();

    // Cancel changes nothing.
    await act(page, "delete me", "Delete");
    const dialog = page.getByRole("dialog", { name: "Delete this message?" });
    await dialog.waitFor();
    assert.equal(await dialog.locator(".dialog-quote").textContent(), "delete me");
    await dialog.getByRole("button", { name: "Cancel" }).click();
    await dialog.waitFor({ state: "hidden" });
    assert.equal(alice.sentFrames.filter((f) => f.type === "delete").length, 0);

    // Delete: a tombstone on both pages, with no content, actions or reactions left.
    const id = await item(page, "delete me").getAttribute("data-id");
    await act(page, "delete me", "Delete");
    await dialog.getByRole("button", { name: "Delete" }).click();
    for (const p of [page, bob.page]) {
      await p.locator(`#messages .msg.deleted[data-id="${id}"] .tombstone`, { hasText: "message deleted" }).waitFor();
      assert.deepEqual((await shownMessages(p)).map((m) => m.text), ["message deleted", "keep me"]);
      assert.equal(await p.locator(`#messages .msg[data-id="${id}"] .msg-actions`).count(), 0);
    }
    const deletes = alice.sentFrames.filter((f) => f.type === "delete");
    assert.deepEqual(deletes.map((f) => [f.room, f.id]), [["deletes", id]]);
    assert.deepEqual(alice.dialogs, [], "no window.confirm");

    // Up skips the tombstone: it edits "keep me".
    await page.locator("#composer-input").press("ArrowUp");
    assert.equal(await page.getByRole("textbox", { name: "Edit message" }).inputValue(), "keep me");
    await page.getByRole("textbox", { name: "Edit message" }).press("Escape");

    // bob sees no Delete on alice's message; a page opened now shows the tombstone too.
    const theirs = item(bob.page, "keep me");
    await theirs.hover();
    await theirs.getByRole("button", { name: "Reply", exact: true }).waitFor();
    assert.equal(await theirs.getByRole("button", { name: "Delete", exact: true }).count(), 0);
    await bob.page.reload();
    await item(bob.page, "keep me").waitFor();
    assert.deepEqual((await shownState(bob.page)).map((m) => [m.text, m.deleted]), [["message deleted", true], ["keep me", false]]);
    assert.deepEqual(alice.errors, []);
    assert.deepEqual(bob.errors, []);
  } finally {
    await closeAll();
  }
});

test("reactions: picked from the picker, counted on the other page, toggled by clicking the chip", { timeout: TEST_TIMEOUT_MS }, async () => {
  const alice = await user("alice", { path: "/#/room/reactions" });
  const bob = await user("bob", { path: "/#/room/reactions" });
  const text = "react to me";
  try {
    await sendFromUi(alice.page, text);
    await item(bob.page, text).waitFor();

    // bob picks 👍: alice sees it counted, and only bob's chip is marked as his.
    await act(bob.page, text, "Add reaction");
    const picker = bob.page.getByRole("group", { name: "Pick a reaction" });
    for (const emoji of ["👍", "❤️", "😂", "🎉", "😮", "😢"]) await picker.getByRole("button", { name: `React with ${emoji}` }).waitFor();
    await picker.getByRole("button", { name: "React with 👍" }).click();
    await picker.waitFor({ state: "detached" });
    await chipCount(alice.page, text, "👍", 1);
    await chipCount(bob.page, text, "👍", 1);
    assert.equal(await chip(bob.page, text, "👍").getAttribute("aria-pressed"), "true");
    assert.equal(await chip(alice.page, text, "👍").getAttribute("aria-pressed"), "false");

    // alice clicks the chip: 2 on both pages, hers now marked.
    await chip(alice.page, text, "👍").click();
    await chipCount(alice.page, text, "👍", 2);
    await chipCount(bob.page, text, "👍", 2);
    assert.equal(await chip(alice.page, text, "👍").getAttribute("aria-pressed"), "true");

    // A second emoji comes after the first.
    await act(alice.page, text, "Add reaction");
    await alice.page.getByRole("button", { name: "React with 🎉" }).click();
    await chipCount(bob.page, text, "🎉", 1);
    assert.deepEqual((await shownState(bob.page)).map((m) => m.reactions), [["👍 2", "🎉 1"]]);

    // bob toggles his 👍 off, then alice hers: the chip goes away on both pages.
    await chip(bob.page, text, "👍").click();
    await chipCount(alice.page, text, "👍", 1);
    await chipCount(bob.page, text, "👍", 1);
    assert.equal(await chip(bob.page, text, "👍").getAttribute("aria-pressed"), "false");
    await chip(alice.page, text, "👍").click();
    await chipCount(bob.page, text, "👍", 0);
    await chipCount(alice.page, text, "👍", 0);
    assert.deepEqual((await shownState(alice.page)).map((m) => m.reactions), [["🎉 1"]]);

    const id = await item(alice.page, text).getAttribute("data-id");
    assert.deepEqual(bob.sentFrames.filter((f) => f.type === "react" || f.type === "unreact").map((f) => [f.type, f.id, f.emoji]),
      [["react", id, "👍"], ["unreact", id, "👍"]]);
    assert.deepEqual(alice.errors, []);
    assert.deepEqual(bob.errors, []);
  } finally {
    await closeAll();
  }
});

test("reply: a quoted preview above the composer and on the sent message; clicking it jumps to the original", { timeout: TEST_TIMEOUT_MS }, async () => {
  const seeder = await nodeUser(server.url, "seeder", "replies");
  const long = `original question: ${"why is the sky blue? ".repeat(6)}`;
  await seeder.sendAll("replies", [long]);
  await seeder.sendAll("replies", Array.from({ length: 30 }, (_, i) => `filler ${i + 1}`));
  const originalId = await seeder.messageId("replies", long);
  const alice = await user("alice", { path: "/#/room/replies" });
  const bob = await user("bob", { path: "/#/room/replies" });
  const snippet = `${long.replace(/\s+/g, " ").trim().slice(0, 80)}…`;
  try {
    await item(bob.page, "filler 30").waitFor();

    // Reply puts the original above the composer; ✕ takes it away, Reply again brings it back.
    await act(bob.page, long, "Reply");
    const bar = bob.page.locator("#reply-bar");
    await bar.waitFor();
    assert.equal(await bar.locator("#reply-author").textContent(), "seeder");
    assert.equal(await bar.locator("#reply-text").textContent(), snippet);
    await bob.page.getByRole("button", { name: "Cancel the reply" }).click();
    await bar.waitFor({ state: "hidden" });
    await act(bob.page, long, "Reply");
    await bar.waitFor();
    assert.ok(await bob.page.locator("#composer-input").evaluate((el) => el === document.activeElement), "the composer has the focus");
    await sendFromUi(bob.page, "Rayleigh scattering.");
    await bar.waitFor({ state: "hidden" });
    const sent = bob.sentFrames.find((f) => f.type === "send" && f.content === "Rayleigh scattering.");
    assert.equal(sent.reply_to, originalId);

    // Both pages show the reply with a preview of the original (author + its first 80 characters).
    for (const p of [alice.page, bob.page]) {
      const preview = item(p, "Rayleigh scattering.").locator(".reply-preview");
      await preview.waitFor();
      assert.equal(await preview.locator(".reply-author").textContent(), "seeder");
      assert.equal(await preview.locator(".reply-snippet").textContent(), snippet);
    }

    // alice is at the bottom, the original is far above; a click brings it into view, highlighted.
    const original = alice.page.locator(`#messages .msg[data-id="${originalId}"]`);
    const inView = () => alice.page.evaluate((id) => {
      const li = document.querySelector(`#messages .msg[data-id="${id}"]`).getBoundingClientRect();
      const view = document.getElementById("scroller").getBoundingClientRect();
      return li.top >= view.top && li.bottom <= view.bottom;
    }, originalId);
    assert.equal(await inView(), false, "the original starts out of view");
    await item(alice.page, "Rayleigh scattering.").locator(".reply-preview").click();
    await alice.page.locator(`#messages .msg.highlight[data-id="${originalId}"]`).waitFor();
    assert.equal(await inView(), true);
    await original.and(alice.page.locator(".highlight")).waitFor({ state: "detached" }); // it fades

    // The original is deleted: the preview says so.
    await seeder.request({ type: "delete", room: "replies", id: originalId });
    await item(alice.page, "Rayleigh scattering.").locator(".reply-snippet", { hasText: "message deleted" }).waitFor();
    seeder.close();
    assert.deepEqual(alice.errors, []);
    assert.deepEqual(bob.errors, []);
  } finally {
    await closeAll();
  }
});

test("reply: an original older than what is loaded shows as not loaded, until a history page brings it", { timeout: TEST_TIMEOUT_MS }, async () => {
  const seeder = await nodeUser(server.url, "seeder", "replies-old");
  await seeder.sendAll("replies-old", ["ancient question"]);
  const ancient = await seeder.messageId("replies-old", "ancient question");
  await seeder.sendAll("replies-old", Array.from({ length: 60 }, (_, i) => `filler ${i + 1}`));
  await seeder.request({ type: "react", room: "replies-old", id: ancient, emoji: "😮" });
  await seeder.request({ type: "send", room: "replies-old", content: "late answer", reply_to: ancient });
  seeder.close();

  const alice = await user("alice", { path: "/#/room/replies-old" });
  const page = alice.page;
  try {
    await item(page, "late answer").locator(".reply-preview.missing .reply-snippet", { hasText: "original not loaded" }).waitFor();
    // The replay held the reaction to the unloaded original: it was ignored, and
    // the history page brings the original in its current state, reaction included.
    await page.locator("#scroller").evaluate((el) => (el.scrollTop = 0));
    await item(page, "ancient question").waitFor();
    await chipCount(page, "ancient question", "😮", 1);
    await item(page, "late answer").locator(".reply-snippet", { hasText: "ancient question" }).waitFor();
    await item(page, "late answer").locator(".reply-preview").click();
    await page.locator(`#messages .msg.highlight[data-id="${ancient}"]`).waitFor();
    assert.deepEqual(alice.errors, []);
  } finally {
    await closeAll();
  }
});

test("across a reconnect, edits, deletes, reactions and replies made meanwhile converge, and own changes made offline are sent once", { timeout: TEST_TIMEOUT_MS }, async () => {
  const dir = tempDir();
  const port = await freePort();
  let own = await startServer({ port, dir });
  const u = await openUser(browser, own.url, "alice", { path: "/#/room/recon" });
  const page = u.page;
  let fresh = null;
  try {
    const bob = await nodeUser(own.url, "bob", "recon");
    await bob.sendAll("recon", ["bob one", "bob two"]);
    const [one, two] = [await bob.messageId("recon", "bob one"), await bob.messageId("recon", "bob two")];
    await sendFromUi(page, "alice one");
    const mine = await bob.messageId("recon", "alice one");
    await bob.request({ type: "react", room: "recon", id: two, emoji: "🎉" });
    await act(page, "bob one", "Add reaction");
    await page.getByRole("button", { name: "React with 👍" }).click();
    await chipCount(page, "bob two", "🎉", 1);
    await bob.next((f) => f.type === "reaction" && f.emoji === "👍");
    bob.close();

    // The server goes away. alice edits her message (Up) and takes her 👍 back while offline.
    await own.stop();
    await page.locator('#banner[data-state="waiting"], #banner[data-state="connecting"]').first().waitFor();
    const seenBefore = Math.max(...u.receivedFrames.filter((f) => f.room === "recon" && Number.isInteger(f.seq) && f.type !== "ack").map((f) => f.seq));
    await page.locator("#composer-input").press("ArrowUp");
    await page.getByRole("textbox", { name: "Edit message" }).fill("alice one, edited offline");
    await page.getByRole("textbox", { name: "Edit message" }).press("Enter");
    await item(page, "alice one, edited offline").locator(".msg-status", { hasText: "Saving…" }).waitFor();
    await chip(page, "bob one", "👍").click();
    await chipCount(page, "bob one", "👍", 0); // shown at once, pending

    // The server comes back; while the page is still cut off, bob changes things.
    await u.context.setOffline(true);
    own = await startServer({ port, dir });
    const bob2 = await WsClient.connect(own.url, bob.token); // the same user, on a new connection
    await bob2.join("recon", { history: 0 });
    await bob2.request({ type: "edit", room: "recon", id: one, content: "bob one, edited meanwhile" });
    await bob2.request({ type: "react", room: "recon", id: mine, emoji: "❤️" });
    await bob2.request({ type: "unreact", room: "recon", id: two, emoji: "🎉" });
    await bob2.request({ type: "react", room: "recon", id: two, emoji: "😢" });
    await bob2.request({ type: "send", room: "recon", content: "bob three", reply_to: mine });
    await bob2.request({ type: "send", room: "recon", content: "bob doomed" });
    const doomed = await bob2.messageId("recon", "bob doomed");
    await bob2.request({ type: "react", room: "recon", id: doomed, emoji: "👍" });
    await bob2.request({ type: "delete", room: "recon", id: doomed });
    await u.context.setOffline(false);

    // alice's page catches up (replay with `since`), then her own changes go out.
    await item(page, "bob doomed").waitFor({ state: "detached", timeout: 30000 });
    await page.locator("#banner").waitFor({ state: "hidden" });
    await page.locator("#messages .msg.saving").waitFor({ state: "detached" });
    await bob2.next((f) => f.type === "edited" && f.content === "alice one, edited offline");
    await bob2.next((f) => f.type === "reaction" && f.emoji === "👍" && f.target === one && f.added === false);
    await chipCount(page, "bob two", "🎉", 0);

    const expected = [
      { text: "bob one, edited meanwhile", edited: true, deleted: false, reply: null, reactions: [] },
      { text: "bob two", edited: false, deleted: false, reply: null, reactions: ["😢 1"] },
      { text: "alice one, edited offline", edited: true, deleted: false, reply: null, reactions: ["❤️ 1"] },
      { text: "bob three", edited: false, deleted: false, reply: ["alice", "alice one, edited offline"], reactions: [] },
      { text: "message deleted", edited: false, deleted: true, reply: null, reactions: [] },
    ];
    const strip = (state) => state.map(({ seq, ...rest }) => rest);
    await page.waitForFunction((n) => document.querySelectorAll("#messages .msg[data-seq]").length === n, expected.length);
    const shown = await shownState(page);
    assert.deepEqual(strip(shown), expected);

    // The page rejoined with since = the last seq it had, and sent each offline change once, with one ref.
    const joins = u.sentFrames.filter((f) => f.type === "join" && f.room === "recon");
    assert.deepEqual(joins.at(-1), { type: "join", room: "recon", since: seenBefore });
    assert.equal(u.receivedFrames.filter((f) => f.type === "joined" && f.room === "recon").at(-1).recovered, true);
    for (const type of ["edit", "unreact"]) {
      const frames = u.sentFrames.filter((f) => f.type === type);
      assert.ok(frames.length >= 1 && frames.every((f) => f.ref === frames[0].ref), `${type} resends reuse the ref`);
    }
    assert.equal(bob2.frames.filter((f) => f.type === "edited" && f.target === mine).length, 1, "alice's edit was stored once");

    // A page opened now (replay from scratch) and the history API agree with alice's page.
    fresh = await openUser(browser, own.url, "carol", { path: "/#/room/recon" });
    await item(fresh.page, "bob three").waitFor();
    await fresh.page.waitForFunction((n) => document.querySelectorAll("#messages .msg[data-seq]").length === n, expected.length);
    assert.deepEqual(await shownState(fresh.page), shown);
    const history = await (await fetch(`${own.url}/api/rooms/recon/messages`)).json();
    assert.deepEqual(history.messages.map((m) => [m.seq, m.deleted ? "message deleted" : m.content, (m.reactions ?? []).map((r) => `${r.emoji} ${r.count}`)]),
      shown.map((m) => [m.seq, m.text, m.reactions]));
    bob2.close();
    assert.deepEqual(u.errors, []);
  } finally {
    await fresh?.context.close();
    await u.context.close();
    await own.stop();
    removeDir(dir);
  }
});

test("a moderator (token claim mod: true) gets Delete on everyone's messages, and deletes for all", { timeout: TEST_TIMEOUT_MS }, async () => {
  const bob = await user("bob", { path: "/#/room/moderated" });
  const carol = await nodeUser(server.url, "carol", "moderated");
  const context = await browser.newContext({ viewport: { width: 1200, height: 750 }, locale: "en-US" });
  contexts.push(context);
  const page = await context.newPage();
  try {
    await sendFromUi(bob.page, "spam spam spam");
    await item(bob.page, "spam spam spam").waitFor();

    // ann signs in with a moderator token through the token form.
    await page.goto(`${server.url}/#/room/moderated`);
    await page.getByText("Sign in with a token").click();
    await page.getByLabel("Access token").fill(mintToken({ sub: "mod-ann", name: "ann", mod: true }));
    await page.getByRole("button", { name: "Sign in with token" }).click();
    await item(page, "spam spam spam").waitFor();
    await act(page, "spam spam spam", "Delete");
    await page.getByRole("dialog", { name: "Delete this message?" }).getByRole("button", { name: "Delete" }).click();
    await item(bob.page, "message deleted").waitFor();
    await item(page, "message deleted").waitFor();
    const deleted = await carol.next((f) => f.type === "deleted");
    assert.equal(deleted.user_id, "mod-ann", "the deleted frame names the moderator");
    carol.close();
    assert.deepEqual(bob.errors, []);
  } finally {
    await closeAll();
  }
});

test("a room whose newest events are all changes still shows its messages, in their current state", { timeout: TEST_TIMEOUT_MS }, async () => {
  // The join replays the newest 50 *events*: here only edits of a message it
  // does not replay. The page then loads the newest history page.
  const seeder = await nodeUser(server.url, "seeder", "busy-edits");
  await seeder.sendAll("busy-edits", ["draft 0"]);
  const id = await seeder.messageId("busy-edits", "draft 0");
  for (let i = 1; i <= 55; i++) await seeder.request({ type: "edit", room: "busy-edits", id, content: `draft ${i}` });
  seeder.close();
  const alice = await user("alice", { path: "/#/room/busy-edits" });
  try {
    await item(alice.page, "draft 55").locator(".msg-edited").waitFor();
    await alice.page.locator("#history-status", { hasText: "This is the very beginning of #busy-edits." }).waitFor();
    assert.deepEqual((await shownState(alice.page)).map((m) => [m.seq, m.text]), [[1, "draft 55"]]);
    const joined = alice.receivedFrames.find((f) => f.type === "joined" && f.room === "busy-edits");
    assert.equal(joined.last_seq, 56);
    assert.deepEqual(alice.errors, []);
  } finally {
    await closeAll();
  }
});

// ------------------------ private rooms, direct messages, moderation, read markers (docs/protocol.md 7b)

/** The link of a room in one of the sidebar's sections: "#room-list" (Rooms) or "#dm-list" (Direct messages). */
const roomLink = (page, list, text) => page.locator(`${list} .room-link`, { hasText: text });

/** A system line (membership event) in the room in view. */
const systemLine = (page, text) => page.locator("#messages .sys", { hasText: text });

/** The name button of a person in the people panel. */
const memberButton = (page, name) => page.locator("#member-list .member", { hasText: name }).getByRole("button", { name, exact: true });

/** Opens a person's dialog from the people panel. */
async function personMenu(page, name) {
  await memberButton(page, name).click();
  const dialog = page.getByRole("dialog", { name, exact: true });
  await dialog.waitFor();
  return dialog;
}

/** Creates a room through the "New room" dialog, inviting people picked from "people you've seen" and/or by id. */
async function createRoomFromUi(page, name, { kind = "private", pick = [], ids = [] } = {}) {
  await page.getByRole("button", { name: "New room" }).click();
  const dialog = page.getByRole("dialog", { name: "New room" });
  await dialog.getByLabel("Name", { exact: true }).fill(name);
  if (kind === "public") await dialog.getByRole("radio", { name: /Public/ }).check();
  for (const person of pick) await dialog.locator(".person-pick", { hasText: person }).locator("input").check();
  if (ids.length) await dialog.getByLabel("Or invite by user id").fill(ids.join(", "));
  await dialog.getByRole("button", { name: "Create" }).click();
  await dialog.waitFor({ state: "hidden" });
  await page.waitForURL(new RegExp(`#/room/${escapeRe(name)}$`));
}

/** The error frames a page received (the protocol's refusals). */
const errorFrames = (u) => u.receivedFrames.filter((f) => f.type === "error");

/** The page's token (localStorage). */
const tokenOf = (page) => page.evaluate(() => localStorage.getItem("confab.token"));

test("private room: created from the dialog with someone seen invited, who sees it live; a non-member can neither see nor open it; invite by id", { timeout: 90000 }, async () => {
  const alice = await user("alice", { path: "/#/room/pr-lobby" });
  const bob = await user("bob", { path: "/#/room/pr-lobby" });
  const carol = await user("carol", { path: "/#/room/pr-lobby" });
  try {
    await alice.page.locator("#member-list .member", { hasText: "carol" }).waitFor();

    // The dialog: private by default; bob is offered among the people alice has seen.
    await alice.page.getByRole("button", { name: "New room" }).click();
    const dialog = alice.page.getByRole("dialog", { name: "New room" });
    assert.equal(await dialog.getByRole("radio", { name: /Private/ }).isChecked(), true);
    assert.deepEqual((await dialog.locator(".person-pick .pick-name").allTextContents()).sort(), ["bob", "carol"]);
    await dialog.getByRole("button", { name: "Cancel" }).click();
    await createRoomFromUi(alice.page, "team", { pick: ["bob"] });

    // alice: in Rooms with a lock, the title too; the creation and the invitation are system lines.
    await roomLink(alice.page, "#room-list", "team").locator(".lock").waitFor();
    assert.equal(await alice.page.locator('#room-list li[data-room="team"]').getAttribute("data-kind"), "private");
    await alice.page.locator('#room-title[data-kind="private"] .lock').waitFor();
    await systemLine(alice.page, "alice created this private room").waitFor();
    await systemLine(alice.page, "alice invited bob").waitFor();
    await alice.page.locator("#member-list .member", { hasText: "alice" }).locator(".role-owner").waitFor();

    // bob: it appears without a reload (room_added), with its lock; he opens it and writes.
    const bobTeam = roomLink(bob.page, "#room-list", "team");
    await bobTeam.locator(".lock").waitFor();
    await bobTeam.click();
    await systemLine(bob.page, "alice invited bob").waitFor();
    await sendFromUi(bob.page, "hi team");
    await message(alice.page, "hi team").waitFor();
    assert.equal(await bob.page.locator("#invite-people").isVisible(), false, "a member does not invite");

    // carol is not a member: not in her lists, not in her /api/rooms, and a deep link is refused.
    assert.equal(await carol.page.locator("#sidebar .room-link", { hasText: "team" }).count(), 0);
    const listed = await api(server.url, await tokenOf(carol.page), "GET", "/api/rooms");
    assert.ok(!listed.rooms.some((r) => r.name === "team"), JSON.stringify(listed.rooms));
    await carol.page.goto(`${server.url}/#/room/team`);
    await carol.page.locator("#toast", { hasText: "Can't open #team" }).waitFor();
    await carol.page.locator("#sidebar .room-link", { hasText: "team" }).waitFor({ state: "detached" });
    assert.equal(await message(carol.page, "hi team").count(), 0);

    // Invite by user id (dave, whom alice never saw), then carol, picked from the people seen.
    const dave = await nodeUser(server.url, "dave");
    await alice.page.getByRole("button", { name: "Invite", exact: true }).click();
    const invite = alice.page.getByRole("dialog", { name: "Invite people to #team" });
    assert.deepEqual(await invite.locator(".person-pick .pick-name").allTextContents(), ["carol"], "members are not offered");
    await invite.getByLabel("User id").fill(dave.user.id);
    await invite.getByLabel("Their name (optional)").fill("dave");
    await invite.getByRole("button", { name: "Invite", exact: true }).click();
    const added = await dave.next((f) => f.type === "room_added" && f.room === "team");
    assert.equal(added.kind, "private");
    assert.equal(added.by.name, "alice");
    await systemLine(alice.page, "alice invited dave").waitFor();
    await invite.getByRole("button", { name: "Invite carol" }).click();
    await invite.getByRole("button", { name: "carol: invited" }).waitFor();
    await invite.getByRole("button", { name: "Close" }).click();
    await roomLink(carol.page, "#room-list", "team").click();
    await message(carol.page, "hi team").waitFor();
    await alice.page.locator("#member-list .member", { hasText: "dave" }).waitFor();

    // carol leaves again (confirmed: she'd need a new invitation): gone from her list; the others see "carol left".
    await carol.page.getByRole("button", { name: "Leave", exact: true }).click();
    const confirm = carol.page.getByRole("dialog", { name: "Leave #team?" });
    await confirm.getByRole("button", { name: "Leave" }).click();
    await carol.page.locator("#sidebar .room-link", { hasText: "team" }).waitFor({ state: "detached" });
    await systemLine(alice.page, "carol left").waitFor();
    await alice.page.locator("#member-list .member", { hasText: "carol" }).waitFor({ state: "detached" });
    await carol.page.waitForURL(/#\/room\/pr-lobby$/);

    // A reload keeps the room (it comes from /api/me/rooms, not from this page's memory).
    await bob.page.evaluate(() => localStorage.removeItem("confab.rooms"));
    await bob.page.reload();
    await roomLink(bob.page, "#room-list", "team").locator(".lock").waitFor();
    dave.close();
    for (const u of [alice, bob, carol]) assert.deepEqual(u.errors, []);
    assert.deepEqual(errorFrames(alice), []);
    assert.deepEqual(errorFrames(bob), []);
    assert.deepEqual(errorFrames(carol).map((f) => [f.code, f.room]), [["forbidden_room", "team"]]);
  } finally {
    await closeAll();
  }
});

test("direct messages: started from a member's name or a message author's, listed under Direct messages by the other user's name", { timeout: TEST_TIMEOUT_MS }, async () => {
  const alice = await user("alice", { path: "/#/room/dm-lobby" });
  const bob = await user("bob", { path: "/#/room/dm-lobby" });
  try {
    // From the people panel: bob's name opens his menu; alice is no moderator here, so it only offers a message.
    const menu = await personMenu(alice.page, "bob");
    assert.equal(await menu.getByRole("button", { name: "Kick" }).isVisible(), false);
    assert.equal(await menu.getByRole("button", { name: "Ban" }).isVisible(), false);
    await menu.getByRole("button", { name: "Send a direct message" }).click();
    await alice.page.waitForURL(/#\/room\/dm:[0-9a-f]{40}$/);
    const dm = decodeURIComponent(new URL(alice.page.url()).hash.slice("#/room/".length));
    await alice.page.locator('#room-title[data-kind="direct"]', { hasText: "bob" }).waitFor();
    await roomLink(alice.page, "#dm-list", "bob").waitFor();
    assert.deepEqual(await alice.page.locator("#room-list .room-name").allTextContents(), ["dm-lobby"]);
    await systemLine(alice.page, "alice started this conversation").waitFor();

    // bob: the conversation shows up by itself, named "alice", under Direct messages.
    const bobDm = roomLink(bob.page, "#dm-list", "alice");
    await bobDm.waitFor();
    assert.equal(await bobDm.getAttribute("href"), `#/room/${dm}`);
    assert.deepEqual(await bob.page.locator("#room-list .room-name").allTextContents(), ["dm-lobby"]);
    await sendFromUi(alice.page, "psst bob");
    await bobDm.locator(".badge.unread", { hasText: /^1$/ }).waitFor();
    await bobDm.click();
    await message(bob.page, "psst bob").waitFor();
    await bobDm.locator(".badge").waitFor({ state: "detached" });

    // From a message author: bob clicks alice's name in dm-lobby and gets the same conversation back.
    await roomLink(alice.page, "#room-list", "dm-lobby").click();
    await sendFromUi(alice.page, "in the lobby");
    await roomLink(bob.page, "#room-list", "dm-lobby").click();
    await item(bob.page, "in the lobby").locator("button.msg-author", { hasText: "alice" }).click();
    await bob.page.getByRole("dialog", { name: "alice", exact: true }).getByRole("button", { name: "Send a direct message" }).click();
    await bob.page.waitForURL((url) => decodeURIComponent(url.hash) === `#/room/${dm}`);
    await sendFromUi(bob.page, "right here");
    await roomLink(alice.page, "#dm-list", "bob").locator(".badge.unread", { hasText: /^1$/ }).waitFor();
    assert.equal(await bob.page.locator("#dm-list .room-link").count(), 1, "one conversation per pair");
    assert.equal(await bob.page.locator("#leave-room").isVisible(), false, "a direct room can't be left");

    // "+" next to Direct messages offers the people seen; picking bob opens the same conversation.
    await alice.page.getByRole("button", { name: "New direct message" }).click();
    const picker = alice.page.getByRole("dialog", { name: "New direct message" });
    await picker.getByRole("button", { name: "Message bob" }).click();
    await picker.waitFor({ state: "hidden" });
    await alice.page.waitForURL((url) => decodeURIComponent(url.hash) === `#/room/${dm}`);
    await message(alice.page, "right here").waitFor();
    assert.deepEqual(alice.errors, []);
    assert.deepEqual(errorFrames(alice), []);
    assert.deepEqual(errorFrames(bob), []);
    assert.deepEqual(bob.errors, []);
  } finally {
    await closeAll();
  }
});

test("unread and mention badges agree on two pages of the same user and clear on both when one reads; the new-messages line", { timeout: 90000 }, async () => {
  const { token, user: me } = await guestLogin(server.url, "alice");
  const a1 = await user("alice", { token, path: "/#/room/badges-lobby" });
  const a2 = await user("alice", { token, path: "/#/room/badges-lobby" });
  const bob = await nodeUser(server.url, "bob");
  try {
    const { room } = await api(server.url, bob.token, "POST", "/api/dm", { user: me.id, name: "alice" });
    assert.equal(room.kind, "direct");
    await bob.join(room.name, { history: 0 });
    await bob.sendAll(room.name, ["one", "hey @Alice, look", "three"]);
    const link = (page) => roomLink(page, "#dm-list", "bob");
    for (const p of [a1.page, a2.page]) {
      await link(p).locator(".badge.unread", { hasText: /^3$/ }).waitFor();
      await link(p).locator(".badge.mention", { hasText: /^@1$/ }).waitFor();
    }
    assert.equal(await a1.page.title(), "(3) #badges-lobby · confab");

    // a1 opens it: the line sits above the first unread message, and both pages' badges go.
    await link(a1.page).click();
    await message(a1.page, "three").waitFor();
    const order = (page) => page.locator("#messages > li:not(.day)").evaluateAll((items) =>
      items.map((li) => (li.classList.contains("new-divider") ? "--new--" : li.classList.contains("sys") ? "sys" : li.querySelector(".msg-text").textContent)));
    assert.deepEqual((await order(a1.page)).filter((t) => t !== "sys"), ["--new--", "one", "hey @Alice, look", "three"]);
    await systemLine(a1.page, "bob started this conversation").waitFor();
    for (const p of [a1.page, a2.page]) await link(p).locator(".badge").waitFor({ state: "detached" });
    const newest = Math.max(...bob.frames.filter((f) => f.type === "message" && f.room === room.name).map((f) => f.seq));
    assert.deepEqual(a1.sentFrames.filter((f) => f.type === "read").at(-1), { type: "read", room: room.name, seq: newest });
    assert.ok(a2.receivedFrames.some((f) => f.type === "read" && f.room === room.name && f.seq === newest), "the other page was told");
    assert.equal(a2.sentFrames.filter((f) => f.type === "read" && f.room === room.name).length, 0, "a page that did not look marks nothing");

    // Back in the lobby; two more, no mention: 2 on both. a2 reads them this time: the line is above "four".
    await roomLink(a1.page, "#room-list", "badges-lobby").click();
    await bob.sendAll(room.name, ["four", "five"]);
    for (const p of [a1.page, a2.page]) {
      await link(p).locator(".badge.unread", { hasText: /^2$/ }).waitFor();
      assert.equal(await link(p).locator(".badge.mention").count(), 0);
    }
    await link(a2.page).click();
    await message(a2.page, "five").waitFor();
    assert.deepEqual((await order(a2.page)).filter((t) => t !== "sys"), ["one", "hey @Alice, look", "three", "--new--", "four", "five"]);
    for (const p of [a1.page, a2.page]) await link(p).locator(".badge").waitFor({ state: "detached" });

    // While a2 looks at the room, new messages are read at once: no badge, and the line stays where it was.
    await bob.sendAll(room.name, ["six"]);
    await message(a2.page, "six").waitFor();
    await a2.page.waitForFunction(() => document.querySelectorAll("#messages .new-divider").length === 1);
    await a1.page.waitForTimeout(1500); // a badge would have shown by now
    assert.equal(await link(a1.page).locator(".badge").count(), 0);
    assert.equal(await link(a2.page).locator(".badge").count(), 0);

    // The server kept the marker (markers are written in batches): /api/me/rooms and a reload show nothing unread, and no line.
    let entry;
    for (let i = 0; i < 50; i++) {
      entry = (await api(server.url, token, "GET", "/api/me/rooms")).rooms.find((r) => r.name === room.name);
      if (entry?.unread === 0) break;
      await new Promise((ok) => setTimeout(ok, 100));
    }
    assert.deepEqual([entry.kind, entry.unread, entry.mentions], ["direct", 0, 0]);
    await a1.page.reload();
    await link(a1.page).waitFor();
    await link(a1.page).click();
    await message(a1.page, "six").waitFor();
    assert.equal(await a1.page.locator("#messages .new-divider").count(), 0);
    bob.close();
    assert.deepEqual(a1.errors, []);
    assert.deepEqual(a2.errors, []);
    assert.deepEqual(errorFrames(a1), []);
    assert.deepEqual(errorFrames(a2), []);
  } finally {
    await closeAll();
  }
});

test("moderation from the member menu: mute (the muted user's send is refused with the time left), kick and ban; only owners, admins and server admins get it", { timeout: 120000 }, async () => {
  const alice = await user("alice", { path: "/#/room/mod-lobby" });
  const bob = await user("bob", { path: "/#/room/mod-lobby" });
  const carol = await user("carol", { path: "/#/room/mod-lobby" });
  try {
    await alice.page.locator("#member-list .member", { hasText: "carol" }).waitFor();
    await createRoomFromUi(alice.page, "crew", { pick: ["bob", "carol"] });
    await roomLink(bob.page, "#room-list", "crew").click();
    await roomLink(carol.page, "#room-list", "crew").click();
    await bob.page.locator("#member-list .member", { hasText: "carol" }).waitFor();

    // bob is a plain member: carol's menu has no moderation.
    let menu = await personMenu(bob.page, "carol");
    assert.equal(await menu.getByRole("button", { name: "Kick" }).isVisible(), false);
    await menu.getByRole("button", { name: "Close" }).click();

    // alice mutes carol for 10 minutes: everyone sees the line, carol's send is refused with the time left.
    menu = await personMenu(alice.page, "carol");
    await menu.getByLabel("Mute for").selectOption("600");
    await menu.getByRole("button", { name: "Mute", exact: true }).click();
    await menu.waitFor({ state: "hidden" });
    for (const u of [alice, bob, carol]) await systemLine(u.page, "carol was muted by alice for 10 minutes").waitFor();
    await carol.page.locator("#muted-note", { hasText: "You are muted in this room until" }).waitFor();
    await sendFromUi(carol.page, "can I speak?");
    const failed = carol.page.locator('#messages .msg[data-status="failed"]');
    await failed.waitFor();
    assert.match(await failed.locator(".msg-error").textContent(), /^Not sent: you are muted in this room for (9|10) minutes more$/);
    await alice.page.locator("#member-list .member", { hasText: "carol" }).locator(".role-muted").waitFor();
    assert.equal(await message(bob.page, "can I speak?").count(), 0);

    // Unmute from the same menu.
    menu = await personMenu(alice.page, "carol");
    await menu.getByRole("button", { name: "Unmute" }).click();
    await systemLine(carol.page, "carol was unmuted by alice").waitFor();
    await carol.page.locator("#muted-note").waitFor({ state: "hidden" });
    await failed.getByRole("button", { name: "Retry" }).click();
    await message(bob.page, "can I speak?").waitFor();

    // alice kicks bob: his page says so, he can't write, the room is greyed until he closes it.
    menu = await personMenu(alice.page, "bob");
    await menu.getByRole("button", { name: "Kick" }).click();
    await menu.waitFor({ state: "hidden" });
    await bob.page.locator("#toast", { hasText: "You were kicked from #crew by alice." }).waitFor();
    await bob.page.locator("#room-notice", { hasText: "You were kicked from this room by alice." }).waitFor();
    assert.equal(await bob.page.locator("#composer-input").isDisabled(), true);
    assert.equal(await bob.page.getByRole("button", { name: "Join again" }).isVisible(), false, "a private room needs an invitation");
    await roomLink(bob.page, "#room-list", "crew").and(bob.page.locator(".removed")).waitFor();
    for (const u of [alice, carol]) await systemLine(u.page, "bob was kicked by alice").waitFor();
    await alice.page.locator("#member-list .member", { hasText: "bob" }).waitFor({ state: "detached" });
    await bob.page.getByRole("button", { name: "Close the room" }).click();
    await roomLink(bob.page, "#room-list", "crew").waitFor({ state: "detached" });
    await sendFromUi(alice.page, "bob can't read this");
    await message(carol.page, "bob can't read this").waitFor();
    assert.ok(!bob.receivedFrames.some((f) => f.content === "bob can't read this"));

    // A public room alice owns: she bans carol, who can't come back until unbanned.
    await createRoomFromUi(alice.page, "hall", { kind: "public" });
    await carol.page.getByLabel("Room to join").fill("hall");
    await carol.page.getByRole("button", { name: "Join", exact: true }).click();
    await alice.page.locator("#member-list .member", { hasText: "carol" }).waitFor();
    menu = await personMenu(alice.page, "carol");
    await menu.getByRole("button", { name: "Ban" }).click();
    await carol.page.locator("#room-notice", { hasText: "You were banned from this room by alice." }).waitFor();
    assert.equal(await carol.page.getByRole("button", { name: "Join again" }).isVisible(), false);
    await systemLine(alice.page, "carol was banned by alice").waitFor();
    await alice.page.locator("#banned-list .member", { hasText: "carol" }).waitFor();
    const carolToken = await tokenOf(carol.page);
    const rejoin = await WsClient.connect(server.url, carolToken);
    rejoin.send({ type: "join", room: "hall" });
    assert.equal((await rejoin.next((f) => f.type === "error" && f.room === "hall")).code, "forbidden_room");
    await alice.page.getByRole("button", { name: "Unban carol" }).click();
    await systemLine(alice.page, "carol was unbanned by alice").waitFor();
    await alice.page.locator("#banned-list .member").waitFor({ state: "detached" });
    await rejoin.join("hall");
    rejoin.close();

    // A server admin (token claim admin: true) moderates a room nobody owns: kicks bob from mod-lobby; bob joins again.
    const admin = await user("root", { token: mintToken({ sub: "admin-root", name: "root", admin: true }), path: "/#/room/mod-lobby" });
    menu = await personMenu(admin.page, "bob");
    await menu.getByRole("button", { name: "Kick" }).click();
    await bob.page.locator("#room-notice", { hasText: "You were kicked from this room by root." }).waitFor();
    await bob.page.getByRole("button", { name: "Join again" }).click();
    await bob.page.locator("#room-notice").waitFor({ state: "hidden" });
    await admin.page.locator("#member-list .member", { hasText: "bob" }).waitFor();
    await sendFromUi(bob.page, "back again");
    await message(admin.page, "back again").waitFor();
    for (const u of [alice, bob, carol, admin]) assert.deepEqual(u.errors, []);
    for (const u of [alice, bob, admin]) assert.deepEqual(errorFrames(u), []);
    assert.deepEqual(errorFrames(carol).map((f) => f.code), ["muted"]);
  } finally {
    await closeAll();
  }
});

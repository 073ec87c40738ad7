// Takes docs/screenshot.png: a real conversation between three users on a
// fresh server, seen by alice at 1200x750. `npm run screenshot --prefix tests/browser`
// (needs target/debug/confab and /usr/bin/chromium, like the tests).

import { join } from "node:path";
import { api, guestLogin, launchBrowser, nodeUser, openUser, removeDir, repoRoot, sendFromUi, startServer } from "./harness.mjs";

const out = process.argv[2] ?? join(repoRoot, "docs/screenshot.png");
const server = await startServer();
const browser = await launchBrowser();
const pause = (ms) => new Promise((ok) => setTimeout(ok, ms));

try {
  const dave = await nodeUser(server.url, "dave", "ops");
  const aliceLogin = await guestLogin(server.url, "alice");
  const alice = await openUser(browser, server.url, "alice", { path: "/#/room/design", token: aliceLogin.token });
  const bob = await openUser(browser, server.url, "bob", { path: "/#/room/general" });
  const carol = await nodeUser(server.url, "carol", "general");

  // alice has three rooms open and ends up in #general.
  await alice.page.goto(`${server.url}/#/room/random`);
  await alice.page.goto(`${server.url}/#/room/general`);
  await alice.page.locator("#member-list .member", { hasText: "carol" }).waitFor();

  const say = async (who, text) => {
    if (who.page) await sendFromUi(who.page, text);
    else await who.sendAll("general", [text]);
    await alice.page.locator("#messages .msg[data-seq] .msg-text", { hasText: text.split("\n")[0] }).waitFor();
    await pause(150);
  };
  await say(carol, "Standup notes are up. Short one today.");
  await say(alice, "Thanks, carol!");
  await say(bob, "Morning! Did the cluster deploy go out?");
  await say(alice, "Yes, three instances behind the load balancer since 9:40.");
  await say(alice, "Postgres + Redis, and still one gap-free seq per room.");
  await say(carol, "I restarted instance 2 over lunch. My tab reconnected by itself and picked up right where it left off.");
  await say(bob, "No duplicates?");
  await say(carol, "None. It rejoined with `since` and replayed the three messages it had missed.");
  // Reactions, an edit and a reply: changes are room events too.
  const deployed = await carol.messageId("general", "Yes, three instances behind the load balancer since 9:40.");
  await carol.request({ type: "react", room: "general", id: deployed, emoji: "🎉" });
  await alice.page.locator("#messages .msg .reaction", { hasText: "🎉" }).first().waitFor();
  const asked = await carol.messageId("general", "No duplicates?");
  await carol.request({ type: "react", room: "general", id: asked, emoji: "👍" });
  const answer = await carol.messageId("general", "None. It rejoined with `since` and replayed the three messages it had missed.");
  await carol.request({ type: "edit", room: "general", id: answer, content: "None. It rejoined with `since` and replayed the four messages it had missed." });
  await alice.page.locator("#messages .msg-text", { hasText: "the four messages" }).waitFor();
  await say(bob, "Then the web UI ships today.\nRelease notes are in the usual doc, reviews welcome.");

  // A private room alice was invited to, and a direct message from dave.
  await api(server.url, carol.token, "POST", "/api/rooms", { name: "leads", kind: "private" });
  await api(server.url, carol.token, "POST", "/api/rooms/leads/members", { user: aliceLogin.user.id, name: "alice" });
  const dm = await api(server.url, dave.token, "POST", "/api/dm", { user: aliceLogin.user.id, name: "alice" });
  await dave.join(dm.room.name, { history: 0 });
  await dave.sendAll(dm.room.name, ["@alice can you look at the ops dashboard when you have a minute?"]);
  await alice.page.locator("#room-list .room-link", { hasText: "leads" }).waitFor();
  await alice.page.locator("#dm-list .room-link", { hasText: "dave" }).locator(".badge").first().waitFor();

  // Some life elsewhere: unread messages in #design, and carol typing.
  await bob.page.goto(`${server.url}/#/room/design`);
  await bob.page.locator("#room-title", { hasText: "design" }).waitFor();
  await sendFromUi(bob.page, "New composer spacing is in, have a look");
  await sendFromUi(bob.page, "Dark theme too");
  await alice.page.locator("#room-list .room-link", { hasText: "design" }).locator(".badge", { hasText: "2" }).waitFor();
  await alice.page.locator("#directory-list .room-link", { hasText: "ops" }).waitFor();
  carol.send({ type: "typing", room: "general" });
  await alice.page.locator("#typing", { hasText: "carol is typing…" }).waitFor();
  await alice.page.locator("#composer-input").fill("Great work, everyone");
  await alice.page.locator("#composer-input").blur();
  await alice.page.mouse.move(0, 0);
  await pause(200);
  await alice.page.screenshot({ path: out });
  console.log(`wrote ${out}`);
  carol.close();
  dave.close();
} finally {
  await browser.close();
  await server.stop();
  removeDir(server.dir);
}

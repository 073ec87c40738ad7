// The view: renders the store into the static shell of index.html and turns
// user input into calls on `actions` (see app.js). All user-supplied text is
// set with textContent (via h()), never parsed as HTML.

import { avatar, dayKey, dayLabel, formatFull, formatTime, h, reconcile, setChildren } from "./dom.js";
import { displayNameError, olderCursor, oldestSeq, roomNameError, settled } from "./store.js";

const GROUP_GAP_MS = 5 * 60 * 1000; // one user's messages closer than this share a header
const QUICK_EMOJI = ["👍", "❤️", "😂", "🎉", "😮", "😢"]; // the reaction picker
const PREVIEW_CHARS = 80; // of a quoted original (reply previews)
const HIGHLIGHT_MS = 2000; // an original jumped to from a reply stays highlighted this long
const TEXT = ".msg-text, .edit-box"; // what a message shows as its text (the scroll anchor)
const LOAD_OLDER_PX = 200; // scrolled this close to the top: fetch the previous page
const AT_BOTTOM_PX = 60;

/** The reconcile key of a stored message (see #messageItems). */
const messageKey = (m) => `m:${m.seq}:${m.id}`;

export class View {
  constructor(store, actions) {
    this.store = store;
    this.actions = actions;
    const ids = [
      "login", "guest-form", "guest-name", "token-form", "token-input", "login-error",
      "app", "sidebar", "close-rooms", "join-form", "join-name", "join-error", "room-list",
      "directory-title", "directory-list", "me-avatar", "me-name", "me-status", "sign-out",
      "open-rooms", "open-rooms-unread", "room-title", "room-sub", "open-members", "leave-room",
      "banner", "banner-text", "banner-retry", "scroller", "history-status", "messages", "empty",
      "typing", "composer", "composer-input", "send", "members", "close-members", "member-list",
      "scrim", "toast", "reply-bar", "reply-author", "reply-text", "reply-cancel",
      "confirm-delete", "confirm-delete-quote",
    ];
    this.el = Object.fromEntries(ids.map((id) => [id.replace(/-(\w)/g, (_, c) => c.toUpperCase()), document.getElementById(id)]));
    this.caches = { messages: new Map(), rooms: new Map(), directory: new Map(), members: new Map() };
    this.renderedRoom = undefined;
    this.stickToBottom = true;
    this.dirty = new Set();
    this.frame = 0;
    this.bannerTimer = 0;
    this.toastTimer = 0;
    this.wasDisconnected = false;
    this.editing = null; // {room, id, draft}: the inline edit box
    this.focusEditor = false; // put the caret in the edit box after the next render
    this.picker = null; // {room, id}: the message whose reaction picker is open
    this.replyTo = new Map(); // room -> message id the composer replies to
    this.confirming = null; // {room, id}: the message the delete dialog asks about
    this.highlightTimer = 0;
    store.subscribe((parts) => this.schedule(parts));
    this.#bindLogin();
    this.#bindChat();
  }

  // ----------------------------------------------------------- screens

  showLogin(message = "") {
    this.el.app.hidden = true;
    this.el.login.hidden = false;
    this.el.loginError.textContent = message;
    this.#setLoginBusy(false);
    this.el.guestName.focus();
  }

  showChat() {
    this.el.login.hidden = true;
    this.el.app.hidden = false;
    this.el.tokenInput.value = "";
    this.renderedRoom = undefined;
    this.schedule(["all"]);
  }

  toast(text) {
    clearTimeout(this.toastTimer);
    this.el.toast.textContent = text;
    this.el.toast.hidden = false;
    this.toastTimer = setTimeout(() => (this.el.toast.hidden = true), 6000);
  }

  focusComposer() {
    if (!window.matchMedia("(pointer: coarse)").matches) this.el.composerInput.focus();
  }

  /** After a refused edit: the edit box again, with what was typed. */
  reopenEdit(room, id, draft) {
    if (this.store.current !== room || this.editing) return;
    this.editing = { room, id, draft };
    this.focusEditor = true;
    this.schedule(["messages"]);
  }

  // ---------------------------------------------------------- rendering

  schedule(parts) {
    for (const part of parts) this.dirty.add(part);
    if (this.frame) return;
    // Background tabs get no animation frames: render on a timer there, so
    // the title's unread count still updates.
    this.frame = document.hidden ? setTimeout(() => this.flush(), 100) : requestAnimationFrame(() => this.flush());
  }

  flush() {
    this.frame = 0;
    const dirty = this.dirty;
    this.dirty = new Set();
    const all = dirty.has("all");
    const roomChanged = this.renderedRoom !== this.store.current;
    if (all || roomChanged || dirty.has("rooms") || dirty.has("members") || dirty.has("user")) {
      this.#renderRooms();
      this.#renderHeader();
      this.#renderMe();
    }
    if (all || roomChanged || dirty.has("messages") || dirty.has("rooms")) {
      this.#renderMessages();
      this.#renderReplyBar();
    }
    if (all || roomChanged || dirty.has("members")) this.#renderMembers();
    if (all || roomChanged || dirty.has("typing")) this.#renderTyping();
    if (all || dirty.has("connection")) {
      this.#renderBanner();
      this.#renderMe();
      this.#renderHeader();
    }
  }

  #renderRooms() {
    const { store } = this;
    const item = (name, { open }) => {
      const room = store.room(name);
      const online = room?.joined ? room.members.size : (store.directory.get(name)?.online ?? 0);
      const unread = room?.unread ?? 0;
      const current = store.current === name;
      const label = [name, `${online} online`, unread ? `${unread} unread` : null].filter(Boolean).join(", ");
      return {
        key: name,
        sig: `${online}|${unread}|${current}|${open}`,
        build: () =>
          h("li", { dataset: { room: name } },
            h("a", {
              className: `room-link${current ? " current" : ""}${unread ? " has-unread" : ""}`,
              href: `#/room/${name}`,
              attrs: { "aria-current": current ? "page" : null, "aria-label": label },
              on: { click: () => this.#closeDrawers() },
            },
              h("span", { className: "hash", text: "#", attrs: { "aria-hidden": "true" } }),
              h("span", { className: "room-name", text: name }),
              online ? h("span", { className: "online", text: String(online), attrs: { title: `${online} online` } }) : null,
              unread ? h("span", { className: "badge unread", text: unread > 99 ? "99+" : String(unread) }) : null,
            )),
      };
    };
    const open = [...store.rooms.keys()];
    reconcile(this.el.roomList, open.map((name) => item(name, { open: true })), this.caches.rooms);
    const others = [...store.directory.keys()].filter((name) => !store.rooms.has(name)).sort();
    reconcile(this.el.directoryList, others.map((name) => item(name, { open: false })), this.caches.directory);
    this.el.directoryTitle.hidden = others.length === 0;

    const unread = store.totalUnread();
    this.el.openRoomsUnread.hidden = unread === 0;
    this.el.openRoomsUnread.textContent = unread > 99 ? "99+" : String(unread);
    document.title = `${unread ? `(${unread}) ` : ""}${store.current ? `#${store.current} · ` : ""}confab`;
  }

  #renderHeader() {
    const room = this.store.currentRoom;
    const { roomTitle, roomSub, leaveRoom, openMembers, composerInput, send } = this.el;
    if (!room) {
      setChildren(roomTitle, "No room open");
      roomSub.textContent = "";
    } else {
      setChildren(roomTitle, h("span", { className: "hash", text: "#", attrs: { "aria-hidden": "true" } }), room.name);
      roomSub.textContent = room.joined ? `${room.members.size} online` : this.store.connection.state === "open" ? "joining…" : "offline";
    }
    leaveRoom.hidden = !room;
    openMembers.hidden = !room;
    openMembers.textContent = room?.joined ? `People · ${room.members.size}` : "People";
    composerInput.disabled = !room;
    send.disabled = !room;
    composerInput.placeholder = room ? `Message #${room.name}` : "Join a room to chat";
    composerInput.setAttribute("aria-label", room ? `Message #${room.name}` : "Message");
  }

  #renderMe() {
    const { user, connection } = this.store;
    if (!user) return;
    setChildren(this.el.meAvatar, avatar(user.id, user.name));
    this.el.meName.textContent = user.name;
    const status = { open: "Online", connecting: "Connecting…", waiting: "Offline", stopped: "Offline" }[connection.state] ?? "";
    this.el.meStatus.textContent = status;
    this.el.meStatus.dataset.state = connection.state;
  }

  #renderMessages() {
    const room = this.store.currentRoom;
    const { scroller, messages, historyStatus, empty } = this.el;
    const name = room?.name ?? null;
    if (this.renderedRoom !== name) {
      this.renderedRoom = name;
      this.editing = null;
      this.picker = null;
      this.caches.messages.clear();
      messages.replaceChildren();
      this.stickToBottom = true;
      messages.setAttribute("aria-label", name ? `Messages in #${name}` : "Messages");
    }
    empty.hidden = Boolean(room);
    if (!room) {
      historyStatus.textContent = "";
      return;
    }

    // Keep the view steady: stay at the bottom if we were there, otherwise
    // keep the text of the first visible message where it is (older pages
    // prepend, and may turn that message into a grouped one, a new element).
    const atBottom = this.stickToBottom || scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < AT_BOTTOM_PX;
    let anchor = null;
    if (!atBottom) {
      const viewTop = scroller.getBoundingClientRect().top;
      for (const li of messages.querySelectorAll(":scope > .msg[data-seq]")) {
        if (li.getBoundingClientRect().bottom > viewTop) {
          anchor = { key: li.dataset.key, top: li.querySelector(TEXT).getBoundingClientRect().top };
          break;
        }
      }
    }

    // A change to the message being edited (a reaction, say) rebuilds its
    // element: the new edit box gets the focus and the caret back.
    const active = document.activeElement;
    const caret = active?.classList.contains("edit-input") && messages.contains(active) ? [active.selectionStart, active.selectionEnd] : null;
    reconcile(messages, this.#messageItems(room), this.caches.messages);
    this.#renderHistoryStatus(room);
    const box = this.focusEditor || caret ? messages.querySelector(".edit-input") : null;
    this.focusEditor = false;
    if (box && box !== document.activeElement) {
      box.focus();
      const [start, end] = caret ?? [box.value.length, box.value.length];
      box.setSelectionRange(start, end);
      autosize(box, 300);
    }

    const anchorText = anchor && this.caches.messages.get(anchor.key)?.el.querySelector(TEXT);
    if (atBottom) scroller.scrollTop = scroller.scrollHeight;
    else if (anchorText) scroller.scrollTop += anchorText.getBoundingClientRect().top - anchor.top;
    this.stickToBottom = false;
    this.#maybeLoadOlder();
  }

  #messageItems(room) {
    const items = [];
    if (this.editing?.room === room.name) {
      const target = room.byId.get(this.editing.id);
      if (!target || target.deleted) this.editing = null; // deleted meanwhile (or the room was reloaded)
    }
    let prev = null;
    let prevDay = null;
    const daySeparator = (date) => {
      const day = dayKey(date);
      if (day === prevDay) return;
      prevDay = day;
      prev = null;
      const label = dayLabel(date);
      items.push({
        key: `d:${day}`,
        sig: label,
        build: () => h("li", { className: "day", attrs: { role: "separator", "aria-label": label } }, h("span", { text: label })),
      });
    };
    const groupsWith = (userId, date) => prev !== null && prev.user_id === userId && date - prev.date >= 0 && date - prev.date < GROUP_GAP_MS;

    for (const m of [...room.messages.values()].sort((a, b) => a.seq - b.seq)) {
      daySeparator(m.date);
      const grouped = groupsWith(m.user_id, m.date);
      // Keyed by seq *and* id: after a server reset the same seq can name a
      // different message, and its element must be rebuilt, not reused. The
      // signature changes with everything the element shows.
      const editing = this.editing?.room === room.name && this.editing.id === m.id;
      const picking = this.picker?.room === room.name && this.picker.id === m.id;
      const sig = [grouped ? "g" : "s", this.#stateSig(room, m), this.#replySig(room, m.reply_to), editing, picking, this.#canDelete(m)].join("|");
      items.push({ key: messageKey(m), sig, build: () => this.#message(room, m, grouped) });
      prev = m;
    }
    const me = this.store.user;
    for (const p of room.pending) {
      const now = new Date();
      daySeparator(now);
      const grouped = groupsWith(me?.id, now);
      items.push({ key: `p:${p.ref}`, sig: `${grouped}|${p.status}|${p.error}|${this.#replySig(room, p.reply_to)}`, build: () => this.#pending(room, p, grouped) });
      prev = { user_id: me?.id, date: now };
    }
    return items;
  }

  /** Changes whenever what a message shows changes: its stored state, the user's own pending changes to it. */
  #stateSig(room, m) {
    const own = room.changes.filter((c) => c.id === m.id).map((c) => `${c.ref}:${c.status}`).join(",");
    return `${m.rev}:${this.store.isOwn(m.user_id)}:${own}`;
  }

  #replySig(room, id) {
    if (!id) return "";
    const target = room.byId.get(id);
    return target ? `${id}:${this.#stateSig(room, target)}` : `${id}:absent`;
  }

  #canDelete(m) {
    return this.store.isOwn(m.user_id) || this.store.moderator;
  }

  #message(room, m, grouped) {
    const own = this.store.isOwn(m.user_id);
    const shown = this.store.shown(room, m);
    const editing = this.editing?.room === room.name && this.editing.id === m.id && !shown.deleted;
    const time = h("time", { className: "msg-time", text: formatTime(m.date), attrs: { datetime: m.timestamp, title: formatFull(m.date) } });
    const classes = ["msg", grouped && "grouped", own && "own", shown.deleted && "deleted", shown.deleting && "deleting", shown.saving && "saving", editing && "editing"];
    // Focusable (not in the tab order) so that a tap on a touch screen shows its actions.
    const li = h("li", { className: classes.filter(Boolean).join(" "), dataset: { seq: m.seq, id: m.id, user: m.user_id, key: messageKey(m) }, attrs: { tabindex: "-1" } });

    let content;
    if (shown.deleted) content = h("div", { className: "msg-content" }, h("div", { className: "msg-text tombstone", text: "message deleted" }));
    else if (editing) content = this.#editor();
    else {
      content = h("div", { className: "msg-content" },
        h("div", { className: "msg-text", text: shown.content }),
        shown.edited ? h("span", { className: "msg-edited", text: " (edited)", attrs: { title: m.edited_at ? `Edited ${formatFull(new Date(m.edited_at))}` : null } }) : null);
    }
    const picking = this.picker?.room === room.name && this.picker.id === m.id && !shown.deleted;
    const body = [
      m.reply_to ? this.#replyPreview(room, m.reply_to) : null,
      content,
      shown.deleting ? this.#status("Deleting…") : shown.saving ? this.#status("Saving…") : null,
      shown.deleted ? null : this.#reactions(room, m, shown),
      picking ? this.#picker(room, m, shown) : null,
    ];

    if (grouped) {
      li.append(h("div", { className: "gutter" }, time), h("div", { className: "msg-body" }, h("span", { className: "sr-only", text: `${m.user}: ` }), body));
    } else {
      li.append(
        avatar(m.user_id, m.user),
        h("div", { className: "msg-body" },
          h("div", { className: "msg-meta" }, h("span", { className: "msg-author", text: m.user }), own ? h("span", { className: "you", text: "you" }) : null, time),
          body),
      );
    }
    if (!shown.deleted && !shown.deleting && !editing) li.append(this.#actionBar(room, m, own));
    return li;
  }

  #status(text) {
    return h("div", { className: "msg-status" }, h("span", { className: "spinner", attrs: { "aria-hidden": "true" } }), text);
  }

  /** The actions of a stored message, shown on hover and keyboard focus. */
  #actionBar(room, m, own) {
    const button = (label, text, onClick, extra) =>
      h("button", { type: "button", className: `msg-action ${extra}`, text, attrs: { "aria-label": label, title: label }, on: { click: onClick } });
    return h("div", { className: "msg-actions", attrs: { role: "toolbar", "aria-label": `Actions for the message from ${m.user}` } },
      button("Add reaction", "☺+", () => this.#togglePicker(room, m), "react"),
      button("Reply", "Reply", () => this.#startReply(room, m), "reply"),
      own ? button("Edit", "Edit", () => this.#startEdit(room, m), "edit") : null,
      this.#canDelete(m) ? button("Delete", "Delete", () => this.#confirmDelete(room, m), "delete") : null,
    );
  }

  // --------------------------------------------------------------- edits

  #editor() {
    const input = h("textarea", {
      className: "edit-input",
      rows: 1,
      value: this.editing.draft,
      attrs: { "aria-label": "Edit message", "aria-describedby": "edit-hint" },
      on: {
        input: () => {
          if (this.editing) this.editing.draft = input.value;
          autosize(input, 300);
        },
        keydown: (event) => {
          if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
            event.preventDefault();
            this.#saveEdit();
          } else if (event.key === "Escape") {
            event.preventDefault();
            event.stopPropagation();
            this.#cancelEdit();
          }
        },
      },
    });
    return h("div", { className: "edit-box" },
      input,
      h("div", { className: "edit-hint", attrs: { id: "edit-hint" } },
        "Enter to ", h("button", { type: "button", className: "link-btn", text: "save", on: { click: () => this.#saveEdit() } }),
        " · Escape to ", h("button", { type: "button", className: "link-btn", text: "cancel", on: { click: () => this.#cancelEdit() } })));
  }

  #startEdit(room, m) {
    const shown = this.store.shown(room, m);
    if (shown.deleted || shown.deleting) return;
    this.editing = { room: room.name, id: m.id, draft: shown.content };
    this.picker = null;
    this.focusEditor = true;
    this.schedule(["messages"]);
  }

  #saveEdit() {
    const editing = this.editing;
    if (!editing) return;
    const room = this.store.room(editing.room);
    const m = room?.byId.get(editing.id);
    if (!m) {
      this.#cancelEdit();
      return;
    }
    if (!editing.draft.trim()) {
      this.toast("A message can't be empty. Use Delete to remove it.");
      return;
    }
    this.editing = null;
    // Saving what is already there changes nothing: no frame.
    if (editing.draft !== this.store.shown(room, m).content) this.actions.edit(room.name, m.id, editing.draft);
    this.schedule(["messages"]);
    this.el.composerInput.focus();
  }

  #cancelEdit() {
    this.editing = null;
    this.schedule(["messages"]);
    this.el.composerInput.focus();
  }

  // ----------------------------------------------------------- reactions

  /** The message's reactions as chips with counts; a click toggles the user's own. */
  #reactions(room, m, shown) {
    if (shown.reactions.length === 0) return null;
    return h("div", { className: "reactions" }, shown.reactions.map((r) => {
      const label = `${r.emoji} ${r.count} ${r.count === 1 ? "reaction" : "reactions"}${r.mine ? ", including yours" : ""}`;
      return h("button", {
        type: "button",
        className: `reaction${r.mine ? " mine" : ""}`,
        dataset: { emoji: r.emoji },
        attrs: { "aria-pressed": String(r.mine), "aria-label": label, title: r.mine ? "Remove your reaction" : `React with ${r.emoji}` },
        on: { click: () => this.actions.react(room.name, m.id, r.emoji, !r.mine) },
      }, h("span", { className: "reaction-emoji", text: r.emoji }), h("span", { className: "count", text: String(r.count) }));
    }));
  }

  #picker(room, m, shown) {
    const mine = new Set(shown.reactions.filter((r) => r.mine).map((r) => r.emoji));
    return h("div", { className: "picker", attrs: { role: "group", "aria-label": "Pick a reaction" } }, QUICK_EMOJI.map((emoji) =>
      h("button", {
        type: "button",
        className: `picker-emoji${mine.has(emoji) ? " mine" : ""}`,
        text: emoji,
        attrs: { "aria-label": `React with ${emoji}`, "aria-pressed": String(mine.has(emoji)) },
        on: {
          click: () => {
            this.picker = null;
            this.actions.react(room.name, m.id, emoji, !mine.has(emoji));
            this.schedule(["messages"]);
          },
        },
      })));
  }

  #togglePicker(room, m) {
    const open = this.picker?.room === room.name && this.picker.id === m.id;
    this.picker = open ? null : { room: room.name, id: m.id };
    this.schedule(["messages"]);
  }

  // ------------------------------------------------------------- replies

  /** The quoted original above a reply: a button that jumps to it when it is loaded. */
  #replyPreview(room, id) {
    const target = room.byId.get(id);
    if (!target) {
      return h("div", { className: "reply-preview missing" }, h("span", { className: "reply-snippet", text: "original not loaded" }));
    }
    const shown = this.store.shown(room, target);
    return h("button", {
      type: "button",
      className: `reply-preview${shown.deleted ? " gone" : ""}`,
      dataset: { target: id },
      attrs: { title: "Show the original message" },
      on: { click: () => this.jumpTo(id) },
    },
    h("span", { className: "reply-author", text: target.user }),
    h("span", { className: "reply-snippet", text: shown.deleted ? "message deleted" : snippet(shown.content) }));
  }

  /** Scrolls to a loaded message and highlights it for a moment; false when it is not loaded. */
  jumpTo(id) {
    const li = [...this.el.messages.querySelectorAll(":scope > .msg[data-id]")].find((el) => el.dataset.id === id);
    if (!li) return false;
    this.stickToBottom = false;
    li.scrollIntoView({ block: "center" });
    for (const el of this.el.messages.querySelectorAll(".msg.highlight")) el.classList.remove("highlight");
    li.classList.add("highlight");
    clearTimeout(this.highlightTimer);
    this.highlightTimer = setTimeout(() => li.classList.remove("highlight"), HIGHLIGHT_MS);
    return true;
  }

  #startReply(room, m) {
    this.replyTo.set(room.name, m.id);
    this.picker = null;
    this.schedule(["messages"]);
    this.el.composerInput.focus();
  }

  #cancelReply() {
    if (!this.store.current || !this.replyTo.delete(this.store.current)) return false;
    this.schedule(["messages"]);
    return true;
  }

  #renderReplyBar() {
    const room = this.store.currentRoom;
    const id = room ? this.replyTo.get(room.name) : undefined;
    const target = id ? room.byId.get(id) : null;
    const { replyBar, replyAuthor, replyText } = this.el;
    if (!target) {
      if (id) this.replyTo.delete(room.name); // the original is gone from view (the room was reloaded)
      replyBar.hidden = true;
      return;
    }
    const shown = this.store.shown(room, target);
    replyAuthor.textContent = target.user;
    replyText.textContent = shown.deleted ? "message deleted" : snippet(shown.content);
    replyBar.hidden = false;
  }

  // -------------------------------------------------------------- delete

  #confirmDelete(room, m) {
    const dialog = this.el.confirmDelete;
    this.confirming = { room: room.name, id: m.id };
    this.picker = null;
    this.el.confirmDeleteQuote.textContent = snippet(this.store.shown(room, m).content);
    dialog.returnValue = "";
    if (!dialog.open) dialog.showModal();
  }

  #pending(room, p, grouped) {
    const me = this.store.user ?? { id: "", name: "" };
    const failed = p.status === "failed";
    const status = failed
      ? h("div", { className: "msg-status failed" },
        h("span", { className: "msg-error", text: `Not sent: ${p.error}` }),
        h("button", { type: "button", className: "link-btn retry", text: "Retry", on: { click: () => this.actions.retry(p.ref) } }),
        h("button", { type: "button", className: "link-btn discard", text: "Discard", on: { click: () => this.actions.discard(p.ref) } }))
      : h("div", { className: "msg-status" }, h("span", { className: "spinner", attrs: { "aria-hidden": "true" } }), "Sending…");
    const text = [p.reply_to ? this.#replyPreview(room, p.reply_to) : null, h("div", { className: "msg-text", text: p.content })];
    const li = h("li", { className: `msg own ${failed ? "failed" : "pending"}${grouped ? " grouped" : ""}`, dataset: { ref: p.ref, status: p.status } });
    if (grouped) li.append(h("div", { className: "gutter" }), h("div", { className: "msg-body" }, text, status));
    else {
      li.append(
        avatar(me.id, me.name),
        h("div", { className: "msg-body" },
          h("div", { className: "msg-meta" }, h("span", { className: "msg-author", text: me.name }), h("span", { className: "you", text: "you" })),
          text, status),
      );
    }
    return li;
  }

  #renderHistoryStatus(room) {
    const el = this.el.historyStatus;
    const oldest = oldestSeq(room);
    if (room.loadingOlder) setChildren(el, h("span", { className: "spinner", attrs: { "aria-hidden": "true" } }), "Loading older messages…");
    else if (room.olderError) {
      setChildren(el, `Couldn't load older messages (${room.olderError}). `,
        h("button", { type: "button", className: "link-btn", text: "Try again", on: { click: () => this.actions.loadOlder(room.name, { force: true }) } }));
    } else if (oldest !== null && (oldest === 1 || room.atStart)) setChildren(el, `This is the very beginning of #${room.name}.`);
    else if (oldest === null && settled(room) && room.pending.length === 0 && olderCursor(room) === null) setChildren(el, `No messages in #${room.name} yet. Say hello!`);
    else el.replaceChildren();
  }

  #maybeLoadOlder() {
    // With a render pending the scroll position is stale; the render checks again at its end.
    if (this.frame) return;
    const room = this.store.currentRoom;
    if (!room || !settled(room) || room.loadingOlder || room.olderError || this.el.scroller.scrollTop > LOAD_OLDER_PX) return;
    if (olderCursor(room) !== null) this.actions.loadOlder(room.name);
  }

  #renderMembers() {
    const room = this.store.currentRoom;
    const members = room ? [...room.members].sort((a, b) => a[1].localeCompare(b[1]) || a[0].localeCompare(b[0])) : [];
    reconcile(this.el.memberList, members.map(([id, name]) => ({
      key: id,
      sig: name,
      build: () => h("li", { className: "member", dataset: { user: id } },
        h("span", { className: "presence-dot", attrs: { "aria-hidden": "true" } }),
        avatar(id, name),
        h("span", { className: "member-name", text: name }),
        this.store.isOwn(id) ? h("span", { className: "you", text: "you" }) : null),
    })), this.caches.members);
    setChildren(this.el.members.querySelector(".section-title"), room ? `Online — ${members.length}` : "Online");
  }

  #renderTyping() {
    const room = this.store.currentRoom;
    const names = room ? [...new Set([...room.typing.values()].map((t) => t.name))] : [];
    const text =
      names.length === 0 ? "" :
        names.length === 1 ? `${names[0]} is typing…` :
          names.length === 2 ? `${names[0]} and ${names[1]} are typing…` :
            "Several people are typing…";
    if (this.el.typing.textContent !== text) this.el.typing.textContent = text;
  }

  #renderBanner() {
    const { state, retryAt, everOpen } = this.store.connection;
    const { banner, bannerText, bannerRetry } = this.el;
    clearTimeout(this.bannerTimer);
    banner.dataset.state = state;
    bannerRetry.hidden = state !== "waiting";
    if (state === "open") {
      if (this.wasDisconnected) {
        this.wasDisconnected = false;
        bannerText.textContent = "Connected again.";
        banner.hidden = false;
        this.bannerTimer = setTimeout(() => (banner.hidden = true), 2500);
      } else banner.hidden = true;
      return;
    }
    if (state === "stopped") {
      banner.hidden = true;
      return;
    }
    banner.hidden = false;
    if (everOpen) this.wasDisconnected = true;
    if (state === "connecting") bannerText.textContent = everOpen ? "Reconnecting…" : "Connecting…";
    else if (state === "waiting") {
      const seconds = Math.max(1, Math.ceil((retryAt - Date.now()) / 1000));
      bannerText.textContent = `${everOpen ? "Connection lost." : "Can't reach the server."} Reconnecting in ${seconds} s…`;
      this.bannerTimer = setTimeout(() => this.#renderBanner(), 1000);
    }
  }

  // ------------------------------------------------------------ input

  #setLoginBusy(busy) {
    for (const b of this.el.login.querySelectorAll("button")) b.disabled = busy;
  }

  #bindLogin() {
    const { guestForm, guestName, tokenForm, tokenInput, loginError } = this.el;
    const run = async (work) => {
      loginError.textContent = "";
      this.#setLoginBusy(true);
      const error = await work();
      this.#setLoginBusy(false);
      if (error) loginError.textContent = error;
    };
    guestForm.addEventListener("submit", (event) => {
      event.preventDefault();
      const problem = displayNameError(guestName.value);
      if (problem) {
        loginError.textContent = problem;
        guestName.focus();
        return;
      }
      run(() => this.actions.signInAsGuest(guestName.value.trim()));
    });
    tokenForm.addEventListener("submit", (event) => {
      event.preventDefault();
      const token = tokenInput.value.trim();
      if (!token) {
        loginError.textContent = "Paste a token first.";
        tokenInput.focus();
        return;
      }
      run(() => this.actions.signInWithToken(token));
    });
  }

  #bindChat() {
    const el = this.el;
    el.signOut.addEventListener("click", () => this.actions.signOut());
    el.leaveRoom.addEventListener("click", () => this.store.current && this.actions.leave(this.store.current));
    el.bannerRetry.addEventListener("click", () => this.actions.retryNow());

    el.joinForm.addEventListener("submit", (event) => {
      event.preventDefault();
      const name = el.joinName.value.trim().replace(/^#/, "");
      const problem = roomNameError(name);
      el.joinError.textContent = problem ?? "";
      el.joinName.setAttribute("aria-invalid", problem ? "true" : "false");
      if (problem) return;
      el.joinName.value = "";
      this.#closeDrawers();
      this.actions.go(name);
    });
    el.joinName.addEventListener("input", () => {
      el.joinError.textContent = "";
      el.joinName.removeAttribute("aria-invalid");
    });

    // Drawers (narrow screens): the room list on the left, people on the right.
    const toggle = (drawer, button, open) => {
      drawer.classList.toggle("open", open);
      button.setAttribute("aria-expanded", String(open));
      el.scrim.hidden = !(el.sidebar.classList.contains("open") || el.members.classList.contains("open"));
    };
    el.openRooms.addEventListener("click", () => toggle(el.sidebar, el.openRooms, !el.sidebar.classList.contains("open")));
    el.closeRooms.addEventListener("click", () => toggle(el.sidebar, el.openRooms, false));
    el.openMembers.addEventListener("click", () => toggle(el.members, el.openMembers, !el.members.classList.contains("open")));
    el.closeMembers.addEventListener("click", () => toggle(el.members, el.openMembers, false));
    el.scrim.addEventListener("click", () => this.#closeDrawers());
    this.#closeDrawers = () => {
      toggle(el.sidebar, el.openRooms, false);
      toggle(el.members, el.openMembers, false);
    };
    document.addEventListener("keydown", (event) => {
      if (event.key !== "Escape") return;
      this.#closeDrawers();
      if (this.picker) {
        this.picker = null;
        this.schedule(["messages"]);
      }
    });

    // Replies and deletes.
    el.replyCancel.addEventListener("click", () => {
      this.#cancelReply();
      el.composerInput.focus();
    });
    el.confirmDelete.addEventListener("close", () => {
      const confirming = this.confirming;
      this.confirming = null;
      if (confirming && el.confirmDelete.returnValue === "delete") this.actions.remove(confirming.room, confirming.id);
      el.composerInput.focus();
    });

    // Scrolling up pages history in.
    el.scroller.addEventListener("scroll", () => this.#maybeLoadOlder(), { passive: true });

    // Composer: Enter sends, Shift+Enter is a newline; it grows with its content.
    const input = el.composerInput;
    const grow = () => {
      const atBottom = el.scroller.scrollHeight - el.scroller.scrollTop - el.scroller.clientHeight < AT_BOTTOM_PX;
      autosize(input, 200);
      if (atBottom) el.scroller.scrollTop = el.scroller.scrollHeight;
    };
    const submit = () => {
      const room = this.store.current;
      if (!input.value.trim() || !room) return;
      const replyTo = this.replyTo.get(room);
      if (this.actions.send(room, input.value, this.store.room(room)?.byId.has(replyTo) ? replyTo : null)) {
        input.value = "";
        this.replyTo.delete(room);
        grow();
        this.stickToBottom = true;
        this.schedule(["messages"]);
      }
    };
    el.composer.addEventListener("submit", (event) => {
      event.preventDefault();
      submit();
      input.focus();
    });
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        submit();
      } else if (event.key === "ArrowUp" && input.value === "" && !event.shiftKey && !event.altKey && !event.ctrlKey && !event.metaKey) {
        // Up in an empty composer edits the user's last message.
        const room = this.store.currentRoom;
        const last = room ? this.store.lastOwnMessage(room.name) : null;
        if (last) {
          event.preventDefault();
          this.#startEdit(room, last);
        }
      } else if (event.key === "Escape" && this.#cancelReply()) {
        event.preventDefault();
      }
    });
    input.addEventListener("input", () => {
      grow();
      if (input.value.trim() && this.store.current) this.actions.typing(this.store.current);
    });
  }

  #closeDrawers = () => {};
}

/** A textarea as tall as its content, up to `max` px. */
function autosize(textarea, max) {
  textarea.style.height = "auto";
  textarea.style.height = `${Math.min(textarea.scrollHeight, max)}px`;
}

/** The start of a message for a quote: one line, at most PREVIEW_CHARS characters. */
function snippet(text) {
  const line = text.replace(/\s+/g, " ").trim();
  const chars = [...line];
  return chars.length > PREVIEW_CHARS ? `${chars.slice(0, PREVIEW_CHARS).join("")}…` : line;
}

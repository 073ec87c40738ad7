// The view: renders the store into the static shell of index.html and turns
// user input into calls on `actions` (see app.js). All user-supplied text is
// set with textContent (via h()), never parsed as HTML.

import { avatar, dayKey, dayLabel, duration, formatFull, formatTime, h, reconcile, setChildren } from "./dom.js";
import { COUNT_CAP, displayNameError, olderCursor, oldestSeq, roomNameError, settled } from "./store.js";

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
      "new-room", "new-dm", "dm-list", "invite-people", "room-notice", "room-notice-text", "room-rejoin", "room-close", "muted-note",
      "banned-title", "banned-list",
      "new-room-dialog", "new-room-form", "new-room-name", "new-room-invite", "new-room-people", "new-room-ids", "new-room-error", "new-room-cancel",
      "people-dialog", "people-form", "people-title", "people-list", "people-user", "people-name", "people-error", "people-close", "people-submit",
      "person-dialog", "person-avatar", "person-name", "person-sub", "person-id", "person-dm", "person-mod", "person-mute-for", "person-mute",
      "person-unmute", "person-kick", "person-ban", "person-error", "person-close",
      "confirm-leave",
    ];
    this.el = Object.fromEntries(ids.map((id) => [id.replace(/-(\w)/g, (_, c) => c.toUpperCase()), document.getElementById(id)]));
    this.caches = { messages: new Map(), rooms: new Map(), dms: new Map(), directory: new Map(), members: new Map(), banned: new Map() };
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
    this.revealDivider = false; // a room just came into view: show its "new messages" line if it is above
    this.person = null; // {room, id, name}: whom the person dialog is about
    this.people = null; // {mode: "invite" | "dm", room}: what the people dialog does
    this.mutedTimer = 0;
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
      const kind = store.kindOf(name);
      const label = store.labelOf(name);
      const peer = kind === "direct" ? store.peerOf(name) : null;
      const online = room?.joined ? room.members.size : (store.directory.get(name)?.online ?? 0);
      const { unread, mentions } = room && !room.removed ? store.counts(room) : { unread: 0, mentions: 0 };
      const current = store.current === name;
      const removed = Boolean(room?.removed);
      const what = kind === "direct" ? `Direct messages with ${label}` : kind === "private" ? `${name}, private` : name;
      const aria = [what, kind === "direct" ? null : `${online} online`, unread ? `${countText(unread)} unread` : null,
        mentions ? `${countText(mentions)} ${mentions === 1 ? "mention" : "mentions"}` : null, removed ? "you are no longer in it" : null].filter(Boolean).join(", ");
      return {
        key: name,
        sig: [online, unread, mentions, current, open, kind, label, removed, peer?.id].join("|"),
        build: () =>
          h("li", { dataset: { room: name, kind } },
            h("a", {
              className: ["room-link", current && "current", unread && "has-unread", mentions && "has-mention", removed && "removed"].filter(Boolean).join(" "),
              href: `#/room/${name}`,
              attrs: { "aria-current": current ? "page" : null, "aria-label": aria },
              on: { click: () => this.#closeDrawers() },
            },
              kind === "direct" ? avatar(peer?.id ?? name, label, "tiny")
                : kind === "private" ? lockIcon()
                  : h("span", { className: "hash", text: "#", attrs: { "aria-hidden": "true" } }),
              h("span", { className: "room-name", text: label }),
              online && kind !== "direct" ? h("span", { className: "online", text: String(online), attrs: { title: `${online} online` } }) : null,
              mentions ? h("span", { className: "badge mention", text: `@${countText(mentions)}`, attrs: { title: `${mentions} ${mentions === 1 ? "mention" : "mentions"}` } }) : null,
              unread ? h("span", { className: "badge unread", text: countText(unread), attrs: { title: `${unread} unread` } }) : null,
            )),
      };
    };
    const open = [...store.rooms.keys()];
    const direct = open.filter((name) => store.kindOf(name) === "direct");
    reconcile(this.el.roomList, open.filter((name) => store.kindOf(name) !== "direct").map((name) => item(name, { open: true })), this.caches.rooms);
    reconcile(this.el.dmList, direct.map((name) => item(name, { open: true })), this.caches.dms);
    const others = [...store.directory.keys()].filter((name) => !store.rooms.has(name) && store.kindOf(name) !== "direct").sort();
    reconcile(this.el.directoryList, others.map((name) => item(name, { open: false })), this.caches.directory);
    this.el.directoryTitle.hidden = others.length === 0;

    const unread = store.totalUnread();
    this.el.openRoomsUnread.hidden = unread === 0;
    this.el.openRoomsUnread.textContent = countText(unread);
    const here = store.current ? `${store.kindOf(store.current) === "direct" ? "@" : "#"}${store.labelOf(store.current)} · ` : "";
    document.title = `${unread ? `(${unread}) ` : ""}${here}confab`;
  }

  #renderHeader() {
    const { store } = this;
    const room = store.currentRoom;
    const { roomTitle, roomSub, leaveRoom, openMembers, composerInput, send, invitePeople } = this.el;
    const kind = room ? store.kindOf(room.name) : null;
    const label = room ? store.labelOf(room.name) : "";
    const shown = kind === "direct" ? `@${label}` : `#${label}`;
    if (!room) {
      setChildren(roomTitle, "No room open");
      roomSub.textContent = "";
    } else {
      const mark = kind === "direct" ? h("span", { className: "hash", text: "@", attrs: { "aria-hidden": "true" } })
        : kind === "private" ? lockIcon("Private room")
          : h("span", { className: "hash", text: "#", attrs: { "aria-hidden": "true" } });
      setChildren(roomTitle, mark, label);
      roomTitle.dataset.kind = kind;
      const peer = kind === "direct" ? store.peerOf(room.name) : null;
      roomSub.textContent =
        room.removed ? "you are no longer in this room" :
          !room.joined ? (store.connection.state === "open" ? "joining…" : "offline") :
            kind === "direct" ? (peer && room.members.has(peer.id) ? "online" : "direct message") :
              kind === "private" ? `private · ${room.members.size} online` : `${room.members.size} online`;
    }
    const usable = Boolean(room) && !room.removed;
    leaveRoom.hidden = !usable || kind === "direct";
    invitePeople.hidden = !usable || !store.canInvite(room.name);
    openMembers.hidden = !room;
    openMembers.textContent = room?.joined ? `People · ${room.members.size}` : "People";
    composerInput.disabled = !usable;
    send.disabled = !usable;
    composerInput.placeholder = !room ? "Join a room to chat" : room.removed ? "You are no longer in this room" : `Message ${shown}`;
    composerInput.setAttribute("aria-label", room ? `Message ${shown}` : "Message");
    this.#renderNotice(room);
  }

  /** Under the messages: why the user can't write here (taken out of the room, or muted). */
  #renderNotice(room) {
    const { roomNotice, roomNoticeText, roomRejoin, mutedNote } = this.el;
    const removed = room?.removed;
    roomNotice.hidden = !removed;
    if (removed) {
      const what = { kicked: "You were kicked from this room", banned: "You were banned from this room", removed: "You were removed from this room", left: "You left this room" }[removed.reason] ?? "You are no longer in this room";
      roomNoticeText.textContent = `${what}${removed.by ? ` by ${removed.by}` : ""}.`;
      roomRejoin.hidden = !(removed.reason === "kicked" && this.store.kindOf(room.name) === "public");
    }
    clearTimeout(this.mutedTimer);
    const left = room && !removed ? room.mutedUntil - Date.now() : 0;
    mutedNote.hidden = left <= 0;
    if (left > 0) {
      mutedNote.textContent = `You are muted in this room until ${formatTime(new Date(room.mutedUntil))} (${duration(left)} left).`;
      this.mutedTimer = setTimeout(() => this.schedule(["rooms"]), Math.min(left + 50, 30000));
    }
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
      this.revealDivider = true;
      messages.setAttribute("aria-label", name ? `Messages in ${this.store.kindOf(name) === "direct" ? "@" : "#"}${this.store.labelOf(name)}` : "Messages");
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
    if (this.revealDivider && settled(room)) {
      // Just opened: if the "new messages" line is above the view, start there.
      this.revealDivider = false;
      const line = messages.querySelector(".new-divider");
      if (line && line.offsetTop < scroller.scrollTop) scroller.scrollTop = Math.max(0, line.offsetTop - 8);
    }
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

    const entries = [...room.messages.values(), ...room.events.values()].sort((a, b) => a.seq - b.seq);
    const dividerBefore = this.#dividerSeq(room, entries);
    for (const m of entries) {
      if (m.type !== undefined) {
        // A membership event: a system line.
        daySeparator(m.date);
        const text = eventText(m);
        items.push({
          key: `e:${m.seq}:${m.id}`,
          sig: text,
          build: () => h("li", { className: "sys", dataset: { seq: m.seq, event: m.type } },
            h("span", { className: "sys-text", text }),
            h("time", { className: "msg-time", text: formatTime(m.date), attrs: { datetime: m.timestamp, title: formatFull(m.date) } })),
        });
        prev = null;
        continue;
      }
      daySeparator(m.date);
      if (m.seq === dividerBefore) {
        items.push({
          key: "new-messages",
          sig: String(dividerBefore),
          build: () => h("li", { className: "new-divider", attrs: { role: "separator", "aria-label": "New messages" } }, h("span", { text: "New messages" })),
        });
        prev = null;
      }
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

  /** The seq of the first message below the "new messages" line (from someone else, after the marker), or null. */
  #dividerSeq(room, entries) {
    if (room.divider === null || room.divider === undefined) return null;
    const first = entries.find((m) => m.type === undefined && m.seq > room.divider && !m.deleted && !this.store.isOwn(m.user_id));
    return first ? first.seq : null;
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
    const mentioned = !own && !shown.deleted && this.store.mentionsMe(shown.content);
    const classes = ["msg", grouped && "grouped", own && "own", shown.deleted && "deleted", shown.deleting && "deleting", shown.saving && "saving", editing && "editing", mentioned && "mentions-me"];
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
          h("div", { className: "msg-meta" },
            own ? h("span", { className: "msg-author", text: m.user })
              : h("button", {
                type: "button",
                className: "msg-author person-btn",
                text: m.user,
                attrs: { title: `${m.user}: message, or more`, "aria-haspopup": "dialog" },
                on: { click: () => this.openPerson(room.name, m.user_id, m.user) },
              }),
            own ? h("span", { className: "you", text: "you" }) : null, time),
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
    } else if (oldest !== null && (oldest === 1 || room.atStart)) setChildren(el, `This is the very beginning of ${this.#roomRef(room.name)}.`);
    else if (oldest === null && settled(room) && room.pending.length === 0 && olderCursor(room) === null) setChildren(el, `No messages in ${this.#roomRef(room.name)} yet. Say hello!`);
    else el.replaceChildren();
  }

  /** "#general", or "your conversation with bob" for a direct room. */
  #roomRef(name) {
    return this.store.kindOf(name) === "direct" ? `your conversation with ${this.store.labelOf(name)}` : `#${name}`;
  }

  #maybeLoadOlder() {
    // With a render pending the scroll position is stale; the render checks again at its end.
    if (this.frame) return;
    const room = this.store.currentRoom;
    if (!room || !settled(room) || room.loadingOlder || room.olderError || this.el.scroller.scrollTop > LOAD_OLDER_PX) return;
    if (olderCursor(room) !== null) this.actions.loadOlder(room.name);
  }

  /**
   * The people panel: who is online (public rooms), or every member with who
   * is online (private and direct rooms, from the REST roster). A name opens
   * the person dialog (direct message, and moderation for those allowed).
   */
  #renderMembers() {
    const { store } = this;
    const room = store.currentRoom;
    const kind = room ? store.kindOf(room.name) : null;
    const roster = room?.roster;
    const now = Date.now();
    let rows = [];
    if (room && roster && kind !== "public") {
      rows = [...roster.members].map(([id, m]) => ({ id, name: m.name, role: m.role, online: room.members.has(id), muted: isFuture(m.muted_until, now) }));
      for (const [id, name] of room.members) if (!roster.members.has(id)) rows.push({ id, name, role: null, online: true, muted: false });
    } else if (room) {
      rows = [...room.members].map(([id, name]) => {
        const m = roster?.members.get(id);
        return { id, name, role: m?.role ?? null, online: true, muted: isFuture(m?.muted_until, now) };
      });
    }
    rows.sort((a, b) => Number(b.online) - Number(a.online) || a.name.localeCompare(b.name) || a.id.localeCompare(b.id));
    const roomName = room?.name;
    reconcile(this.el.memberList, rows.map((r) => ({
      key: r.id,
      sig: [r.name, r.role, r.online, r.muted, roomName].join("|"),
      build: () => {
        const own = store.isOwn(r.id);
        const name = h("span", { className: "member-name", text: r.name });
        return h("li", { className: `member${r.online ? "" : " offline"}`, dataset: { user: r.id } },
          r.online ? h("span", { className: "presence-dot", attrs: { "aria-hidden": "true" } }) : null,
          avatar(r.id, r.name),
          own ? name : h("button", {
            type: "button",
            className: "member-btn person-btn",
            attrs: { "aria-haspopup": "dialog", title: `${r.name}: message, or more` },
            on: { click: () => this.openPerson(roomName, r.id, r.name) },
          }, name),
          r.role === "owner" || r.role === "admin" ? h("span", { className: `role role-${r.role}`, text: r.role }) : null,
          r.muted ? h("span", { className: "role role-muted", text: "muted" }) : null,
          own ? h("span", { className: "you", text: "you" }) : null);
      },
    })), this.caches.members);
    const online = rows.filter((r) => r.online).length;
    const title = !room ? "Online" : roster && kind !== "public" ? `Members — ${rows.length}` : `Online — ${online}`;
    setChildren(this.el.members.querySelector(".section-title"), title);

    // Owners and admins see who is banned, with Unban.
    const banned = room && store.rankIn(room.name) >= 2 ? bannedIn(room) : [];
    reconcile(this.el.bannedList, banned.map((b) => ({
      key: b.id,
      sig: `${b.name}|${roomName}`,
      build: () => h("li", { className: "member banned", dataset: { user: b.id } },
        avatar(b.id, b.name),
        h("span", { className: "member-name", text: b.name }),
        h("button", {
          type: "button",
          className: "link-btn unban",
          text: "Unban",
          attrs: { "aria-label": `Unban ${b.name}` },
          on: { click: () => this.actions.moderate(roomName, b.id, "unban") },
        })),
    })), this.caches.banned);
    this.el.bannedTitle.hidden = banned.length === 0;
  }

  // ---------------------------------------------------- people and rooms

  /** The person dialog: a direct message, and kick / ban / mute for those allowed in this room. */
  openPerson(roomName, id, name) {
    const { store, el } = this;
    if (!id || store.isOwn(id)) return;
    this.person = { room: roomName, id, name };
    const room = roomName ? store.room(roomName) : null;
    const member = room?.roster?.members.get(id);
    const role = member?.role ?? null;
    const muted = isFuture(member?.muted_until, Date.now());
    el.personName.textContent = name;
    setChildren(el.personAvatar, avatar(id, name));
    el.personId.textContent = id;
    const where = roomName ? (store.kindOf(roomName) === "direct" ? "" : ` in #${roomName}`) : "";
    el.personSub.textContent = [role && role !== "member" ? `${role}${where}` : null, muted ? `muted until ${formatTime(new Date(member.muted_until))}` : null].filter(Boolean).join(" · ");
    el.personError.textContent = "";
    el.personMod.hidden = !roomName || !store.canModerate(roomName, id);
    el.personUnmute.hidden = !muted;
    el.personDm.hidden = Boolean(roomName) && store.kindOf(roomName) === "direct" && store.peerOf(roomName)?.id === id;
    for (const b of el.personDialog.querySelectorAll("button")) b.disabled = false;
    if (!el.personDialog.open) el.personDialog.showModal();
  }

  async #personAction(work) {
    const { el } = this;
    const person = this.person;
    if (!person) return;
    for (const b of el.personDialog.querySelectorAll("button")) b.disabled = true;
    el.personError.textContent = "";
    const outcome = await work(person);
    for (const b of el.personDialog.querySelectorAll("button")) b.disabled = false;
    if (typeof outcome === "string") el.personError.textContent = outcome;
    else if (outcome !== false && this.person === person) el.personDialog.close();
  }

  /** People the user has seen (presence, messages, members), by name, not the user. */
  #peopleSeen(except = new Set()) {
    return [...this.store.people].filter(([id]) => !except.has(id) && !this.store.isOwn(id))
      .sort((a, b) => a[1].localeCompare(b[1]) || a[0].localeCompare(b[0]));
  }

  openNewRoom() {
    const { el } = this;
    el.newRoomForm.reset();
    el.newRoomError.textContent = "";
    setChildren(el.newRoomPeople, this.#peopleSeen().map(([id, name]) =>
      h("li", {},
        h("label", { className: "person-pick" },
          h("input", { type: "checkbox", value: id, dataset: { name } }),
          avatar(id, name, "tiny"),
          h("span", { className: "pick-name", text: name }),
          h("span", { className: "pick-id", text: id })))));
    if (el.newRoomPeople.childElementCount === 0) setChildren(el.newRoomPeople, h("li", { className: "muted empty-pick", text: "Nobody yet: people show up here once you've seen them in a room." }));
    this.#closeDrawers();
    if (!el.newRoomDialog.open) el.newRoomDialog.showModal();
    el.newRoomName.focus();
  }

  /** The people dialog: "invite" into `room`, or "dm" (start a direct message). */
  openPeople(mode, room = null) {
    const { el, store } = this;
    this.people = { mode, room };
    el.peopleForm.reset();
    el.peopleError.textContent = "";
    el.peopleTitle.textContent = mode === "invite" ? `Invite people to #${room}` : "New direct message";
    el.peopleSubmit.textContent = mode === "invite" ? "Invite" : "Message";
    const members = new Set(mode === "invite" ? [...(store.room(room)?.roster?.members.keys() ?? [])] : []);
    const list = this.#peopleSeen(members);
    setChildren(el.peopleList, list.map(([id, name]) =>
      h("li", {},
        h("button", {
          type: "button",
          className: "person-pick",
          dataset: { user: id },
          attrs: { "aria-label": `${mode === "invite" ? "Invite" : "Message"} ${name}` },
          on: { click: (event) => this.#pickPerson(id, name, event.currentTarget) },
        }, avatar(id, name, "tiny"), h("span", { className: "pick-name", text: name }), h("span", { className: "pick-id", text: id })))));
    if (list.length === 0) setChildren(el.peopleList, h("li", { className: "muted empty-pick", text: "Nobody yet: people show up here once you've seen them in a room." }));
    this.#closeDrawers();
    if (!el.peopleDialog.open) el.peopleDialog.showModal();
    el.peopleUser.focus();
  }

  async #pickPerson(id, name, button) {
    const { el } = this;
    const people = this.people;
    if (!people) return;
    el.peopleError.textContent = "";
    if (button) button.disabled = true;
    const error = people.mode === "invite" ? await this.actions.invite(people.room, id, name) : await this.actions.dm(id, name);
    if (error) {
      el.peopleError.textContent = error;
      if (button) button.disabled = false;
      return;
    }
    if (people.mode === "dm") el.peopleDialog.close();
    else if (button) {
      button.classList.add("done");
      button.setAttribute("aria-label", `${name}: invited`);
      button.append(h("span", { className: "pick-done", text: "invited" }));
    } else {
      el.peopleForm.reset();
      el.peopleError.textContent = "";
      this.toast(`Invited ${name || id}.`);
    }
  }

  openInvite() {
    const room = this.store.current;
    if (room) this.openPeople("invite", room);
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
    el.leaveRoom.addEventListener("click", () => {
      const name = this.store.current;
      if (!name) return;
      if (this.store.kindOf(name) === "private") {
        el.confirmLeave.dataset.room = name;
        el.confirmLeave.querySelector("h2").textContent = `Leave #${name}?`;
        el.confirmLeave.returnValue = "";
        el.confirmLeave.showModal();
      } else this.actions.leave(name);
    });
    el.confirmLeave.addEventListener("close", () => {
      if (el.confirmLeave.returnValue === "leave" && el.confirmLeave.dataset.room) this.actions.leavePrivate(el.confirmLeave.dataset.room);
    });
    el.roomClose.addEventListener("click", () => this.store.current && this.actions.leave(this.store.current));
    el.roomRejoin.addEventListener("click", () => this.store.current && this.actions.rejoin(this.store.current));
    el.invitePeople.addEventListener("click", () => this.openInvite());
    el.newDm.addEventListener("click", () => this.openPeople("dm"));
    el.newRoom.addEventListener("click", () => this.openNewRoom());

    // The new-room dialog.
    el.newRoomCancel.addEventListener("click", () => el.newRoomDialog.close());
    el.newRoomForm.addEventListener("change", () => {
      el.newRoomInvite.hidden = el.newRoomForm.elements.kind.value !== "private";
    });
    el.newRoomForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      const name = el.newRoomName.value.trim().replace(/^#/, "");
      const problem = roomNameError(name) ?? (name.startsWith("dm:") ? "Names starting with dm: are for direct messages." : null);
      if (problem) {
        el.newRoomError.textContent = problem;
        el.newRoomName.focus();
        return;
      }
      const kind = el.newRoomForm.elements.kind.value === "public" ? "public" : "private";
      const invitees = [];
      if (kind === "private") {
        for (const box of el.newRoomPeople.querySelectorAll("input:checked")) invitees.push({ id: box.value, name: box.dataset.name });
        for (const id of el.newRoomIds.value.split(/[\s,]+/).filter(Boolean)) {
          if (!invitees.some((p) => p.id === id)) invitees.push({ id, name: this.store.people.get(id) });
        }
      }
      const buttons = el.newRoomForm.querySelectorAll("button");
      for (const b of buttons) b.disabled = true;
      el.newRoomError.textContent = "";
      const error = await this.actions.createRoom(name, kind, invitees);
      for (const b of buttons) b.disabled = false;
      if (error) el.newRoomError.textContent = error;
      else el.newRoomDialog.close();
    });

    // The people dialog (invite / new direct message): by id, or a person seen.
    el.peopleClose.addEventListener("click", () => el.peopleDialog.close());
    el.peopleForm.addEventListener("submit", (event) => {
      event.preventDefault();
      const id = el.peopleUser.value.trim();
      if (!id) {
        el.peopleError.textContent = "Enter a user id, or pick someone above.";
        el.peopleUser.focus();
        return;
      }
      const name = el.peopleName.value.trim() || this.store.people.get(id) || undefined;
      this.#pickPerson(id, name, null);
    });

    // The person dialog.
    el.personClose.addEventListener("click", () => el.personDialog.close());
    el.personDialog.addEventListener("close", () => (this.person = null));
    el.personDm.addEventListener("click", () => this.#personAction((p) => this.actions.dm(p.id, p.name)));
    el.personKick.addEventListener("click", () => this.#personAction((p) => this.actions.moderate(p.room, p.id, "kick")));
    el.personBan.addEventListener("click", () => this.#personAction((p) => this.actions.moderate(p.room, p.id, "ban")));
    el.personMute.addEventListener("click", () => this.#personAction((p) => this.actions.moderate(p.room, p.id, "mute", Number(el.personMuteFor.value))));
    el.personUnmute.addEventListener("click", () => this.#personAction((p) => this.actions.moderate(p.room, p.id, "mute", 0)));
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

/** A count for a badge: the server counts up to COUNT_CAP. */
function countText(n) {
  return n >= COUNT_CAP ? "999+" : String(n);
}

const isFuture = (time, now) => Boolean(time) && Date.parse(time) > now;

/**
 * Who is banned from a room: the REST roster's list when the server gave one,
 * otherwise what the room's events seen here say (bans not lifted since).
 */
function bannedIn(room) {
  if (room.roster?.banned) return room.roster.banned;
  const banned = new Map();
  for (const e of [...room.events.values()].sort((a, b) => a.seq - b.seq)) {
    if (e.type === "member_removed" && e.reason === "banned" && e.member) banned.set(e.member.id, e.member.name);
    else if (e.type === "member_unbanned" && e.member) banned.delete(e.member.id);
  }
  return [...banned].map(([id, name]) => ({ id, name }));
}

/** A small padlock (private rooms); labelled when it stands alone. */
function lockIcon(label = null) {
  const NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", "0 0 16 16");
  svg.setAttribute("width", "12");
  svg.setAttribute("height", "12");
  svg.setAttribute("class", "lock");
  if (label) {
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", label);
  } else svg.setAttribute("aria-hidden", "true");
  const path = document.createElementNS(NS, "path");
  path.setAttribute("fill", "currentColor");
  path.setAttribute("d", "M4 7V5a4 4 0 1 1 8 0v2h.5A1.5 1.5 0 0 1 14 8.5v5a1.5 1.5 0 0 1-1.5 1.5h-9A1.5 1.5 0 0 1 2 13.5v-5A1.5 1.5 0 0 1 3.5 7H4zm2 0h4V5a2 2 0 1 0-4 0v2z");
  svg.append(path);
  return svg;
}

/** The words of a membership event's system line (docs/protocol.md 7b). */
export function eventText(e) {
  const actor = e.user ?? "someone";
  const member = e.member?.name ?? "someone";
  switch (e.type) {
    case "room_created":
      return e.kind === "direct" ? `${actor} started this conversation` : `${actor} created this ${e.kind === "private" ? "private room" : "room"}`;
    case "member_added":
      if (e.member && e.member.id === e.user_id) return `${member} joined`;
      return e.role === "admin" ? `${actor} made ${member} an admin` : e.role === "owner" ? `${actor} made ${member} an owner` : `${actor} invited ${member}`;
    case "member_removed":
      if (e.reason === "left" || (e.member && e.member.id === e.user_id)) return `${member} left`;
      return `${member} was ${{ kicked: "kicked", banned: "banned" }[e.reason] ?? "removed"} by ${actor}`;
    case "member_muted": {
      if (!e.until) return `${member} was unmuted by ${actor}`;
      const ms = Date.parse(e.until) - Date.parse(e.timestamp);
      return Number.isFinite(ms) && ms > 0 ? `${member} was muted by ${actor} for ${duration(ms)}` : `${member} was muted by ${actor}`;
    }
    case "member_unbanned":
      return `${member} was unbanned by ${actor}`;
    default:
      return `${actor} changed the room`;
  }
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

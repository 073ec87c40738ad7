// DOM and formatting helpers. Everything here builds nodes with
// createElement/textContent: user-supplied strings are never parsed as HTML.

/**
 * h('li', {className: 'msg', dataset: {seq: 3}, attrs: {title: 't'}, on: {click}}, child, 'text', …)
 * Strings become text nodes; null/undefined/false children are skipped.
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  const { className, text, dataset, attrs, on, style, ...rest } = props;
  if (className) el.className = className;
  if (text !== undefined && text !== null) el.textContent = String(text);
  if (dataset) for (const [k, v] of Object.entries(dataset)) el.dataset[k] = String(v);
  if (attrs) for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null && v !== false) el.setAttribute(k, v === true ? "" : String(v));
  if (on) for (const [k, fn] of Object.entries(on)) el.addEventListener(k, fn);
  if (style) for (const [k, v] of Object.entries(style)) el.style.setProperty(k, v);
  Object.assign(el, rest); // plain properties such as type, disabled, hidden
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replaces all children of `el` (with nodes or text). */
export function setChildren(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

/**
 * Keyed reconciliation of `parent`'s children against `items`
 * ([{key, sig, build}]): an element is reused while its key and signature are
 * unchanged, so appending or prepending touches only the new nodes (which
 * keeps screen readers' live-region announcements to what is actually new).
 */
export function reconcile(parent, items, cache) {
  const wanted = new Map(items.map((item) => [item.key, item.sig]));
  for (const [key, entry] of cache) {
    if (wanted.get(key) !== entry.sig) {
      entry.el.remove();
      cache.delete(key);
    }
  }
  let cursor = parent.firstChild;
  for (const item of items) {
    let entry = cache.get(item.key);
    if (!entry) {
      entry = { el: item.build(), sig: item.sig };
      cache.set(item.key, entry);
    }
    if (entry.el === cursor) cursor = cursor.nextSibling;
    else parent.insertBefore(entry.el, cursor);
  }
  while (cursor) {
    const next = cursor.nextSibling;
    cursor.remove();
    cursor = next;
  }
}

// ---------------------------------------------------------------- time

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: "numeric", minute: "2-digit" });
const fullFmt = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "medium" });
const dayFmt = new Intl.DateTimeFormat(undefined, { weekday: "long", month: "long", day: "numeric" });
const dayYearFmt = new Intl.DateTimeFormat(undefined, { weekday: "long", month: "long", day: "numeric", year: "numeric" });

export const formatTime = (date) => timeFmt.format(date);
export const formatFull = (date) => fullFmt.format(date);

/** A local calendar day, e.g. "2026-11-23". */
export function dayKey(date) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}`;
}

export function dayLabel(date, now = new Date()) {
  const key = dayKey(date);
  if (key === dayKey(now)) return "Today";
  const yesterday = new Date(now);
  yesterday.setDate(now.getDate() - 1);
  if (key === dayKey(yesterday)) return "Yesterday";
  return (date.getFullYear() === now.getFullYear() ? dayFmt : dayYearFmt).format(date);
}

/** "3 minutes", "1 hour", "2 days": a duration in words (minutes rounded up, hours and days to the nearest). */
export function duration(ms) {
  const s = Math.max(1, Math.ceil(ms / 1000));
  const unit = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
  if (s < 60) return unit(s, "second");
  if (s < 3600) return unit(Math.ceil(s / 60), "minute");
  if (s < 86400) return unit(Math.round(s / 3600), "hour");
  return unit(Math.round(s / 86400), "day");
}

// ---------------------------------------------------------------- people

/** A stable hue per user id, for avatars. */
export function hueOf(id) {
  let hash = 0;
  for (const ch of String(id)) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  return hash % 360;
}

export function avatar(id, name, extraClass = "") {
  const initial = [...String(name).trim()][0] ?? "?";
  return h("span", {
    className: `avatar ${extraClass}`.trim(),
    text: initial.toUpperCase(),
    attrs: { "aria-hidden": "true" },
    style: { "--hue": String(hueOf(id)) },
  });
}

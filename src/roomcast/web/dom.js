// Building DOM nodes. Every piece of text becomes a Text node or a textContent: nothing a user
// typed is ever parsed as HTML. (There is no innerHTML anywhere in this client.)

/**
 * A new element. `props`: "class", "text" (its textContent), "dataset" (an object), "on<event>"
 * (a listener); anything else is an attribute (true: present, false/null/undefined: absent).
 * `children`: nodes or strings (strings become Text nodes); null/undefined/false are skipped.
 */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined && child !== false) node.append(child);
  }
  return node;
}

/** The element with this id (the page's fixed skeleton, in index.html). */
export function byId(id) {
  const node = document.getElementById(id);
  if (node === null) throw new Error(`index.html has no #${id}`);
  return node;
}

/** A hue (0-359) for a name, so each person keeps one colour. */
export function nameHue(name) {
  let hash = 0;
  for (const ch of name.toLowerCase()) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  return hash % 360;
}

/** A person's name, coloured. */
export function nameNode(name, props = {}) {
  const node = el("span", { class: "from", ...props, text: name });
  node.style.setProperty("--hue", String(nameHue(name)));
  return node;
}

const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const dayFormat = new Intl.DateTimeFormat(undefined, {
  weekday: "long",
  day: "numeric",
  month: "long",
  year: "numeric",
});
const fullFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "full", timeStyle: "medium" });

/** A <time> for a UTC epoch in seconds, shown as the local hour and minute. */
export function timeNode(ts) {
  const date = new Date(ts * 1000);
  return el("time", {
    datetime: date.toISOString(),
    title: fullFormat.format(date),
    text: timeFormat.format(date),
  });
}

/** The local calendar day of a UTC epoch in seconds, as a key to compare days. */
export function dayKey(ts) {
  return new Date(ts * 1000).toDateString();
}

/** "Today", "Yesterday" or the local date of a UTC epoch in seconds. */
export function dayLabel(ts) {
  const date = new Date(ts * 1000);
  const today = new Date();
  if (date.toDateString() === today.toDateString()) return "Today";
  const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
  if (date.toDateString() === yesterday.toDateString()) return "Yesterday";
  return dayFormat.format(date);
}

const stampFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

/** A <time> for a UTC epoch in seconds, shown as the local date, hour and minute. */
export function stampNode(ts) {
  const date = new Date(ts * 1000);
  return el("time", {
    datetime: date.toISOString(),
    title: fullFormat.format(date),
    text: stampFormat.format(date),
  });
}

// --- links in text --------------------------------------------------------------------------

const ADDRESS = /\bhttps?:\/\/[^\s<>"'`]+/gi; // an http(s) address, up to what cannot be in one
const CLOSERS = { ")": "(", "]": "[", "}": "{" };

/** `candidate` without the punctuation that ends the sentence around it rather than the
 * address: "(see http://x.org/a)." gives "http://x.org/a"; "http://x.org/Foo_(bar)" keeps
 * its balanced parenthesis. */
function trimAddress(candidate) {
  let text = candidate;
  for (;;) {
    const last = text.at(-1);
    if (".,;:!?*".includes(last)) {
      text = text.slice(0, -1);
    } else if (last in CLOSERS) {
      const open = CLOSERS[last];
      const opens = text.split(open).length - 1;
      const closes = text.split(last).length - 1;
      if (closes <= opens) return text;
      text = text.slice(0, -1);
    } else {
      return text;
    }
  }
}

/** The address `text` names if it is a well-formed http or https URL, else null. */
function webAddress(text) {
  try {
    const url = new URL(text);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}

/**
 * `text` as nodes to append: its http and https addresses as links, the rest as strings
 * (Text nodes once appended). A link opens in a new tab that gets neither this page
 * (`noopener`) nor its address (`noreferrer`); any other scheme (javascript:, data:...) is
 * left as text. The link's text is the address as written; its href, the parsed URL.
 */
export function linked(text) {
  const nodes = [];
  let shown = 0; // text before this index is in `nodes`
  for (const match of text.matchAll(ADDRESS)) {
    const written = trimAddress(match[0]);
    const href = webAddress(written);
    if (href === null) continue;
    if (match.index > shown) nodes.push(text.slice(shown, match.index));
    nodes.push(el("a", { href, target: "_blank", rel: "noopener noreferrer", text: written }));
    shown = match.index + written.length;
  }
  if (shown < text.length) nodes.push(text.slice(shown));
  return nodes;
}

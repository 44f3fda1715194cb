// Drawing the page from the client's state: the message list, the conversation lists, the
// member list and notices. Text always goes in as text (see dom.js).

import { Conversation } from "./conversation.js";
import { byId, dayKey, dayLabel, el, linked, nameNode, timeNode } from "./dom.js";

const GROUP_SECONDS = 300; // a message this soon after one from the same person joins its group
const STICK_PX = 48; // within this of the bottom, new messages keep the list scrolled down

// --- the message list -----------------------------------------------------------------------

/** The icon and the text of a line that is not a message (a join, a gap...). */
export function systemLine(event) {
  switch (event.type) {
    case "join":
      return ["→", `${event.from} joined`];
    case "leave":
      return ["←", `${event.from} left`];
    case "presence":
      return ["←", event.reason ? `${event.from} quit (${event.reason})` : `${event.from} quit`];
    case "nick":
      return ["✎", `${event.from} is now known as ${event.to}`];
    case "gap": {
      const n = event.to_seq - event.from_seq + 1;
      return ["⚠", n === 1 ? "1 message is no longer kept" : `${n} messages are no longer kept`];
    }
    default:
      return ["•", `${event.type} event`];
  }
}

/** Whether `event` continues the group of messages `prev` is in (same person, same minute-ish).
 * A guest and an account of the same name are not the same person. */
function continues(prev, event) {
  return (
    prev !== null &&
    Conversation.isChat(prev) &&
    prev.kind !== "action" &&
    event.kind !== "action" &&
    prev.from === event.from &&
    Boolean(prev.signed) === Boolean(event.signed) &&
    event.ts - prev.ts < GROUP_SECONDS &&
    dayKey(prev.ts) === dayKey(event.ts)
  );
}

/** "guest" after the name of someone who was not signed in (null for an account's message). */
function guestMark(event) {
  if (event.signed !== false) return null;
  return el("span", { class: "guest", text: "guest", title: "not signed in to an account" });
}

/** The list item for one event; `mine`: we sent it (our name, and signed in as we are). */
function eventNode(event, prev, mine) {
  const dataset = { seq: String(event.seq), type: event.type };
  if (event.from !== undefined) dataset.from = event.from;
  if (!Conversation.isChat(event)) {
    const [icon, text] = systemLine(event);
    return el(
      "li",
      { class: event.type === "gap" ? "sys gap" : "sys", dataset },
      event.type === "gap" ? null : timeNode(event.ts),
      el("span", { class: "icon", "aria-hidden": "true", text: icon }),
      el("span", { class: "text", text }),
    );
  }
  if (event.kind === "action") {
    const mark = guestMark(event);
    return el(
      "li",
      { class: mine ? "msg action mine" : "msg action", dataset },
      timeNode(event.ts),
      el(
        "p",
        { class: "body" },
        "* ",
        nameNode(event.from),
        " ",
        mark,
        mark === null ? null : " ",
        el("span", { class: "text" }, ...linked(event.text)),
      ),
    );
  }
  const grouped = continues(prev, event);
  const classes = ["msg"];
  if (mine) classes.push("mine");
  if (grouped) classes.push("cont");
  return el(
    "li",
    { class: classes.join(" "), dataset },
    el(
      "div",
      { class: "meta" },
      nameNode(event.from, grouped ? { class: "from visually-hidden" } : {}),
      grouped ? null : guestMark(event),
      timeNode(event.ts),
    ),
    el("p", { class: "text" }, ...linked(event.text)),
  );
}

function dividerText(count) {
  return count === 1
    ? "1 new message while you were away"
    : `${count} new messages while you were away`;
}

/** "5 joined, 3 left": how many people came and went in a run of such lines. */
function comingsText(run) {
  const joined = new Set();
  const left = new Set();
  for (const event of run) (event.type === "join" ? joined : left).add(event.from.toLowerCase());
  const parts = [];
  if (joined.size > 0) parts.push(`${joined.size} joined`);
  if (left.size > 0) parts.push(`${left.size} left`);
  return parts.join(", ");
}

/** The first seq a top-level list item shows, or NaN (a day, the divider, a hole...). */
function firstSeq(item) {
  return Number(item.dataset.seq ?? item.dataset.first);
}

export class MessageList {
  /**
   * @param {object} options
   * @param {(after: number, before: number) => void} options.onHole the seqs between `after`
   *   and `before` are not loaded and their row came into view (or was clicked): load them
   */
  constructor({ onHole }) {
    this.list = byId("messages"); // the <ol role="log">
    this.scroller = byId("scroller"); // what scrolls: the list's box
    this.conv = null; // the conversation shown
    this.me = ""; // our name: our own messages are marked
    this.signed = false; // we are signed in to an account (not a guest)
    this.dividerLabel = null; // the divider's text node, while one is shown
    this.shown = new Map(); // seq -> the top-level item showing it (a run shows several)
    this.opened = new Set(); // seqs of the runs of comings and goings the reader opened
    this.focused = null; // the seq jumped to (a search hit): highlighted
    this.onHole = onHole;
    // Holes load as they come near the view (300 px ahead), whichever way the reader scrolls.
    this.watcher = new IntersectionObserver(
      (entries) => {
        for (const entry of entries) {
          if (!entry.isIntersecting) continue;
          const { after, before } = entry.target.dataset;
          this.onHole(Number(after), Number(before));
        }
      },
      { root: this.scroller, rootMargin: "300px 0px" },
    );
  }

  /** Show `conv`: at what it asks to reveal, else at its divider, else at its newest. */
  show(conv, me) {
    this.conv = conv;
    this.me = me;
    this.focused = null;
    this.render();
    if (this.reveal()) return;
    const divider = this.list.querySelector(".divider");
    if (divider !== null) divider.scrollIntoView({ block: "center" });
    else this.toBottom();
  }

  /** Draw everything again, keeping what the reader looks at in place (pages added above or
   * below do not move it; a reader at the bottom stays there). */
  refresh() {
    const stick = this.atBottom();
    const anchor = stick ? null : this.anchor();
    this.render();
    if (stick) this.toBottom();
    else if (anchor !== null) this.restore(anchor);
  }

  /** Bring into view what the conversation asks to (`conv.reveal`: the divider, or a seq
   * jumped to), once it is drawn; whether it was. */
  reveal() {
    const target = this.conv.reveal;
    if (target === null) return false;
    let node = target === "divider" ? this.list.querySelector(".divider") : this.shown.get(target);
    if (node === null || node === undefined) return false;
    this.conv.reveal = null;
    if (target !== "divider") {
      this.focused = target;
      if (node.classList.contains("run")) {
        node.querySelector("details").open = true;
        node = node.querySelector(`li[data-seq="${target}"]`) ?? node;
      }
      for (const old of this.list.querySelectorAll(".focus")) old.classList.remove("focus");
      node.classList.add("focus");
    }
    node.scrollIntoView({ block: "center" });
    return true;
  }

  /** The first item in view that shows events, and how far below the top it is. */
  anchor() {
    const top = this.scroller.getBoundingClientRect().top;
    const items = this.list.children;
    let lo = 0;
    let hi = items.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (items[mid].getBoundingClientRect().bottom <= top) lo = mid + 1;
      else hi = mid;
    }
    for (let i = lo; i < items.length; i++) {
      const seq = firstSeq(items[i]);
      if (Number.isInteger(seq)) return { seq, offset: items[i].getBoundingClientRect().top - top };
    }
    return null;
  }

  /** Scroll so that the item showing `anchor.seq` is where it was. */
  restore(anchor) {
    const node = this.shown.get(anchor.seq);
    if (node === undefined) return;
    const top = this.scroller.getBoundingClientRect().top;
    this.scroller.scrollTop += node.getBoundingClientRect().top - top - anchor.offset;
  }

  /** Show the newest event of the conversation (just added with seq `seq`). */
  append(seq) {
    if (this.shown.has(seq)) return; // drawn already, by a refresh for an earlier one
    const conv = this.conv;
    const stick = this.atBottom();
    const event = conv.entries.get(seq);
    const prev = conv.previous(seq);
    const before = conv.dividerBefore();
    const hole = prev !== null && conv.holeBetween(prev.seq, seq);
    if (hole || (before !== null && before !== seq && this.dividerLabel === null)) {
      this.refresh(); // a hole row, or the divider above messages already shown
      return;
    }
    const sameDay = prev !== null && dayKey(prev.ts) === dayKey(event.ts);
    const drawn = prev === null ? undefined : this.shown.get(prev.seq);
    if (Conversation.isComing(event) && sameDay && Conversation.isComing(prev) && drawn) {
      // One more coming or going after others: the last line becomes (or grows) a run.
      const run = this.runBefore(seq);
      const node = this.runNode(run);
      drawn.replaceWith(node);
      for (const e of run) this.shown.set(e.seq, node);
    } else {
      const nodes = [];
      if (!sameDay) nodes.push(this.dayNode(event));
      if (before === seq && this.dividerLabel === null) nodes.push(this.dividerNode(conv));
      const node = eventNode(event, prev, this.mine(event));
      this.shown.set(seq, node);
      nodes.push(node);
      this.list.append(...nodes);
    }
    this.updateDivider();
    if (stick || event.from === this.me) this.toBottom();
  }

  /** Whether we sent `event`: our name, and signed in as we are now (a guest of our name,
   * before we had an account, is someone else). */
  mine(event) {
    return event.from === this.me && Boolean(event.signed) === this.signed;
  }

  /** The run of comings and goings that ends with `seq`: held without a hole, same day. */
  runBefore(seq) {
    const conv = this.conv;
    const last = conv.entries.get(seq);
    const run = [last];
    for (let prev = conv.previous(seq); prev !== null; prev = conv.previous(prev.seq)) {
      const stop =
        !Conversation.isComing(prev) ||
        conv.holeBetween(prev.seq, run[0].seq) ||
        dayKey(prev.ts) !== dayKey(last.ts);
      if (stop) break;
      run.unshift(prev);
    }
    return run;
  }

  /** Update the divider's count (it may count messages as they arrive). */
  updateDivider() {
    if (this.dividerLabel === null) return;
    this.dividerLabel.textContent = dividerText(this.conv.dividerCount());
  }

  atBottom() {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < STICK_PX;
  }

  /** Whether the reader is at the top (time to load older messages). */
  atTop() {
    return this.scroller.scrollTop < STICK_PX;
  }

  /** Whether the list is too short to scroll (then older messages are loaded at once). */
  fits() {
    return this.scroller.scrollHeight <= this.scroller.clientHeight + 2;
  }

  toBottom() {
    this.scroller.scrollTop = this.scroller.scrollHeight;
  }

  dayNode(event) {
    return el("li", { class: "day", role: "separator" }, el("span", { text: dayLabel(event.ts) }));
  }

  dividerNode(conv) {
    this.dividerLabel = el("span", { text: dividerText(conv.dividerCount()) });
    return el("li", { class: "divider", role: "separator", id: "away-divider" }, this.dividerLabel);
  }

  /** A row standing for the seqs between `after` and `before`, not loaded yet. */
  holeNode(after, before) {
    return el(
      "li",
      { class: "hole", dataset: { after: String(after), before: String(before) } },
      el("button", {
        type: "button",
        class: "secondary small",
        text: "Load more messages",
        onclick: () => this.onHole(after, before),
      }),
    );
  }

  /** One line for several comings and goings ("5 joined, 3 left"), opening to list each. */
  runNode(run) {
    const details = el(
      "details",
      { open: run.some((event) => this.opened.has(event.seq)) },
      el(
        "summary",
        {},
        timeNode(run[0].ts),
        el("span", { class: "icon", "aria-hidden": "true", text: "⇄" }),
        el("span", { class: "text", text: comingsText(run) }),
      ),
      el("ol", { class: "run-lines" }, ...run.map((e) => eventNode(e, null, this.mine(e)))),
    );
    details.addEventListener("toggle", () => {
      for (const event of run) {
        if (details.open) this.opened.add(event.seq);
        else this.opened.delete(event.seq);
      }
    });
    const dataset = { type: "run", first: String(run[0].seq), last: String(run.at(-1).seq) };
    return el("li", { class: "sys run", dataset }, details);
  }

  render() {
    const conv = this.conv;
    this.dividerLabel = null;
    this.shown = new Map();
    this.watcher.disconnect();
    this.list.setAttribute("aria-busy", "true");
    const nodes = [];
    if (conv.kind === "room" && conv.atStart) {
      nodes.push(el("li", { class: "start", text: `This is the start of ${conv.title}.` }));
    } else if (conv.kind === "dm" && conv.atStart) {
      const text = `Private messages between you and ${conv.title}: only you two see them.`;
      nodes.push(el("li", { class: "start", text }));
    }
    if (conv.loadingOlder) {
      nodes.push(el("li", { class: "loading", text: "Loading older messages…" }));
    }
    const dividerSeq = conv.dividerBefore();
    const holes = [];
    const { entries, seqs } = conv;
    let prev = null;
    let i = 0;
    while (i < seqs.length) {
      const event = entries.get(seqs[i]);
      i += 1;
      if (prev !== null && conv.holeBetween(prev.seq, event.seq)) {
        holes.push(this.holeNode(conv.end(prev.seq), event.seq));
        nodes.push(holes.at(-1));
        prev = null;
      }
      if (prev === null || dayKey(prev.ts) !== dayKey(event.ts)) nodes.push(this.dayNode(event));
      if (event.seq === dividerSeq) nodes.push(this.dividerNode(conv));
      const run = [event];
      while (Conversation.isComing(event) && i < seqs.length) {
        const next = entries.get(seqs[i]);
        const joins =
          Conversation.isComing(next) &&
          !conv.holeBetween(run.at(-1).seq, next.seq) &&
          dayKey(next.ts) === dayKey(event.ts);
        if (!joins) break;
        run.push(next);
        i += 1;
      }
      const node = run.length > 1 ? this.runNode(run) : eventNode(event, prev, this.mine(event));
      if (event.seq === this.focused) node.classList.add("focus");
      for (const e of run) this.shown.set(e.seq, node);
      nodes.push(node);
      prev = run.at(-1);
    }
    this.list.replaceChildren(...nodes);
    for (const hole of holes) this.watcher.observe(hole);
    this.list.setAttribute("aria-busy", "false");
  }
}

// --- conversation lists, members, notices ---------------------------------------------------

function convButton(conv, current, onSelect) {
  const unread = conv.unreadCount();
  return el(
    "li",
    {},
    el(
      "button",
      {
        type: "button",
        class: "conv",
        "aria-current": conv.key === current ? "true" : null,
        dataset: { key: conv.key },
        onclick: () => onSelect(conv.key),
      },
      el("span", { class: "name", text: conv.title }),
      unread > 0
        ? el("span", { class: "badge", text: String(unread), title: `${unread} unread` })
        : null,
      unread > 0 ? el("span", { class: "visually-hidden", text: `, ${unread} unread` }) : null,
    ),
  );
}

/** Draw the room and private-conversation lists; returns the total unread count. */
export function drawConversations(convs, current, onSelect) {
  const rooms = [];
  const dms = [];
  let unread = 0;
  for (const conv of [...convs.values()].sort((a, b) => a.key.localeCompare(b.key))) {
    if (conv.kind === "room" && !conv.joined) continue;
    (conv.kind === "room" ? rooms : dms).push(convButton(conv, current, onSelect));
    unread += conv.unreadCount(); // the one shown has some only while the page is hidden
  }
  byId("room-list").replaceChildren(...rooms);
  byId("dm-list").replaceChildren(
    ...(dms.length ? dms : [el("li", { class: "muted", text: "Choose a member to write to." })]),
  );
  return unread;
}

/** Draw the members of `conv` (online first), each a button that opens a private chat. */
export function drawMembers(conv, me, onMessage) {
  const people = [...conv.members.values()].sort(
    (a, b) => Number(b.online) - Number(a.online) || a.name.localeCompare(b.name),
  );
  const items = people.map((person) =>
    el(
      "li",
      { class: person.online ? "member online" : "member offline" },
      el("span", { class: "dot", "aria-hidden": "true" }),
      person.name === me
        ? el(
            "span",
            { class: "name" },
            nameNode(person.name),
            el("span", { class: "muted", text: " (you)" }),
          )
        : el(
            "button",
            {
              type: "button",
              class: "name",
              title: `Send a private message to ${person.name}`,
              onclick: () => onMessage(person.name),
            },
            nameNode(person.name),
          ),
      el("span", { class: "visually-hidden", text: person.online ? ", online" : ", offline" }),
    ),
  );
  byId("member-list").replaceChildren(...items);
  const online = people.filter((p) => p.online).length;
  byId("members-heading").textContent =
    conv.kind === "dm" ? "Conversation" : `Members (${online} online)`;
}

/** Show a short notice for a few seconds ("error" notices are styled as such). */
export function notify(text, kind = "info") {
  const box = byId("notices");
  const role = kind === "error" ? "alert" : null;
  const notice = el("p", { class: `notice ${kind}`, role, text });
  box.append(notice);
  while (box.childElementCount > 4) box.firstElementChild.remove();
  setTimeout(() => notice.remove(), kind === "error" ? 8000 : 5000);
}

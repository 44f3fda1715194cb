// Drawing the page from the client's state: the message list, the conversation lists, the
// member list and notices. Text always goes in as text (see dom.js).

import { Conversation } from "./conversation.js";
import { byId, dayKey, dayLabel, el, nameNode, timeNode } from "./dom.js";

const GROUP_SECONDS = 300; // a message this soon after one from the same person joins its group
const STICK_PX = 48; // within this of the bottom, new messages keep the list scrolled down

// --- the message list -----------------------------------------------------------------------

function systemLine(event) {
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
        el("span", { class: "text", text: event.text }),
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
    el("p", { class: "text", text: event.text }),
  );
}

function dividerText(count) {
  return count === 1
    ? "1 new message while you were away"
    : `${count} new messages while you were away`;
}

export class MessageList {
  constructor() {
    this.list = byId("messages"); // the <ol role="log">
    this.scroller = byId("scroller"); // what scrolls: the list's box
    this.conv = null; // the conversation shown
    this.me = ""; // our name: our own messages are marked
    this.signed = false; // we are signed in to an account (not a guest)
    this.dividerLabel = null; // the divider's text node, while one is shown
  }

  /** Show `conv`: at its divider when it has one, else at its newest message. */
  show(conv, me) {
    this.conv = conv;
    this.me = me;
    this.render();
    const divider = this.list.querySelector(".divider");
    if (divider !== null) divider.scrollIntoView({ block: "center" });
    else this.toBottom();
  }

  /** Draw everything again, keeping what the reader looks at in place (older messages added
   * above do not move it; a reader at the bottom stays there). */
  refresh() {
    const stick = this.atBottom();
    const fromBottom = this.scroller.scrollHeight - this.scroller.scrollTop;
    this.render();
    if (stick) this.toBottom();
    else this.scroller.scrollTop = this.scroller.scrollHeight - fromBottom;
  }

  /** Show the newest event of the conversation (just added with seq `seq`). */
  append(seq) {
    const conv = this.conv;
    const stick = this.atBottom();
    const event = conv.entries.get(seq);
    const prev = conv.previous(seq);
    const before = conv.dividerBefore();
    if (before !== null && before !== seq && this.dividerLabel === null) {
      this.refresh(); // the divider now belongs above messages already shown
      return;
    }
    const nodes = [];
    if (prev === null || dayKey(prev.ts) !== dayKey(event.ts)) nodes.push(this.dayNode(event));
    if (before === seq && this.dividerLabel === null) nodes.push(this.dividerNode(conv));
    nodes.push(eventNode(event, prev, this.mine(event)));
    this.list.append(...nodes);
    this.updateDivider();
    if (stick || event.from === this.me) this.toBottom();
  }

  /** Whether we sent `event`: our name, and signed in as we are now (a guest of our name,
   * before we had an account, is someone else). */
  mine(event) {
    return event.from === this.me && Boolean(event.signed) === this.signed;
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

  render() {
    const conv = this.conv;
    this.dividerLabel = null;
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
    let prev = null;
    for (const seq of conv.seqs) {
      const event = conv.entries.get(seq);
      if (prev === null || dayKey(prev.ts) !== dayKey(event.ts)) nodes.push(this.dayNode(event));
      if (seq === dividerSeq) nodes.push(this.dividerNode(conv));
      nodes.push(eventNode(event, prev, this.mine(event)));
      prev = event;
    }
    this.list.replaceChildren(...nodes);
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

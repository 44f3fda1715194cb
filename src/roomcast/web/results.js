// The answers to commands typed in the composer (/who, /rooms, /history, /search, /help),
// shown in a panel above it until closed. Text always goes in as text (see dom.js).

import { Conversation } from "./conversation.js";
import { byId, el, nameNode, stampNode } from "./dom.js";
import { systemLine } from "./view.js";

/**
 * Show the panel with a `title`, its `items` (<li> nodes) and `footer` nodes (notes, a
 * button for more), replacing what it showed.
 */
export function showResults(title, items, footer = []) {
  byId("results-title").textContent = title;
  byId("results-list").replaceChildren(...items);
  byId("results-footer").replaceChildren(...footer);
  byId("results").hidden = false;
}

export function closeResults() {
  byId("results").hidden = true;
}

/** Whether the panel is open. */
export function resultsShown() {
  return !byId("results").hidden;
}

/** An item for one event of a history page or a search: date and time, who, what. With
 * `onOpen`, the item is a button that shows the event in its conversation. */
export function eventItem(event, onOpen = null) {
  let what;
  if (Conversation.isChat(event)) {
    const action = event.kind === "action";
    what = [
      nameNode(event.from),
      action ? " " : ": ",
      el("span", { class: action ? "text action" : "text", text: event.text }),
    ];
  } else {
    const [icon, text] = systemLine(event);
    what = [el("span", { class: "text muted", text: `${icon} ${text}` })];
  }
  const parts = [stampNode(event.ts), " ", ...what];
  if (onOpen === null) return el("li", { class: "hit" }, ...parts);
  const title = "Show it in the conversation";
  const button = { type: "button", class: "hit", title, onclick: onOpen };
  return el("li", {}, el("button", button, ...parts));
}

/** An item for a person: a button that opens a private conversation, except for `me`. */
export function personItem(name, me, onMessage) {
  if (name === me) return el("li", {}, el("span", { class: "person" }, nameNode(name)));
  const title = `Send a private message to ${name}`;
  const button = { type: "button", class: "person", title, onclick: () => onMessage(name) };
  return el("li", {}, el("button", button, nameNode(name)));
}

/** A line of text for the panel's footer or list. */
export function note(text) {
  return el("p", { class: "muted", text });
}

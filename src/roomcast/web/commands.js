// What a /command typed in the composer means. The commands and their arguments are those of
// the line protocol (docs/protocol.md, `/help` on nc), parsed the same way; chat.js carries
// them out over the JSON protocol. No DOM here.

/** The commands, with what each does (the /help list). */
export const COMMANDS = [
  ["/me text", "an action: * you text"],
  ["/msg name text", "send a private message"],
  ["/join #room", "join a room (it is created if new) and show it"],
  ["/leave [#room]", "leave a room (the one shown by default)"],
  ["/nick name", "change your guest name"],
  ["/who [#room]", "who is in a room"],
  ["/rooms", "the rooms and how many are in each"],
  ["/history [#room] [before|after|around seq] [count]", "a page of history"],
  ["/search [#room] words", "find messages containing every word"],
  ["/quit", "sign out"],
  ["/help", "this list"],
  ["//text", "say text that starts with /"],
];

/** A command typed wrong: `message` says what to type. */
export class CommandError extends Error {}

function usage(text) {
  return new CommandError(`usage: ${text}`);
}

/** `arg` split into a leading "#room" (or null) and the rest. */
function roomAndRest(arg) {
  const match = /^(#\S*)\s*([\s\S]*)$/.exec(arg);
  return match === null ? [null, arg] : [match[1], match[2]];
}

/** `word` as a sequence number or count (digits only). */
function number(word, text) {
  if (!/^\d{1,15}$/.test(word)) throw usage(text);
  return Number(word);
}

/** One word, or nothing when `optional`. */
function oneWord(arg, text, optional = false) {
  if ((arg === "" && !optional) || /\s/.test(arg)) throw usage(text);
  return arg === "" ? null : arg;
}

function history(arg) {
  const text = "/history [#room] [before|after|around seq] [count]";
  const [room, rest] = roomAndRest(arg);
  let words = rest === "" ? [] : rest.split(/\s+/);
  const command = { verb: "history", room, limit: 50 };
  if (words.length > 0 && ["before", "after", "around"].includes(words[0])) {
    if (words.length < 2) throw usage(text);
    command[words[0]] = number(words[1], text);
    words = words.slice(2);
  }
  if (words.length > 1) throw usage(text);
  if (words.length === 1) command.limit = number(words[0], text);
  if (command.limit < 1) throw usage(text);
  return command;
}

/**
 * The command `text` (which starts with "/") asks for, as `{verb, ...arguments}`; rooms as
 * typed (null: the one shown). Throws `CommandError` for an unknown command or a wrong use.
 */
export function parseCommand(text) {
  const [, word = "", rest = ""] = /^\/(\S*)\s*([\s\S]*)$/.exec(text) ?? [];
  const arg = rest.trim();
  const verb = word.toLowerCase();
  switch (verb) {
    case "me":
      if (arg === "") throw usage("/me text");
      return { verb, text: arg };
    case "msg": {
      const match = /^(\S+)\s+([\s\S]+)$/.exec(arg);
      if (match === null) throw usage("/msg name text");
      return { verb, to: match[1], text: match[2] };
    }
    case "join":
      return { verb, room: oneWord(arg, "/join #room") };
    case "leave":
    case "part":
      return { verb: "leave", room: oneWord(arg, "/leave [#room]", true) };
    case "nick":
      return { verb, name: oneWord(arg, "/nick name") };
    case "who":
      return { verb, room: oneWord(arg, "/who [#room]", true) };
    case "rooms":
    case "list":
      return { verb: "rooms" };
    case "history":
      return history(arg);
    case "search": {
      const [room, words] = roomAndRest(arg);
      if (words === "") throw usage("/search [#room] words");
      return { verb, room, words };
    }
    case "quit":
    case "logout":
      return { verb: "quit" };
    case "help":
      return { verb };
  }
  const shown = /^[A-Za-z0-9]{1,20}$/.test(word) ? ` /${word}` : "";
  throw new CommandError(`unknown command${shown}: type /help for the list`);
}

// The chat session: the client's state, the frames of the JSON protocol (docs/protocol.md),
// and what each one changes. Drawing is left to view.js, page wiring to app.js.
//
// Resuming: for each room it keeps every event by seq. After a drop it says hello again (the
// token, or the same guest name: if that name is still held by the old session, it retries
// after the backoff), then `join {room, since}` for each room it was in, `since` being the
// end of the run of seqs it holds without a hole, so the server replays exactly what is
// missing. Anything that comes twice anyway is dropped by seq.

import { Connection } from "./connection.js";
import { Conversation, dmKey, roomKey } from "./conversation.js";
import { MessageList, drawConversations, drawMembers, notify } from "./view.js";

const PAGE = 50; // messages per history page
const MAX_REQUESTS = 500; // requests remembered while waiting for their replies
const ROOM_EVENTS = new Set(["message", "join", "leave", "presence", "nick"]);
const QUIET = new Set(["hello", "join", "rejoin", "who", "rooms", "initial", "older", "probe"]);
const NAME = /^[A-Za-z0-9_.-]{1,32}$/;

/** The key under which a name is unique (names compare case-insensitively). */
const fold = (name) => name.toLowerCase();

export class Chat {
  /**
   * @param {object} ui what the page shows around the chat
   * @param {(name: string, guest: boolean) => void} ui.signedIn the server welcomed us
   * @param {(name: string) => void} ui.renamed our (guest) name changed
   * @param {(message: string) => void} ui.signedOut back to the sign-in form, with why
   * @param {(down: boolean) => void} ui.disconnected show or hide the "reconnecting" banner
   * @param {(conv: Conversation | null) => void} ui.showing the conversation shown changed
   * @param {(unread: number) => void} ui.unread unread messages outside the one shown
   * @param {(names: string[]) => void} ui.roomNames every room of the server (suggestions)
   * @param {(text: string) => void} ui.restore put back text that could not be sent
   * @param {() => void} ui.forgetToken the stored token is no good: drop it
   */
  constructor(ui) {
    this.ui = ui;
    this.conn = new Connection({
      onFrame: (frame) => this.receive(frame),
      onLink: (up) => this.link(up),
    });
    this.list = new MessageList();
    this.credentials = null; // {token} or {name}: what each hello sends
    this.me = null; // our name, once welcomed
    this.welcomed = false; // welcomed on an earlier connection: the next welcome is a resume
    this.convs = new Map(); // key -> Conversation
    this.current = null; // key of the conversation shown
    this.requests = new Map(); // request id -> {kind, room?, text?}
    this.dirty = Chat.clean(); // what the frames being handled changed, drawn by flush()
  }

  static clean() {
    return { appended: [], refresh: false, sidebar: false, members: false, fill: false };
  }

  // -- session --

  /** Connect as a guest ({name}) or an account ({token}). */
  start(credentials) {
    this.credentials = credentials;
    this.conn.start();
  }

  /** Leave for good: quit, forget everything, back to the sign-in form. */
  stop(message = "") {
    this.conn.stop(this.welcomed ? { type: "quit", reason: "signed out" } : null);
    this.credentials = null;
    this.me = null;
    this.welcomed = false;
    this.convs.clear();
    this.current = null;
    this.requests.clear();
    this.ui.disconnected(false);
    this.ui.signedOut(message);
  }

  link(up) {
    if (!up) {
      this.ui.disconnected(true);
      return;
    }
    this.requests.clear(); // replies to the old socket's requests will never come
    const hello = this.credentials.token
      ? { type: "hello", token: this.credentials.token }
      : { type: "hello", name: this.me ?? this.credentials.name };
    this.request(hello, { kind: "hello" });
  }

  /** Send a request and remember what it was for; returns its id, null if not connected. */
  request(frame, about) {
    const id = this.conn.send(frame);
    if (id === null) return null;
    this.requests.set(id, about);
    if (this.requests.size > MAX_REQUESTS) this.requests.delete(this.requests.keys().next().value);
    return id;
  }

  // -- frames in --

  receive(frame) {
    this.handle(frame);
    this.flush();
  }

  handle(frame) {
    if (frame.type === "batch") {
      for (const event of Array.isArray(frame.events) ? frame.events : []) this.handle(event);
      return;
    }
    if (ROOM_EVENTS.has(frame.type)) {
      this.roomEvent(frame);
      return;
    }
    // Room events carry a message id; everything else may carry our request's id.
    const about = frame.id === undefined ? null : (this.requests.get(frame.id) ?? null);
    if (frame.type === "ok" || frame.type === "error") this.requests.delete(frame.id);
    const handler = this.handlers[frame.type];
    if (handler !== undefined) handler.call(this, frame, about);
  }

  handlers = {
    welcome(frame) {
      const resuming = this.welcomed;
      this.me = frame.name;
      this.list.signed = Boolean(this.credentials.token); // a guest's own are unsigned
      this.welcomed = true;
      this.conn.established();
      this.ui.disconnected(false);
      this.ui.signedIn(frame.name, !this.credentials.token);
      if (resuming) this.resume();
      this.request({ type: "rooms" }, { kind: "rooms", fresh: !resuming });
    },

    who(frame, about) {
      let conv = this.convs.get(frame.room);
      const joining = about !== null && ["hello", "join", "rejoin"].includes(about.kind);
      if (conv === undefined) {
        if (!joining) return;
        conv = this.room(frame.room);
      }
      if (joining) this.joined(conv, about.kind === "join");
      const online = new Set(frame.names.map(fold));
      for (const [key, person] of conv.members) {
        if (person.online && !online.has(key)) conv.members.delete(key);
      }
      for (const name of frame.names) conv.members.set(fold(name), { name, online: true });
      if (conv.key === this.current) this.dirty.members = true;
    },

    rooms(frame, about) {
      this.ui.roomNames(frame.rooms.map((room) => room.name));
      for (const entry of frame.rooms) {
        if (entry.unread === null || entry.unread === undefined) continue; // not one of ours
        const conv = this.room(entry.name);
        this.joined(conv);
        if (about?.fresh && conv.key !== this.current) {
          conv.serverUnread = Math.max(conv.serverUnread, entry.unread);
        }
      }
      this.dirty.sidebar = true;
    },

    unread(frame) {
      for (const [name, count] of Object.entries(frame.rooms)) {
        const conv = this.room(name);
        this.joined(conv);
        if (conv.key !== this.current) conv.serverUnread = Math.max(conv.serverUnread, count);
      }
      this.dirty.sidebar = true;
    },

    summary(frame) {
      const conv = this.room(frame.room);
      this.joined(conv);
      const until = frame.first_seq + frame.replayed - 1; // the newest message replayed
      if (conv.resumeFrom !== null) {
        // A resume: count from what this page last held, as the messages arrive.
        const divider = conv.divider;
        const after = conv.resumeFrom;
        conv.divider = { after, until: Math.max(until, divider?.until ?? 0), count: null };
      } else {
        conv.divider = { after: frame.first_seq - 1, until, count: frame.missed };
      }
      if (conv.key !== this.current) conv.serverUnread = Math.max(conv.serverUnread, frame.missed);
      this.changed(conv);
    },

    history(frame, about) {
      const conv = this.convs.get(frame.with === undefined ? frame.room : dmKey(frame.with));
      if (conv === undefined) return;
      if (about?.kind === "probe") {
        if (conv.divider !== null && conv.divider.count === null) {
          conv.divider.until = Math.max(conv.divider.until ?? 0, frame.latest_seq);
          this.changed(conv);
        }
        return;
      }
      for (const message of frame.messages) conv.add(message);
      if (frame.messages.length === 0 || frame.messages[0].seq <= frame.oldest_seq) {
        conv.atStart = true;
      }
      if (about?.kind === "older") conv.loadingOlder = false;
      this.changed(conv);
      if (conv.key === this.current) this.dirty.fill = true;
    },

    dm(frame) {
      const other = fold(frame.from) === fold(this.me ?? "") ? frame.to : frame.from;
      this.add(this.dm(other), frame, true);
    },

    gap(frame) {
      const lost = frame.to_seq - frame.from_seq + 1;
      if (frame.room === null) {
        notify(`${lost} private message${lost === 1 ? " is" : "s are"} no longer kept`, "error");
        return;
      }
      const conv = this.room(frame.room);
      const ts = conv.previous(frame.from_seq)?.ts ?? Date.now() / 1000;
      this.add(conv, { ...frame, type: "gap", seq: frame.from_seq, ts }, false);
    },

    info(frame, about) {
      if (about?.kind === "leave") this.forget(about.room);
      if (about?.kind === "join") this.joined(this.room(about.room), true);
      if (about !== null && QUIET.has(about.kind)) return;
      notify(frame.text);
    },

    error(frame, about) {
      switch (about?.kind) {
        case "hello":
          this.refused(frame);
          return;
        case "join": {
          const conv = this.convs.get(about.room);
          if (conv !== undefined && !conv.joined) this.forget(conv.key);
          break;
        }
        case "send":
        case "dm":
          this.ui.restore(about.text);
          break;
        case "older": {
          const conv = this.convs.get(about.room);
          if (conv !== undefined) {
            conv.loadingOlder = false;
            this.changed(conv);
          }
          break;
        }
      }
      notify(frame.message, "error");
    },
  };

  /** The server refused our hello. */
  refused(frame) {
    if (this.welcomed && ["name_taken", "flood", "unavailable"].includes(frame.code)) {
      // Our old session may not have timed out yet, or the server is busy: try again later.
      this.conn.retryLater();
      return;
    }
    if (frame.code === "bad_token" || frame.code === "expired_token") {
      this.ui.forgetToken();
    }
    this.stop(frame.message);
  }

  /** Reconnected: ask every room for what we missed, from where we are sure we have all. */
  resume() {
    for (const conv of this.convs.values()) {
      if (conv.kind !== "room" || !conv.joined) continue;
      const since = conv.resumePoint();
      const join = { type: "join", room: conv.key };
      if (since !== null) join.since = since;
      this.request(join, { kind: "rejoin", room: conv.key });
      if (since === null) continue;
      conv.resumeFrom = since;
      conv.divider = { after: since, until: null, count: null };
      const probe = { type: "history", room: conv.key, limit: 1 }; // its latest_seq
      this.request(probe, { kind: "probe", room: conv.key });
      this.changed(conv);
    }
  }

  roomEvent(event) {
    const conv = this.room(event.room);
    const where = this.add(conv, event, true);
    if (where === null) return; // a duplicate
    // An event older than the newest one held (a replay that came late) changes no state.
    const own = fold(event.from) === fold(this.me ?? "");
    if (where === "last" && event.type === "leave" && own) {
      this.forget(conv.key); // we left (here, or in another tab of the same account)
      return;
    }
    this.joined(conv); // a live event from a room: we are in it
    if (where !== "last") return;
    if (event.type === "nick" && own) {
      this.me = event.to; // a guest's new name: also the one a reconnection says hello with
      this.ui.renamed(event.to);
    }
    this.members(conv, event);
  }

  /** Keep `event` in `conv` and schedule the drawing it needs; returns where it went
   * ("last", "middle") or null for a duplicate. */
  add(conv, event, live) {
    const where = conv.add(event);
    if (where === null) return null;
    const shown = conv.key === this.current;
    const unseen = !shown || document.hidden;
    if (live && unseen && Conversation.isChat(event) && event.from !== this.me) {
      conv.unread += 1;
      this.dirty.sidebar = true;
    }
    if (shown && where === "last" && !this.dirty.refresh) this.dirty.appended.push(event.seq);
    else if (shown) this.dirty.refresh = true;
    return where;
  }

  members(conv, event) {
    const key = fold(event.from);
    switch (event.type) {
      case "join":
        conv.members.set(key, { name: event.from, online: true });
        break;
      case "leave":
        conv.members.delete(key);
        break;
      case "presence":
        conv.members.set(key, { name: event.from, online: false });
        break;
      case "nick":
        conv.members.delete(key);
        conv.members.set(fold(event.to), { name: event.to, online: true });
        break;
      default:
        return;
    }
    if (conv.key === this.current) this.dirty.members = true;
  }

  /** Redraw `conv` entirely if it is shown. */
  changed(conv) {
    if (conv.key === this.current) this.dirty.refresh = true;
    this.dirty.sidebar = true;
  }

  /** Draw what the frames just handled changed, once per frame. */
  flush() {
    const dirty = this.dirty;
    this.dirty = Chat.clean();
    const conv = this.convs.get(this.current);
    if (conv !== undefined) {
      if (dirty.refresh) this.list.refresh();
      else for (const seq of dirty.appended) this.list.append(seq);
      if (dirty.members) drawMembers(conv, this.me, (name) => this.openDm(name));
      if (dirty.fill && this.list.fits()) this.loadOlder(conv);
    }
    if (dirty.sidebar || dirty.refresh || dirty.appended.length) this.drawSidebar();
  }

  drawSidebar() {
    this.ui.unread(drawConversations(this.convs, this.current, (key) => this.select(key)));
  }

  // -- conversations --

  /** The conversation of room `name` (as the server spells it), made if new. */
  room(name) {
    let conv = this.convs.get(name);
    if (conv === undefined) {
      conv = new Conversation(name, name);
      this.convs.set(name, conv);
    }
    return conv;
  }

  /** The private conversation with `name`, made if new. */
  dm(name) {
    const key = dmKey(name);
    let conv = this.convs.get(key);
    if (conv === undefined) {
      conv = new Conversation(key, name);
      conv.members.set(fold(name), { name, online: true });
      if (this.me !== null) conv.members.set(fold(this.me), { name: this.me, online: true });
      this.convs.set(key, conv);
      this.dirty.sidebar = true;
      const frame = { type: "history", with: name, limit: PAGE }; // what we said before
      conv.historyAsked = this.request(frame, { kind: "initial", room: key }) !== null;
    }
    return conv;
  }

  /** We are in room `conv`: load its recent history and members; show it if `show`, or if
   * nothing is shown yet. */
  joined(conv, show = false) {
    if (!conv.joined) {
      conv.joined = true;
      this.dirty.sidebar = true;
      if (!conv.historyAsked) {
        const frame = { type: "history", room: conv.key, limit: PAGE };
        conv.historyAsked = this.request(frame, { kind: "initial", room: conv.key }) !== null;
      }
      if (conv.members.size === 0) this.request({ type: "who", room: conv.key }, { kind: "who" });
    }
    if (show || !this.convs.has(this.current)) this.select(conv.key);
  }

  /** Drop a conversation (a room we left, a private chat closed). */
  forget(key) {
    if (!this.convs.delete(key)) return;
    this.dirty.sidebar = true;
    if (this.current === key) {
      const next = [...this.convs.values()].find((c) => c.kind === "dm" || c.joined);
      this.select(next?.key ?? null);
    }
  }

  /** Show conversation `key` (null: none). */
  select(key) {
    const previous = this.convs.get(this.current);
    if (previous !== undefined && previous.key !== key) previous.divider = null; // it was seen
    const conv = key === null ? undefined : this.convs.get(key);
    this.current = conv === undefined ? null : key;
    this.dirty = { ...Chat.clean(), sidebar: true };
    if (conv === undefined) {
      this.ui.showing(null);
      this.drawSidebar();
      return;
    }
    conv.unread = 0;
    conv.serverUnread = 0;
    this.list.show(conv, this.me);
    drawMembers(conv, this.me, (name) => this.openDm(name));
    this.ui.showing(conv);
    this.drawSidebar();
    if (this.list.fits()) this.loadOlder(conv);
  }

  /** The page is in view again: what the conversation shown received meanwhile is read. */
  seen() {
    const conv = this.convs.get(this.current);
    if (conv === undefined || conv.unread + conv.serverUnread === 0) return;
    conv.unread = 0;
    conv.serverUnread = 0;
    this.drawSidebar();
  }

  /** Ask for the page of history before the oldest message shown. */
  loadOlder(conv = this.convs.get(this.current)) {
    if (conv === undefined || conv.atStart || conv.loadingOlder) return;
    if (conv.oldest === null) return; // the first page has not come yet
    const where = conv.kind === "room" ? { room: conv.key } : { with: conv.title };
    const frame = { type: "history", ...where, before: conv.oldest, limit: PAGE };
    if (this.request(frame, { kind: "older", room: conv.key }) === null) return;
    conv.loadingOlder = true;
    this.changed(conv);
    this.flush();
  }

  // -- what the user does --

  /** Join (or create) a room, or open a private chat with "@name". */
  join(text) {
    const wanted = text.trim();
    if (wanted.startsWith("@")) return this.openDm(wanted.slice(1));
    const key = roomKey(wanted);
    if (!NAME.test(key.slice(1))) {
      notify(`"${wanted}" is not a room name: use 1-32 letters, digits, "_", "-" or "."`, "error");
      return false;
    }
    const conv = this.convs.get(key);
    if (conv?.joined) {
      this.select(key);
      return true;
    }
    if (this.request({ type: "join", room: key }, { kind: "join", room: key }) === null) {
      notify("Not connected: try again in a moment.", "error");
      return false;
    }
    this.room(key);
    return true;
  }

  /** Show the private conversation with `name`. */
  openDm(name) {
    if (!NAME.test(name)) {
      notify(`"${name}" is not a name: use 1-32 letters, digits, "_", "-" or "."`, "error");
      return false;
    }
    this.select(this.dm(name).key);
    return true;
  }

  /** Leave the room shown, or close the private conversation shown. */
  leaveCurrent() {
    const conv = this.convs.get(this.current);
    if (conv === undefined) return;
    if (conv.kind === "dm") {
      this.forget(conv.key);
      return;
    }
    const about = { kind: "leave", room: conv.key };
    if (this.request({ type: "leave", room: conv.key }, about) === null) {
      notify("Not connected: try again in a moment.", "error");
    }
  }

  /** Send what was typed in the composer (text or a /command); false if it was not sent. */
  say(text) {
    if (text.startsWith("/") && !text.startsWith("//")) return this.command(text);
    const conv = this.convs.get(this.current);
    if (conv === undefined) {
      notify("Join a room first.", "error");
      return false;
    }
    const body = text.startsWith("//") ? text.slice(1) : text;
    const frame =
      conv.kind === "room"
        ? { type: "send", room: conv.key, text: body }
        : { type: "dm", to: conv.title, text: body };
    return this.sent(this.request(frame, { kind: frame.type, text }));
  }

  command(text) {
    const [, verb, rest = ""] = /^\/(\S+)\s*([\s\S]*)$/.exec(text) ?? [];
    const conv = this.convs.get(this.current);
    switch (verb) {
      case "me":
        if (conv?.kind !== "room") break;
        return this.sent(
          this.request({ type: "action", room: conv.key, text: rest }, { kind: "send", text }),
        );
      case "join":
        return this.join(rest);
      case "leave":
      case "part":
        this.leaveCurrent();
        return true;
      case "msg": {
        const [, to, body] = /^(\S+)\s+([\s\S]+)$/.exec(rest) ?? [];
        if (to === undefined) break;
        return this.sent(this.request({ type: "dm", to, text: body }, { kind: "dm", text }));
      }
      case "nick":
        return this.sent(this.request({ type: "nick", name: rest.trim() }, { kind: "nick" }));
    }
    notify(
      "Commands: /me text, /join #room, /leave, /msg name text, /nick name" +
        " (start with // to send a leading /)",
      "error",
    );
    return false;
  }

  sent(id) {
    if (id !== null) return true;
    notify("Not connected: your message is still in the box.", "error");
    return false;
  }
}

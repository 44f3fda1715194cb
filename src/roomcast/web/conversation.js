// What the client knows of one conversation: a room ("#name") or the private messages
// exchanged with one person ("@name"). No DOM here.
//
// Events are kept by their seq (a room's gap-free sequence number; for private messages the
// server's private seq), so whatever order they come in (live, catch-up, history pages,
// a resume replay) each is kept once and they are always shown in seq order.

const CHAT_TYPES = new Set(["message", "dm"]); // what counts as a message (not joins, leaves...)

/** The key of a room as typed ("General", "#general") — the server spells rooms in lower case. */
export function roomKey(text) {
  return "#" + text.trim().replace(/^#/, "").toLowerCase();
}

/** The key of the private conversation with `name`: names are unique case-insensitively. */
export function dmKey(name) {
  return "@" + name.toLowerCase();
}

export class Conversation {
  constructor(key, title) {
    this.key = key; // "#general" or "@alice"
    this.kind = key.startsWith("@") ? "dm" : "room";
    this.title = title; // "#general", or the person's name as they spell it
    this.entries = new Map(); // seq -> event (message, join, leave, presence, nick, dm, gap)
    this.seqs = []; // the keys of `entries`, ascending
    this.joined = false; // rooms: we are a member
    this.historyAsked = false; // the first page of history was asked for
    this.atStart = false; // nothing older exists: the history reached its start
    this.loadingOlder = false; // a history page is on its way
    this.unread = 0; // messages that arrived while another conversation was shown
    this.serverUnread = 0; // what the server counted at login (rooms, unread, summary frames)
    this.divider = null; // {after, until, count}: "N new messages while you were away"
    this.resumeFrom = null; // after a reconnection: the last seq held when the link dropped
    this.members = new Map(); // folded name -> {name, online}
  }

  /** Keep `event` (it has a seq); "last" if it is the newest, "middle" if older than one
   * already kept, null if that seq is already kept (a duplicate). */
  add(event) {
    const seq = event.seq;
    if (!Number.isInteger(seq) || this.entries.has(seq)) return null;
    this.entries.set(seq, event);
    const seqs = this.seqs;
    if (seqs.length === 0 || seq > seqs[seqs.length - 1]) {
      seqs.push(seq);
      return "last";
    }
    seqs.splice(this.indexAfter(seq - 1), 0, seq);
    return "middle";
  }

  /** The index in `seqs` of the first seq above `seq`. */
  indexAfter(seq) {
    let lo = 0;
    let hi = this.seqs.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.seqs[mid] <= seq) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** The oldest seq kept, or null. */
  get oldest() {
    return this.seqs.length ? this.seqs[0] : null;
  }

  /** The event just before `seq` in order, or null. */
  previous(seq) {
    const index = this.indexAfter(seq - 1);
    return index > 0 ? this.entries.get(this.seqs[index - 1]) : null;
  }

  /** Where to resume after a drop: the last seq of the run without a hole that starts at
   * the oldest one kept (a gap entry covers its whole range). null when nothing is kept. */
  resumePoint() {
    if (this.seqs.length === 0) return null;
    let end = this.seqs[0] - 1;
    for (const seq of this.seqs) {
      if (seq > end + 1) break;
      const entry = this.entries.get(seq);
      end = Math.max(end, entry.type === "gap" ? entry.to_seq : seq);
    }
    return end;
  }

  /** How many messages the divider announces (0: no divider). */
  dividerCount() {
    const divider = this.divider;
    if (divider === null) return 0;
    if (divider.count !== null) return divider.count;
    let count = 0;
    for (let i = this.indexAfter(divider.after); i < this.seqs.length; i++) {
      const seq = this.seqs[i];
      if (divider.until !== null && seq > divider.until) break;
      if (CHAT_TYPES.has(this.entries.get(seq).type)) count += 1;
    }
    return count;
  }

  /** The seq the divider is shown before (the first one after `divider.after`), or null. */
  dividerBefore() {
    if (this.dividerCount() <= 0) return null;
    const index = this.indexAfter(this.divider.after);
    return index < this.seqs.length ? this.seqs[index] : null;
  }

  /** The unread count to show. */
  unreadCount() {
    return Math.max(this.unread, this.serverUnread);
  }

  /** Whether `event` is a message (as opposed to a join, leave, presence or nick line). */
  static isChat(event) {
    return CHAT_TYPES.has(event.type);
  }
}

// What the client knows of one conversation: a room ("#name") or the private messages
// exchanged with one person ("@name"). No DOM here.
//
// Events are kept by their seq (a room's gap-free sequence number; for private messages the
// server's private seq), so whatever order they come in (live, catch-up, history pages,
// a resume replay) each is kept once and they are always shown in seq order.
//
// What is held need not be one run: a page loaded around the first unread message, or around
// a search hit, leaves a hole below it. A hole is a range of seqs between two held events
// (room seqs have no gaps of their own; what retention removed is held as a "gap" event),
// drawn as a row that loads the next page when it comes into view.

const CHAT_TYPES = new Set(["message", "dm"]); // what counts as a message (not joins, leaves...)
const COMINGS = new Set(["join", "leave", "presence"]); // comings and goings: shown in runs

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
    this.unread = 0; // messages that came live after `counted`, while not seen
    this.serverUnread = 0; // messages the server counted as unread (summary frames), not seen
    this.counted = 0; // the newest seq the server's count covers: later ones add to `unread`
    // {after, first, until, count}: "N new messages while you were away", shown above seq
    // `first` (null: above the first message after seq `after`); `count` null: counted here,
    // the messages after `after` up to `until` (null: all)
    this.divider = null;
    this.resumeFrom = null; // after a reconnection: the last seq held when the link dropped
    this.streamFrom = null; // the first seq the server sent live or replayed (not a page)
    this.loadingNewer = null; // the seq after which a page is on its way into a hole
    this.reveal = null; // what to bring into view once drawn: "divider", or a seq (a jump)
    this.members = new Map(); // folded name -> {name, online}
    this.membersProbe = null; // the room's newest seq, asked for just before a member list
    this.membersFrom = 0; // joins, leaves... up to this seq are already in `members`
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

  /** The last seq `seq`'s entry covers (a gap entry covers its whole range). */
  end(seq) {
    const entry = this.entries.get(seq);
    return entry.type === "gap" ? Math.max(seq, entry.to_seq) : seq;
  }

  /** Whether seqs are missing (not loaded) between the held seqs `seq` and `next`. Only a
   * room's seqs follow each other: private messages are numbered across all conversations. */
  holeBetween(seq, next) {
    return this.kind === "room" && this.end(seq) + 1 < next;
  }

  /** Where to resume after a drop: the end of the run without a hole that starts where the
   * server's stream started (pages loaded elsewhere, around a search hit or an unread
   * message, do not count); null when nothing is kept. */
  resumePoint() {
    if (this.seqs.length === 0) return null;
    const streamed = this.streamFrom !== null && this.entries.has(this.streamFrom);
    let index = streamed ? this.indexAfter(this.streamFrom - 1) : this.seqs.length - 1;
    let end = this.end(this.seqs[index]);
    for (index += 1; index < this.seqs.length && this.seqs[index] <= end + 1; index++) {
      end = Math.max(end, this.end(this.seqs[index]));
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

  /** The seq the divider is shown above: the first unread message, once it is held; null
   * when there is no divider, or not yet. Joins and quits are never "new messages": the
   * divider goes below them. */
  dividerBefore() {
    if (this.dividerCount() <= 0) return null;
    const { after, first, until } = this.divider;
    if (first !== null) return this.entries.has(first) ? first : null;
    for (let i = this.indexAfter(after); i < this.seqs.length; i++) {
      const seq = this.seqs[i];
      if (until !== null && seq > until) break;
      if (Conversation.isChat(this.entries.get(seq))) return seq;
    }
    return null;
  }

  /** The unread count to show: what the server counted at login plus what came since. */
  unreadCount() {
    return this.unread + this.serverUnread;
  }

  /** Whether `event` is a message (as opposed to a join, leave, presence or nick line). */
  static isChat(event) {
    return CHAT_TYPES.has(event.type);
  }

  /** Whether `event` is someone coming or going (join, leave, quit): such lines are shown
   * collapsed, a run of them as one line. */
  static isComing(event) {
    return COMINGS.has(event.type);
  }
}

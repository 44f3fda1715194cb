// The WebSocket to the server: JSON frames in and out, and reconnection with backoff.
//
// After a drop it reconnects after 0.5 s, then 1, 2, 4, 8 and 10 s at most, each delay with
// jitter (between half and all of it) so that clients cut off together do not all come back
// in the same instant. The app sends its hello when told the link is up, and calls
// `established()` once the server has welcomed it, which resets the backoff.

const FIRST_DELAY = 500; // ms before the first retry
const MAX_DELAY = 10000; // ms: the delay doubles up to this

export class Connection {
  /**
   * @param {object} options
   * @param {(frame: object) => void} options.onFrame called with each frame received
   * @param {(up: boolean) => void} options.onLink called when the socket opens (send the
   *   hello then) or drops
   */
  constructor({ onFrame, onLink }) {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    this.url = `${scheme}//${location.host}/ws`; // the page's own server
    this.onFrame = onFrame;
    this.onLink = onLink;
    this.ws = null; // the current socket, if any
    this.timer = null; // the pending reconnection, if any
    this.attempt = 0; // reconnections since the last welcome
    this.stopped = true; // stop() was called: do not reconnect
    this.nextId = 1; // request ids: numbers, so they never look like message ids (strings)
  }

  /** Connect, and keep reconnecting until `stop()`. */
  start() {
    this.stopped = false;
    this.attempt = 0;
    this.open();
  }

  /** True while the socket is open. */
  get up() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  /** The server welcomed us: the next drop starts again from the shortest delay. */
  established() {
    this.attempt = 0;
  }

  /** Drop this socket and reconnect after the backoff (the server refused us for now). */
  retryLater() {
    if (this.ws !== null) this.ws.close(1000, "retrying");
  }

  /** Send a request; returns its id, or null when not connected (nothing was sent). */
  send(frame) {
    if (!this.up) return null;
    const id = this.nextId++;
    this.ws.send(JSON.stringify({ ...frame, id }));
    return id;
  }

  /** Close for good, sending `farewell` first when connected. */
  stop(farewell = null) {
    this.stopped = true;
    clearTimeout(this.timer);
    this.timer = null;
    const ws = this.ws;
    this.ws = null;
    if (ws === null) return;
    if (farewell !== null && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(farewell));
    ws.close(1000, "bye");
  }

  open() {
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.addEventListener("open", () => {
      if (this.ws !== ws) return;
      this.onLink(true);
    });
    ws.addEventListener("message", (event) => {
      if (this.ws !== ws || typeof event.data !== "string") return;
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return; // not JSON: not from our server
      }
      if (frame !== null && typeof frame === "object") this.onFrame(frame);
    });
    ws.addEventListener("close", () => {
      if (this.ws !== ws) return; // replaced or stopped
      this.ws = null;
      this.onLink(false);
      if (!this.stopped) this.schedule();
    });
  }

  schedule() {
    const ceiling = Math.min(MAX_DELAY, FIRST_DELAY * 2 ** this.attempt);
    this.attempt += 1;
    const delay = ceiling / 2 + (Math.random() * ceiling) / 2;
    this.timer = setTimeout(() => {
      this.timer = null;
      if (!this.stopped) this.open();
    }, delay);
  }
}

// One /ws connection that keeps itself alive: it reconnects with exponential
// backoff and jitter (capped at 30 s), pings when the link is quiet, and
// reports its state. What to do after a (re)connect — rejoining rooms with
// `since`, resending unacked messages — is the caller's business (onFrame
// receives the `welcome` frame of every new connection).

const BASE_DELAY_MS = 500;
const MAX_DELAY_MS = 30000;
const PING_AFTER_MS = 20000; // quiet this long: send {"type":"ping"}
const DEAD_AFTER_MS = 45000; // quiet this long: the link is dead, reconnect
const CHECK_EVERY_MS = 5000;

/** "Equal jitter": a delay in [d/2, d] for d = min(cap, base * 2^attempt). */
export function backoffDelay(attempt, base = BASE_DELAY_MS, cap = MAX_DELAY_MS) {
  const ceiling = Math.min(cap, base * 2 ** Math.min(attempt, 20));
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

export class Connection {
  /**
   * @param {object} o
   * @param {() => string} o.url        computed per attempt (the token may change)
   * @param {(frame: object) => void} o.onFrame
   * @param {(state: string, info: object) => void} o.onState
   *        states: "connecting", "open" (after welcome), "waiting" (until retryAt), "stopped"
   */
  constructor({ url, onFrame, onState }) {
    this.url = url;
    this.onFrame = onFrame;
    this.onState = onState;
    this.ws = null;
    this.state = "stopped";
    this.attempt = 0;
    this.retryTimer = null;
    this.checkTimer = null;
    this.lastHeard = 0;
  }

  start() {
    if (this.state !== "stopped") return;
    this.#connect();
  }

  stop() {
    clearTimeout(this.retryTimer);
    this.#dropSocket(1000);
    this.#setState("stopped", {});
  }

  get isOpen() {
    return this.state === "open";
  }

  /** Sends one frame (an object, or its JSON text); false when there is no open connection (nothing was sent). */
  send(frame) {
    if (!this.isOpen) return false;
    this.ws.send(typeof frame === "string" ? frame : JSON.stringify(frame));
    return true;
  }

  /** Skips the rest of the backoff wait (the "Retry now" button, the browser coming online). */
  retryNow() {
    if (this.state !== "waiting") return;
    clearTimeout(this.retryTimer);
    this.#connect();
  }

  #setState(state, info) {
    this.state = state;
    this.onState(state, info);
  }

  #connect() {
    this.#setState("connecting", { attempt: this.attempt });
    let ws;
    try {
      ws = new WebSocket(this.url());
    } catch {
      this.#lost(null, 1006, false);
      return;
    }
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.lastHeard = Date.now();
      clearInterval(this.checkTimer);
      this.checkTimer = setInterval(() => this.#check(), CHECK_EVERY_MS);
    };
    ws.onmessage = (event) => {
      this.lastHeard = Date.now();
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch {
        return;
      }
      if (frame?.type === "pong") return;
      if (frame?.type === "welcome") {
        this.attempt = 0;
        this.#setState("open", { user: frame.user });
      }
      this.onFrame(frame);
    };
    ws.onerror = () => {}; // a close event always follows
    ws.onclose = (event) => this.#lost(ws, event.code, opened, event.reason);
  }

  #check() {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return;
    const quiet = Date.now() - this.lastHeard;
    if (quiet > DEAD_AFTER_MS) this.#lost(this.ws, 4000, true, "no answer to ping");
    else if (quiet > PING_AFTER_MS) this.ws.send('{"type":"ping"}');
  }

  #dropSocket(code) {
    clearInterval(this.checkTimer);
    const ws = this.ws;
    this.ws = null;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try {
      ws.close(code);
    } catch {
      /* already closing */
    }
  }

  #lost(ws, code, opened, reason = "") {
    if (ws !== this.ws || this.state === "stopped") return;
    this.#dropSocket(1000);
    const delay = backoffDelay(this.attempt++);
    this.retryTimer = setTimeout(() => this.#connect(), delay);
    this.#setState("waiting", { code, opened, reason, retryAt: Date.now() + delay });
  }
}

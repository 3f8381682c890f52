// socker.js: the browser side of socker. A dependency-free ES module.
//
// The same step-chain model as the Python package, over a browser WebSocket
// (binaryType "arraybuffer"), plus the browser side of the WebRTC signaling
// steps of socker_transports.webrtc (wire format version 1).
//
//   import { Flow, run, webrtc } from "./socker.js";
//   const flow = new Flow("game");
//   flow.add((conn, msg) => { /* scene data */ conn.send(webrtc.hello()); return true; });
//   webrtc.clientAnswers(flow, { onChannel: (conn, channel) => { ... } });
//   flow.add((conn, msg) => false, { name: "control" });   // stays forever
//   const result = await run("ws://127.0.0.1:8765/game", flow);  // {code, reason, sentCode}
//
// A handler is handler(conn, message) and returns (or resolves to):
//   true -> advance; false/undefined -> stay; goto("name") -> jump;
//   closeWith(code, reason) -> close.
// Messages are handled one at a time in arrival order; while an async handler
// is pending, later messages wait. Advancing past the last step closes with
// 1000. A step `timeout` (seconds) closes with 4408. A handler that throws
// closes with 1011 and a text message with 1003 unless the connection was made
// with { acceptText: true } (locally reported codes: the
// browser WebSocket API can only send 1000 and 3000-4999, so those two go on
// the wire as 1000 with the reason; result.sentCode tells what was sent).
//
// Resume: connect(url, flow, { reconnect: true }) offers the subprotocol
// socker.resume.v1. Against a route whose flow has resume_window, a lost
// websocket (close code 1006) detaches the connection instead of ending it: the
// step, its timer and the queue stay, conn.send keeps messages for replay, and
// the page reconnects (backoff with jitter: 50 ms doubling to 5 s, each wait
// uniform in [d/2, d]) and resumes where it was; onDetach/onResume hooks run.
// Each side counts the binary messages it received and replays what the other
// missed, so every handler sees every message once, in order. On such a
// connection text frames are socker's control messages (see the README,
// "Resume"). A resume the server cannot honour ends with its code (4403, 4410,
// 4412, 4413); the page may then start a fresh connection. Browsers cannot see
// pings, so a silent drop (a phone moving from wifi to cellular) is noticed by
// a watchdog: a server that pings announces its ping_interval as `heartbeat` in
// its "session" / "resumed" message and sends an ack with every ping; no frame
// for 2 * heartbeat + 1 seconds (two beats missed, plus a second of slack) means
// the websocket is dead: it is dropped (its later events ignored) and the page
// goes down the path of a lost websocket (1006): detach, reconnect, resume. The
// dropped websocket is closed once the session resumed or ended, never before (a
// close frame reaching the server first would end the session).
// message is a Uint8Array for a binary message, a string for a text one (only with
// acceptText, as socker's accept_text=True); conn.send(string) sends a text message.

export const SIGNALING_VERSION = 1;
export const CLOSE = Object.freeze({
  NORMAL: 1000,
  UNSUPPORTED_DATA: 1003,
  INTERNAL_ERROR: 1011,
  SIGNALING_ERROR: 4400,
  STEP_TIMEOUT: 4408,
  CHANNEL_TIMEOUT: 4504,
  RESUME_REFUSED: 4403,
  SESSION_TAKEN_OVER: 4409,
  SESSION_GONE: 4410,
  FLOW_CHANGED: 4412,
  RESUME_BUFFER_OVERFLOW: 4413,
});

export const RESUME_SUBPROTOCOL = "socker.resume.v1";
const ACK_EVERY = 32;
const ACK_BYTES = 64 * 1024;
const RECONNECT_BASE = 0.05;
const RECONNECT_MAX = 5.0;

/** Seconds before reconnect attempt `attempt` (0-based), as socker_core.reconnect_delay. */
export function reconnectDelay(attempt, unit = Math.random()) {
  const ceiling = Math.min(RECONNECT_MAX, RECONNECT_BASE * 2 ** Math.min(attempt, 30));
  return ceiling * (0.5 + 0.5 * unit);
}

const GOTO = Symbol("goto");
const CLOSE_RESULT = Symbol("close");

/** Handler result: jump to the step named `name`. */
export function goto(name) {
  return { [GOTO]: name };
}

/** Handler result: close the connection with `code` and `reason`. */
export function closeWith(code = 1000, reason = "") {
  return { [CLOSE_RESULT]: [code, reason] };
}

export class Flow {
  constructor(name = "flow", { stepTimeout = null } = {}) {
    this.name = name;
    this.stepTimeout = stepTimeout;
    this.steps = [];
    this.openHooks = [];
    this.closeHooks = [];
    this.stepHooks = [];
    this.detachHooks = [];
    this.resumeHooks = [];
  }

  /** hook(conn): the websocket was lost and the connection waits to resume. */
  onDetach(hook) {
    this.detachHooks.push(hook);
    return this;
  }

  /** hook(conn): the connection resumed on a new websocket (onOpen does not run again). */
  onResume(hook) {
    this.resumeHooks.push(hook);
    return this;
  }

  /** Append a step. Returns the flow (chainable). */
  add(handler, { name = null, timeout = null } = {}) {
    if (typeof handler !== "function") throw new TypeError("a step handler must be a function");
    const stepName = name || handler.name || `step${this.steps.length}`;
    if (this.steps.some((s) => s.name === stepName)) {
      throw new Error(`flow ${this.name} already has a step named ${stepName}`);
    }
    this.steps.push({ name: stepName, handler, timeout: timeout ?? this.stepTimeout });
    return this;
  }

  /** hook(conn), may be async: runs once when the connection opens. */
  onOpen(hook) {
    this.openHooks.push(hook);
    return this;
  }

  /** hook(conn, {code, reason}), may be async: runs once when the connection ends. */
  onClose(hook) {
    this.closeHooks.push(hook);
    return this;
  }

  /** hook(conn, fromStep, toStep): called on every step change (for UIs and logs). */
  onStep(hook) {
    this.stepHooks.push(hook);
    return this;
  }

  indexOf(name) {
    return this.steps.findIndex((s) => s.name === name);
  }
}

const sendable = (code) => code === 1000 || (code >= 3000 && code <= 4999);

/** The `heartbeat` of a "session" / "resumed" message (seconds), or null. */
const heartbeatOf = (message) => {
  const beat = message.heartbeat;
  return typeof beat === "number" && Number.isFinite(beat) && beat > 0 ? beat : null;
};

export class Connection {
  constructor(
    url,
    flow,
    {
      protocols = undefined,
      reconnect = false,
      maxResumeBuffer = 1024 * 1024,
      acceptText = false,
    } = {},
  ) {
    if (!flow.steps.length) throw new Error(`flow ${flow.name} has no steps`);
    this.flow = flow;
    this.url = url;
    this.reconnect = reconnect;
    this.reconnects = 0;
    this.detached = false;
    this._protocols = protocols === undefined ? [] : [].concat(protocols);
    // Resume state (a ledger like socker_core.ReplayBuffer), once negotiated.
    this._resume = null;
    this._maxResumeBuffer = maxResumeBuffer;
    this.state = {};
    this.index = 0;
    this.closeCode = null;
    this.closeReason = "";
    this._queue = [];
    this._busy = false;
    this._closing = false;
    this._timer = null;
    this._done = false;
    // The heartbeat watchdog (see the header): its timer, and websockets it gave
    // up on, closed once the session resumed or ended.
    this._watchdog = null;
    this._abandoned = [];
    this.acceptText = acceptText;
    this.closed = new Promise((resolve) => {
      this._resolve = resolve;
    });
    const offered = reconnect ? [RESUME_SUBPROTOCOL, ...this._protocols] : protocols;
    this._attach(new WebSocket(url, offered), () => this._opened());
  }

  _attach(ws, onopen) {
    this.ws = ws;
    ws.binaryType = "arraybuffer";
    ws.onopen = () => {
      if (this.ws === ws) onopen();
    };
    ws.onmessage = (event) => {
      if (this.ws !== ws) return;
      this._watch(); // any frame shows the transport alive
      this._message(event.data);
    };
    ws.onclose = (event) => {
      if (this.ws === ws) this._lost(event.code, event.reason);
    };
    ws.onerror = () => {}; // onclose follows with 1006
  }

  /** (Re)arm the heartbeat watchdog on the current websocket, when the server
   * announced a heartbeat: no frame for 2 * heartbeat + 1 seconds is a lost
   * websocket. A no-op on connections without one, and once the session ended. */
  _watch() {
    this._unwatch();
    const resume = this._resume;
    if (resume === null || resume.heartbeat === null || this._done) return;
    const ws = this.ws;
    this._watchdog = setTimeout(() => {
      this._watchdog = null;
      if (this.ws !== ws || this._done) return;
      // The transport is dead though neither TCP stack said so: stop listening to
      // it and reconnect. Closing it now would send a close frame, and a close
      // frame reaching the server ends the session: it is closed once the session
      // resumed on a new websocket (or ended).
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      this._abandoned.push(ws);
      this._lost(1006, `no frame for ${2 * resume.heartbeat + 1}s (heartbeat lost)`);
    }, (2 * resume.heartbeat + 1) * 1000);
  }

  _unwatch() {
    if (this._watchdog !== null) clearTimeout(this._watchdog);
    this._watchdog = null;
  }

  /** Close the websockets the watchdog gave up on (the session moved on). */
  _closeAbandoned() {
    for (const ws of this._abandoned.splice(0)) {
      try {
        ws.close(1000, "transport replaced");
      } catch (err) {
        // already closed
      }
    }
  }

  get step() {
    return this.flow.steps[this.index].name;
  }

  get isOpen() {
    return this.ws.readyState === WebSocket.OPEN && !this._closing && !this._resuming();
  }

  _resuming() {
    return this.detached || (this._resume !== null && this._resume.awaitingResumed);
  }

  /** Send one message: binary for a Uint8Array, ArrayBuffer or view, text for a
   * string. On a resumable connection (reconnect: true) messages are binary only
   * (text frames carry the resume's control messages); while detached a message
   * is kept and sent after the resume. */
  send(data) {
    const resume = this._resume;
    if (typeof data === "string" && (resume !== null || this.reconnect)) {
      throw new TypeError("a resumable connection sends binary messages only");
    }
    if (resume !== null && !this._closing && !this._done) {
      const copy = new Uint8Array(ArrayBuffer.isView(data) ? data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength) : data.slice(0));
      resume.sent += 1;
      resume.retained.push(copy);
      resume.retainedBytes += copy.byteLength;
      while (resume.retainedBytes > this._maxResumeBuffer && resume.retained.length) {
        resume.overflowed = true;
        resume.retainedBytes -= resume.retained.shift().byteLength;
      }
      if (this._resuming()) {
        if (resume.overflowed) this._endSession(CLOSE.RESUME_BUFFER_OVERFLOW, "replay buffer overflowed");
        return;
      }
      this.ws.send(copy);
      return;
    }
    if (!this.isOpen) throw new Error("cannot send: the connection is not open");
    this.ws.send(data);
  }

  /** Close with `code` and `reason` (a no-op once closing). */
  close(code = 1000, reason = "") {
    if (this._closing || this._done) return;
    if (this._resuming()) {
      this._endSession(code, reason); // no transport to close on
      try {
        this.ws.close(sendable(code) ? code : 1000, reason.slice(0, 120));
      } catch (err) {
        this.ws.close();
      }
      return;
    }
    this._closing = true;
    this.closeCode = code;
    this.closeReason = reason;
    this._clearTimer();
    this._queue.length = 0;
    const wire = sendable(code) ? code : 1000;
    this.sentCode = wire;
    try {
      this.ws.close(wire, reason.slice(0, 120));
    } catch (err) {
      this.ws.close();
    }
  }

  async _opened() {
    if (this.ws.protocol === RESUME_SUBPROTOCOL) {
      this._resume = {
        token: null,
        window: 0,
        received: 0,
        sent: 0,
        acked: 0,
        retained: [],
        retainedBytes: 0,
        overflowed: false,
        unacked: 0,
        unackedBytes: 0,
        awaitingResumed: false,
        heartbeat: null, // seconds, from the server's "session" / "resumed"
      };
    }
    this._enter(0, null);
    for (const hook of this.flow.openHooks) {
      this._busy = true;
      try {
        const result = await hook(this);
        if (result && result[CLOSE_RESULT]) this.close(...result[CLOSE_RESULT]);
      } catch (err) {
        this._fail("<on_open>", err);
      }
      this._busy = false;
      if (this._closing) return;
    }
    this._drain();
  }

  _message(data) {
    if (this._done) return;
    const resume = this._resume;
    if (typeof data === "string") {
      if (resume !== null) this._control(data);
      else if (!this.acceptText) {
        if (!this._closing) this.close(CLOSE.UNSUPPORTED_DATA, "text message where binary is expected");
      } else if (!this._closing) {
        this._queue.push(data);
        this._drain();
      }
      return;
    }
    if (this._closing) return;
    if (resume !== null) {
      if (resume.awaitingResumed) {
        this.ws.close(1000, "message before the resume completed");
        return;
      }
      resume.received += 1;
      resume.unacked += 1;
      resume.unackedBytes += data.byteLength;
      if (resume.unacked >= ACK_EVERY || resume.unackedBytes >= ACK_BYTES) this._ack();
    }
    this._queue.push(new Uint8Array(data));
    this._drain();
  }

  _ack() {
    const resume = this._resume;
    resume.unacked = resume.unackedBytes = 0;
    this.ws.send(JSON.stringify({ type: "ack", received: resume.received }));
  }

  _control(text) {
    const resume = this._resume;
    let message = null;
    try {
      message = JSON.parse(text);
    } catch (err) {
      message = null;
    }
    const bad = (why) => {
      console.error(`socker: ${why}`);
      this.ws.close(1000, why);
    };
    if (!message || typeof message !== "object") return bad("malformed control message");
    if (message.type === "session" && resume.token === null && !resume.awaitingResumed) {
      resume.token = message.token;
      resume.window = message.window;
      resume.heartbeat = heartbeatOf(message);
      this._watch();
    } else if (message.type === "ack" && Number.isInteger(message.received)) {
      this._trim(message.received);
    } else if (message.type === "resumed" && resume.awaitingResumed) {
      resume.token = message.token;
      resume.awaitingResumed = false;
      resume.heartbeat = heartbeatOf(message); // this server's (another worker's, maybe)
      this._watch();
      const first = resume.sent - resume.retained.length + 1;
      if (message.received + 1 < first || message.received > resume.sent) {
        this._closing = true;
        this.ws.close(CLOSE.RESUME_BUFFER_OVERFLOW, "cannot replay");
        this._endSession(CLOSE.RESUME_BUFFER_OVERFLOW, "cannot replay");
        return;
      }
      this._trim(message.received);
      this._ack(); // tells the server we have the new token
      for (const data of resume.retained) this.ws.send(data);
      this.reconnects += 1;
      this._resumed();
    } else {
      bad(`unexpected control message ${message.type}`);
    }
  }

  _trim(received) {
    const resume = this._resume;
    let first = resume.sent - resume.retained.length + 1;
    while (resume.retained.length && first <= received) {
      resume.retainedBytes -= resume.retained.shift().byteLength;
      first += 1;
    }
    resume.acked = Math.max(resume.acked, received);
  }

  _lost(code, reason) {
    this._unwatch();
    const resume = this._resume;
    const resumable =
      this.reconnect && resume !== null && resume.token !== null && !this._done && !this._closing;
    if (!resumable || code !== 1006 || (resume.overflowed && !this.detached)) {
      if (this.detached && code >= 4000) {
        this._endSession(code, reason); // the server refused the resume
        return;
      }
      if (this.detached) {
        this._retry(); // that attempt never opened: keep trying within the window
        return;
      }
      if (resumable && code === 1006 && resume.overflowed) {
        this._endSession(CLOSE.RESUME_BUFFER_OVERFLOW, "replay buffer overflowed");
        return;
      }
      this._ended(code, reason);
      return;
    }
    if (!this.detached) {
      this.detached = true;
      this._attempt = 0;
      this._windowTimer = setTimeout(
        () => this._endSession(1006, "resume window expired"),
        resume.window * 1000,
      );
      for (const hook of this.flow.detachHooks) {
        try {
          hook(this);
        } catch (err) {
          console.error("socker: onDetach hook failed", err);
        }
      }
    }
    this._retry();
  }

  _retry() {
    const resume = this._resume;
    const delay = reconnectDelay(this._attempt++);
    this._retryTimer = setTimeout(() => {
      if (!this.detached || this._done) return;
      resume.awaitingResumed = true;
      const offer = `socker.resume.${resume.token}.${resume.received}`;
      // Opened: "resumed" is due; the last heartbeat bounds the wait for it.
      this._attach(new WebSocket(this.url, [RESUME_SUBPROTOCOL, offer]), () => this._watch());
    }, delay * 1000);
  }

  _resumed() {
    this.detached = false;
    clearTimeout(this._windowTimer);
    this._closeAbandoned();
    for (const hook of this.flow.resumeHooks) {
      try {
        hook(this);
      } catch (err) {
        console.error("socker: onResume hook failed", err);
      }
    }
    this._drain();
  }

  /** The session ended while detached (window, overflow, refusal, a local close). */
  _endSession(code, reason) {
    this.detached = false;
    clearTimeout(this._windowTimer);
    clearTimeout(this._retryTimer);
    this._closing = true;
    this.closeCode = code;
    this.closeReason = reason;
    this._ended(code, reason);
  }

  async _drain() {
    while (!this._busy && this._queue.length && !this._closing) {
      const message = this._queue.shift();
      const step = this.flow.steps[this.index];
      let result;
      this._busy = true;
      try {
        result = step.handler(this, message);
        if (result && typeof result.then === "function") result = await result;
      } catch (err) {
        this._busy = false;
        this._fail(step.name, err);
        return;
      }
      this._busy = false;
      this._apply(result, step.name);
    }
  }

  _apply(result, stepName) {
    if (this._closing || this._done) return;
    if (result === true) {
      if (this.index + 1 < this.flow.steps.length) this._enter(this.index + 1, stepName);
      else this.close(1000, "flow complete");
    } else if (result === false || result === undefined || result === null) {
      // stay
    } else if (result[GOTO] !== undefined) {
      const target = this.flow.indexOf(result[GOTO]);
      if (target < 0) this._fail(stepName, new Error(`goto(${result[GOTO]}): no such step`));
      else this._enter(target, stepName);
    } else if (result[CLOSE_RESULT]) {
      this.close(...result[CLOSE_RESULT]);
    } else {
      this._fail(stepName, new Error(`step ${stepName} returned an invalid result`));
    }
  }

  _enter(index, from) {
    this.index = index;
    this._clearTimer();
    const step = this.flow.steps[index];
    if (step.timeout) {
      this._timer = setTimeout(() => {
        this.close(CLOSE.STEP_TIMEOUT, `step '${step.name}' timed out after ${step.timeout}s`);
      }, step.timeout * 1000);
    }
    for (const hook of this.flow.stepHooks) hook(this, from, step.name);
  }

  _clearTimer() {
    if (this._timer !== null) clearTimeout(this._timer);
    this._timer = null;
  }

  _fail(stepName, err) {
    console.error(`socker: step ${stepName} failed`, err);
    this.error = err;
    this.close(CLOSE.INTERNAL_ERROR, "internal error");
  }

  async _ended(code, reason) {
    if (this._done) return;
    this._done = true;
    this._unwatch();
    this._closeAbandoned();
    this._clearTimer();
    this._queue.length = 0;
    if (!this._closing) {
      this.closeCode = code;
      this.closeReason = reason;
    }
    this._closing = true;
    const result = {
      code: this.closeCode,
      reason: this.closeReason,
      sentCode: this.sentCode ?? null,
      wireCode: code,
    };
    for (const hook of this.flow.closeHooks) {
      try {
        await hook(this, result);
      } catch (err) {
        console.error("socker: on_close hook failed", err);
      }
    }
    this._resolve(result);
  }
}

/** Open a connection running `flow`. `await conn.closed` for {code, reason}. */
export function connect(url, flow, options = {}) {
  return new Connection(url, flow, options);
}

/** Run `flow` until the connection ends; resolves to {code, reason, sentCode, wireCode}. */
export function run(url, flow, options = {}) {
  return connect(url, flow, options).closed;
}

// -- WebRTC signaling (socker_transports.webrtc, format version 1) ---------------

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

function encodeSignal(type, fields = {}) {
  return encoder.encode(JSON.stringify({ v: SIGNALING_VERSION, type, ...fields }));
}

function parseSignal(message) {
  let body;
  try {
    body = JSON.parse(decoder.decode(message));
  } catch (err) {
    throw new SignalingError("not a signaling message (expected UTF-8 JSON)");
  }
  if (!body || typeof body !== "object") throw new SignalingError("not a JSON object");
  if (body.v !== SIGNALING_VERSION) throw new SignalingError(`unsupported version ${body.v}`);
  if (!["hello", "offer", "answer", "candidate"].includes(body.type)) {
    throw new SignalingError(`unknown signaling type ${body.type}`);
  }
  if ((body.type === "offer" || body.type === "answer") && typeof body.sdp !== "string") {
    throw new SignalingError(`${body.type} without sdp`);
  }
  return body;
}

export class SignalingError extends Error {}

function waitGathering(pc, ms) {
  if (pc.iceGatheringState === "complete") return Promise.resolve(true);
  return new Promise((resolve) => {
    const timer = setTimeout(() => finish(false), ms);
    function finish(done) {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve(done);
    }
    function check() {
      if (pc.iceGatheringState === "complete") finish(true);
    }
    pc.addEventListener("icegatheringstatechange", check);
  });
}

class Role {
  constructor({
    onChannel = null,
    openTimeout = 10,
    stepTimeout = 30,
    gatherTimeout = 2,
    configuration = null,
    stepPrefix = "webrtc",
  } = {}) {
    this.onChannel = onChannel;
    this.openTimeout = openTimeout;
    this.stepTimeout = stepTimeout;
    this.gatherTimeout = gatherTimeout;
    this.configuration = configuration;
    this.stepPrefix = stepPrefix;
  }

  newSession(conn) {
    if (conn.state.webrtc) throw new SignalingError("a WebRTC session already exists");
    const pc = new RTCPeerConnection(this.configuration || { iceServers: [] });
    let settle;
    const session = {
      pc,
      channel: null,
      failure: null,
      settled: new Promise((resolve) => {
        settle = resolve;
      }),
    };
    session.fail = (why) => {
      if (session.failure === null) session.failure = why;
      settle();
    };
    session.watch = (channel) => {
      session.channel = channel;
      channel.binaryType = "arraybuffer";
      if (channel.readyState === "open") settle();
      else channel.addEventListener("open", () => settle(), { once: true });
    };
    pc.addEventListener("connectionstatechange", () => {
      if (pc.connectionState === "failed") session.fail("ICE/DTLS connection failed");
    });
    conn.state.webrtc = session;
    return session;
  }

  /** Set the local description and send it once ICE gathering completes (bounded). */
  async sendDescription(conn, pc, description) {
    await pc.setLocalDescription(description);
    await waitGathering(pc, this.gatherTimeout * 1000);
    conn.send(encodeSignal(pc.localDescription.type, { sdp: pc.localDescription.sdp }));
  }

  async waitChannel(conn, session) {
    let timer;
    const timedOut = new Promise((resolve) => {
      timer = setTimeout(() => resolve(true), this.openTimeout * 1000);
    });
    const late = await Promise.race([session.settled.then(() => false), timedOut]);
    clearTimeout(timer);
    if (late) {
      return closeWith(CLOSE.CHANNEL_TIMEOUT, `data channel did not open within ${this.openTimeout}s`);
    }
    if (session.failure !== null || !session.channel) {
      return closeWith(CLOSE.CHANNEL_TIMEOUT, `data channel did not open: ${session.failure}`);
    }
    if (this.onChannel) await this.onChannel(conn, session.channel);
    return true;
  }

  async candidate(session, signal) {
    if (signal.candidate === null || signal.candidate === "") return;
    await session.pc.addIceCandidate({
      candidate: signal.candidate,
      sdpMid: signal.sdpMid ?? null,
      sdpMLineIndex: signal.sdpMLineIndex ?? null,
    });
  }

  install(flow) {
    flow.onClose((conn) => {
      const session = conn.state.webrtc;
      if (session) {
        session.fail("peer connection closed");
        session.pc.close();
      }
    });
  }
}

const signalingClose = (name, err) =>
  closeWith(CLOSE.SIGNALING_ERROR, `${name}: ${err.message || err}`.slice(0, 120));

class Answerer extends Role {
  install(flow) {
    const name = `${this.stepPrefix}-connect`;
    flow.add(
      async (conn, message) => {
        let session = conn.state.webrtc;
        try {
          const signal = parseSignal(message);
          if (signal.type === "offer") {
            if (session) throw new SignalingError("a second offer");
            session = this.newSession(conn);
            session.waitingForCandidates = signal.trickle === true;
            session.pc.addEventListener("datachannel", (event) => {
              if (!session.channel) session.watch(event.channel);
            });
            await session.pc.setRemoteDescription({ type: "offer", sdp: signal.sdp });
            await this.sendDescription(conn, session.pc, await session.pc.createAnswer());
          } else if (signal.type === "candidate") {
            if (!session) throw new SignalingError("candidate before the offer");
            if (signal.candidate === null || signal.candidate === "") {
              session.waitingForCandidates = false;
            }
            await this.candidate(session, signal);
          } else {
            throw new SignalingError(`unexpected ${signal.type}`);
          }
        } catch (err) {
          if (!(err instanceof SignalingError) && !(err instanceof DOMException)) throw err;
          return signalingClose(name, err);
        }
        if (session.waitingForCandidates) return false;
        return this.waitChannel(conn, session);
      },
      { name, timeout: this.stepTimeout },
    );
    super.install(flow);
    return this;
  }
}

class Offerer extends Role {
  constructor(options = {}) {
    super(options);
    const { label = "socker", ordered = true, maxRetransmits = null, maxPacketLifeTime = null } =
      options;
    this.channelInit = { ordered };
    if (maxRetransmits !== null) this.channelInit.maxRetransmits = maxRetransmits;
    if (maxPacketLifeTime !== null) this.channelInit.maxPacketLifeTime = maxPacketLifeTime;
    this.label = label;
  }

  /** Create the peer connection and data channel and send the offer. */
  async start(conn) {
    const session = this.newSession(conn);
    session.watch(session.pc.createDataChannel(this.label, this.channelInit));
    await this.sendDescription(conn, session.pc, await session.pc.createOffer());
  }

  install(flow) {
    const name = `${this.stepPrefix}-connect`;
    flow.onOpen((conn) => this.start(conn));
    flow.add(
      async (conn, message) => {
        const session = conn.state.webrtc;
        try {
          const signal = parseSignal(message);
          if (!session) throw new SignalingError("no offer was sent");
          if (signal.type === "answer") {
            if (session.described) throw new SignalingError("a second answer");
            session.described = true;
            session.waitingForCandidates = signal.trickle === true;
            await session.pc.setRemoteDescription({ type: "answer", sdp: signal.sdp });
          } else if (signal.type === "candidate") {
            if (!session.described) throw new SignalingError("candidate before the answer");
            if (signal.candidate === null || signal.candidate === "") {
              session.waitingForCandidates = false;
            }
            await this.candidate(session, signal);
          } else {
            throw new SignalingError(`unexpected ${signal.type}`);
          }
        } catch (err) {
          if (!(err instanceof SignalingError) && !(err instanceof DOMException)) throw err;
          return signalingClose(name, err);
        }
        if (session.waitingForCandidates) return false;
        return this.waitChannel(conn, session);
      },
      { name, timeout: this.stepTimeout },
    );
    super.install(flow);
    return this;
  }
}

export const webrtc = Object.freeze({
  /** The client's handshake when the server offers: ready for the offer. */
  hello: () => encodeSignal("hello"),
  encodeSignal,
  parseSignal,
  /** Client side, server offers: adds "webrtc-connect" (offer -> answer -> channel open). */
  clientAnswers: (flow, options) => new Answerer(options).install(flow),
  /** Client side, client offers: offers on open; adds "webrtc-connect" (answer -> open). */
  clientOffers: (flow, options) => new Offerer(options).install(flow),
  /** The connection's {pc, channel} once a webrtc step created it. */
  session: (conn) => conn.state.webrtc || null,
});

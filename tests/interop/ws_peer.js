// A Node `ws` peer for socker's interop tests (tests/interop/test_node_ws.py).
// It runs one side of the 4-step game handshake of tests/transports/flows.py,
// written against `ws` directly, with binary messages only.
//
//   node ws_peer.js client URL TIMEOUT_MS   run the client side against URL
//   node ws_peer.js server TIMEOUT_MS       serve one connection on 127.0.0.1:<ephemeral>;
//                                           first prints {"event":"listening","port":N}
//
// Either way the last line on stdout is one JSON result:
//   {"event":"result","role":..,"code":..,"reason":..,"step":..,"state":{..},
//    "received":[..],"errors":[..]}
// and the exit status is 0 when the flow completed with close code 1000.
"use strict";

const { WebSocket, WebSocketServer } = require("ws");

const SCENE = "scene:players=2;objects=17";
const OFFER = "offer:v=0 o=server";
const ANSWER_PREFIX = "answer:";
const CONNECTED = "connected";
const SPAWNED = "spawned:player-2";

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

// Runs `steps` (ordered [name, handler] pairs; a handler returns true to advance)
// on `ws`, like a socker Flow; `finish` prints the result and exits.
function runSteps(role, ws, steps, state, timeoutMs, onDone) {
  const result = {
    event: "result", role, code: null, reason: "", step: steps[0][0], state,
    received: [], errors: [],
  };
  let index = 0;
  const timer = setTimeout(() => {
    result.errors.push(`timed out after ${timeoutMs} ms`);
    ws.terminate();
  }, timeoutMs);
  const send = (text) => ws.send(Buffer.from(text), { binary: true });
  ws.on("message", (data, isBinary) => {
    const text = Buffer.from(data).toString("utf8");
    result.received.push(text);
    if (!isBinary) result.errors.push(`text message: ${text}`);
    if (index >= steps.length) {
      result.errors.push(`message after the last step: ${text}`);
      return;
    }
    try {
      if (steps[index][1](text, send)) {
        index += 1;
        if (index < steps.length) result.step = steps[index][0];
      }
    } catch (err) {
      result.errors.push(String(err));
      ws.close(1011);
    }
  });
  ws.on("error", (err) => result.errors.push(String(err)));
  ws.on("close", (code, reason) => {
    clearTimeout(timer);
    result.code = code;
    result.reason = reason.toString("utf8");
    emit(result);
    onDone();
    process.exitCode = code === 1000 && result.errors.length === 0 ? 0 : 1;
  });
}

function client(url, timeoutMs) {
  const state = {};
  const ws = new WebSocket(url, { handshakeTimeout: timeoutMs });
  ws.on("open", () => ws.send(Buffer.from("hi node-player"), { binary: true }));
  runSteps("client", ws, [
    ["scene", (msg, send) => { state.scene = msg; send("ready"); return true; }],
    ["offer", (msg, send) => { state.offer = msg; send(ANSWER_PREFIX + "v=0 o=node"); return true; }],
    ["connected", (msg, send) => {
      if (msg !== CONNECTED) return false;
      send("spawn");
      return true;
    }],
    ["control", (msg, send) => {
      if (msg === SPAWNED) { state.spawned = true; send("bye"); }
      return false; // stay: the server completes the flow and closes with 1000
    }],
  ], state, timeoutMs, () => {});
}

function server(timeoutMs) {
  const wss = new WebSocketServer({ host: "127.0.0.1", port: 0, maxPayload: 1 << 20 });
  const idle = setTimeout(() => {
    emit({ event: "result", role: "server", code: null, reason: "", step: null, state: {},
      received: [], errors: [`no connection within ${timeoutMs} ms`] });
    process.exitCode = 1;
    wss.close();
  }, timeoutMs);
  wss.on("listening", () => emit({ event: "listening", port: wss.address().port }));
  wss.once("connection", (ws) => {
    clearTimeout(idle);
    const state = {};
    runSteps("server", ws, [
      ["hello", (msg, send) => { state.player = msg.replace(/^hi /, ""); send(SCENE); return true; }],
      ["handshake", (msg, send) => {
        if (msg !== "ready") return false;
        send(OFFER);
        return true;
      }],
      ["answer", (msg, send) => {
        if (!msg.startsWith(ANSWER_PREFIX)) return false;
        state.remote = msg.slice(ANSWER_PREFIX.length);
        send(CONNECTED);
        return true;
      }],
      ["control", (msg, send) => {
        if (msg === "spawn") send(SPAWNED);
        else if (msg === "resync") send("state:tick=42");
        if (msg !== "bye") return false;
        ws.close(1000, "flow complete");
        return true;
      }],
    ], state, timeoutMs, () => wss.close());
  });
}

const [mode, ...args] = process.argv.slice(2);
if (mode === "client" && args.length === 2) client(args[0], Number(args[1]));
else if (mode === "server" && args.length === 1) server(Number(args[0]));
else {
  process.stderr.write("usage: ws_peer.js client URL TIMEOUT_MS | server TIMEOUT_MS\n");
  process.exitCode = 2;
}

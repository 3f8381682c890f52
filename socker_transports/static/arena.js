// arena.js: the browser player of the socker arena (socker_transports/arena).
//
// One socker flow on the websocket (welcome -> WebRTC signaling -> control), the
// world arriving on an unordered, no-retransmit data channel, inputs going back
// on it 20 times a second, and a canvas drawing the latest world. The page's state
// is window.arena (the tests read it). Query parameters: name=..., auto=1
// (autopilot), ws=PORT (connect the websocket to another port, e.g. a relay).
import { Flow, closeWith, connect, webrtc } from "./socker.js";

const params = new URLSearchParams(location.search);
const encoder = new TextEncoder();
const decoder = new TextDecoder();
const TAG = (s) => s.charCodeAt(0);

const arena = {
  name: params.get("name") || `player-${Math.floor(Math.random() * 1000)}`,
  id: null, slot: null, size: [160, 100], tickRate: 20,
  world: null, names: {}, moving: [], states: 0, framesFirst: null, framesLast: 0,
  seq: 0, sentAt: new Map(), echoed: 0, latencies: [], scores: {}, chat: [],
  step: null, wsOpen: false, detaches: 0, resumes: 0, statesAtDetach: null,
  statesWhileCut: null, channelState: null, closed: null, log: [],
};
window.arena = arena;

// -- messages (socker_transports/arena/protocol.py) -----------------------------

function control(tag, body = {}) {
  return encoder.encode(tag + JSON.stringify(body));
}

function decodeControl(message) {
  return [String.fromCharCode(message[0]), JSON.parse(decoder.decode(message.subarray(1)))];
}

function encodeInput(seq, dx, dy) {
  const view = new DataView(new ArrayBuffer(13));
  view.setUint8(0, TAG("I"));
  view.setUint32(1, seq);
  view.setFloat32(5, dx);
  view.setFloat32(9, dy);
  return view.buffer;
}

function decodeWorld(buffer) {
  const view = new DataView(buffer);
  if (view.getUint8(0) !== TAG("W")) throw new Error("not a world state");
  const frame = view.getUint32(1);
  const tick = view.getUint32(5);
  const n = view.getUint8(9);
  let at = 10;
  const players = [];
  for (let i = 0; i < n; i++, at += 16) {
    players.push({
      slot: view.getUint16(at), x: view.getFloat32(at + 2), y: view.getFloat32(at + 6),
      score: view.getUint16(at + 10), lastInput: view.getUint32(at + 12),
    });
  }
  const m = view.getUint8(at++);
  const points = [];
  for (let i = 0; i < m; i++, at += 8) points.push({ x: view.getFloat32(at), y: view.getFloat32(at + 4) });
  return { frame, tick, players, points };
}

// -- what arrives -----------------------------------------------------------------

const positions = new Map();
const moving = new Set();

function onWorld(buffer) {
  const world = decodeWorld(buffer);
  const now = performance.now();
  arena.states += 1;
  if (arena.framesFirst === null) arena.framesFirst = world.frame;
  arena.framesLast = Math.max(arena.framesLast, world.frame);
  if (!arena.world || world.tick > arena.world.tick) arena.world = world;  // late: counted, not drawn
  for (const p of world.players) {
    const before = positions.get(p.slot);
    if (before && (before.x !== p.x || before.y !== p.y)) moving.add(p.slot);
    positions.set(p.slot, { x: p.x, y: p.y });
    if (p.slot === arena.slot && p.lastInput > arena.echoed) {
      const sent = arena.sentAt.get(p.lastInput);
      if (sent !== undefined) arena.latencies.push(now - sent);
      for (const seq of arena.sentAt.keys()) if (seq <= p.lastInput) arena.sentAt.delete(seq);
      arena.echoed = p.lastInput;
    }
  }
  arena.moving = [...moving].filter((s) => s !== arena.slot).map((s) => arena.names[s]).filter(Boolean).sort();
}

function log(text) {
  arena.log.push(text);
  const el = document.getElementById("log");
  el.textContent = arena.log.slice(-40).join("\n");
  el.scrollTop = el.scrollHeight;
}

function onControl(tag, body) {
  if (tag === "R") for (const p of body.players) arena.names[p.slot] = p.name;
  else if (tag === "J") {
    arena.names[body.slot] = body.name;
    if (body.id === arena.id) arena.slot = body.slot;
    log(`+ ${body.name} joined${body.bot ? " (bot)" : ""}`);
  } else if (tag === "L") {
    delete arena.names[body.slot];
    log(`- ${body.name} left`);
  } else if (tag === "S") arena.scores[body.slot] = body.score;
  else if (tag === "C") {
    arena.chat.push(`${body.name}: ${body.text}`);
    log(`${body.name}: ${body.text}`);
  }
  renderPlayers();
}

// -- what goes out ----------------------------------------------------------------

const keys = new Set();
addEventListener("keydown", (e) => keys.add(e.key.toLowerCase()));
addEventListener("keyup", (e) => keys.delete(e.key.toLowerCase()));
const autoBox = document.getElementById("auto");
autoBox.checked = params.get("auto") === "1";

function direction() {
  const me = arena.world?.players.find((p) => p.slot === arena.slot);
  if (!me) return [0, 0];
  if (autoBox.checked && arena.world.points.length) {
    const target = arena.world.points.reduce((a, b) =>
      Math.hypot(a.x - me.x, a.y - me.y) <= Math.hypot(b.x - me.x, b.y - me.y) ? a : b);
    const dx = target.x - me.x, dy = target.y - me.y, length = Math.hypot(dx, dy) || 1;
    return [dx / length, dy / length];
  }
  const on = (...names) => names.some((k) => keys.has(k));
  return [
    (on("arrowright", "d") ? 1 : 0) - (on("arrowleft", "a") ? 1 : 0),
    (on("arrowdown", "s") ? 1 : 0) - (on("arrowup", "w") ? 1 : 0),
  ];
}

function startInputs(channel) {
  setInterval(() => {
    arena.channelState = channel.readyState;
    if (channel.readyState !== "open") return;
    const [dx, dy] = direction();
    arena.seq += 1;
    arena.sentAt.set(arena.seq, performance.now());
    channel.send(encodeInput(arena.seq, dx, dy));
  }, 1000 / 20);
}

// -- drawing ----------------------------------------------------------------------

const canvas = document.getElementById("arena");
const ctx = canvas.getContext("2d");
// Player colours: anything but the points' yellow.
const PALETTE = ["#4fc3f7", "#ef5350", "#66bb6a", "#ab47bc", "#ff8a65", "#26a69a", "#ec407a", "#7e57c2"];
const colour = (slot) => PALETTE[(slot - 1) % PALETTE.length];

function draw() {
  const [w, h] = arena.size;
  const sx = canvas.width / w, sy = canvas.height / h;
  ctx.fillStyle = "#10141c";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  const world = arena.world;
  if (world) {
    ctx.fillStyle = "#ffd23f";
    for (const p of world.points) {
      ctx.beginPath();
      ctx.arc(p.x * sx, p.y * sy, 5, 0, 2 * Math.PI);
      ctx.fill();
    }
    ctx.font = "12px system-ui, sans-serif";
    for (const p of world.players) {
      ctx.fillStyle = colour(p.slot);
      ctx.beginPath();
      ctx.arc(p.x * sx, p.y * sy, p.slot === arena.slot ? 10 : 8, 0, 2 * Math.PI);
      ctx.fill();
      if (p.slot === arena.slot) {
        ctx.strokeStyle = "#fff";
        ctx.lineWidth = 2;
        ctx.stroke();
      }
      ctx.fillStyle = "#ddd";
      ctx.fillText(`${arena.names[p.slot] || "?"} ${p.score}`, p.x * sx + 12, p.y * sy + 4);
    }
    ctx.fillStyle = "#8a94a6";
    ctx.fillText(`tick ${world.tick}  ${arena.wsOpen ? "websocket open" : "websocket DOWN"}`, 8, 16);
  }
  requestAnimationFrame(draw);
}
requestAnimationFrame(draw);

function renderPlayers() {
  const ul = document.getElementById("players");
  ul.replaceChildren(...Object.entries(arena.names).map(([slot, name]) => {
    const li = document.createElement("li");
    li.innerHTML = `<span class="swatch" style="background:${colour(Number(slot))}"></span>`;
    li.append(`${name}${Number(slot) === arena.slot ? " (you)" : ""}: ${arena.scores[slot] || 0}`);
    return li;
  }));
}

setInterval(() => {
  const expected = arena.framesFirst === null ? 0 : arena.framesLast - arena.framesFirst + 1;
  const loss = expected ? Math.max(0, 1 - arena.states / expected) : 0;
  const sorted = [...arena.latencies].sort((a, b) => a - b);
  const p99 = sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(0.99 * sorted.length))] : null;
  document.getElementById("figures").textContent =
    `states ${arena.states}, loss ${(loss * 100).toFixed(1)} %, echo p99 ${p99 === null ? "-" : p99.toFixed(1) + " ms"}, ` +
    `resumed ${arena.resumes}`;
}, 500);

// -- the flow ---------------------------------------------------------------------

const status = (text) => { document.getElementById("status").textContent = text; };
const flow = new Flow("arena");

flow.onOpen((conn) => {
  arena.wsOpen = true;
  conn.send(control("N", { name: arena.name, bot: false }));
});

flow.add((conn, message) => {
  const [tag, body] = decodeControl(message);
  if (tag !== "H") return closeWith(4000, "expected the welcome");
  arena.id = body.id;
  arena.size = body.arena;
  arena.tickRate = body.tick_rate;
  conn.send(webrtc.hello());
  status(`${arena.name}: opening the data channel`);
  return true;
}, { name: "welcome" });

webrtc.clientAnswers(flow, {
  openTimeout: 10,
  onChannel: (conn, channel) => {
    channel.addEventListener("message", (event) => onWorld(event.data));
    channel.addEventListener("close", () => { arena.channelState = "closed"; });
    arena.channelState = channel.readyState;
    startInputs(channel);
    status(`${arena.name}: playing`);
  },
});

flow.add((conn, message) => {
  const [tag, body] = decodeControl(message);
  onControl(tag, body);
  return false;
}, { name: "control" });

flow.onStep((conn, from, to) => { arena.step = to; });

// Resume (connect(..., { reconnect: true })): the websocket comes back at its step
// while the data channel keeps delivering; onOpen does not run again.
arena.resumable = typeof flow.onDetach === "function";
flow.onDetach(() => {
  arena.wsOpen = false;
  arena.detaches += 1;
  arena.statesAtDetach = arena.states;
  log("~ websocket lost: reconnecting (data channel still open)");
});
flow.onResume((conn) => {
  arena.wsOpen = true;
  arena.resumes += 1;
  arena.statesWhileCut = arena.states - (arena.statesAtDetach ?? arena.states);
  log(`~ resumed at step ${conn.step}`);
});

flow.onClose((conn, result) => {
  arena.wsOpen = false;
  arena.closed = result;
  status(`${arena.name}: closed ${result.code} ${result.reason}`);
});

document.getElementById("chat").addEventListener("submit", (event) => {
  event.preventDefault();
  const say = document.getElementById("say");
  if (say.value && arena.conn?.isOpen) arena.conn.send(control("C", { text: say.value }));
  say.value = "";
});

arena.quit = () => arena.conn.send(control("Q"));
arena.chatSay = (text) => arena.conn.send(control("C", { text }));
const port = params.get("ws") || location.port;
const wsUrl = `${location.protocol === "https:" ? "wss" : "ws"}://${location.hostname}:${port}/arena`;
status(`${arena.name}: connecting to ${wsUrl}`);
arena.conn = connect(wsUrl, flow, { reconnect: true });

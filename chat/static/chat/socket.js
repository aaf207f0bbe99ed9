/* The open conversation's WebSocket: connecting (with compact deltas), each close code as
   README's tables document it, reconnects with backoff, the liveness probe, and the
   connection state in the header (docs/ui.md, "Connection care").

   What frames mean is not decided here: each decoded frame, and each event the rest of
   the page must react to, goes to the handlers main.js registers with onSocket. */
import { API, api } from "./api.js";
import {
  config, el, LOGIN_URL, setTitle, showNotice, state, ui, updateHeader,
} from "./page.js";

// Close codes after which reconnecting cannot help. At connect a non-member gets the
// same 4404 as a missing conversation (they must not learn whether it exists), so the
// page cannot tell them apart either; a socket that was live can.
const NO_SUCH_CONVERSATION = "This conversation does not exist, or you are not a member of it.";
const FATAL_CLOSES = {
  4401: "You are signed out. Sign in again",
  4403: NO_SUCH_CONVERSATION, // only an older server sends it at connect
  4404: NO_SUCH_CONVERSATION,
};
const FATAL_CLOSES_WHEN_LIVE = {
  4403: "You are no longer a member of this conversation.",
  4404: "This conversation was deleted.",
};
// A server that may not send 1009, 1012 or 1013 sends these instead, meaning the same.
const CLOSE_TWINS = { 4009: 1009, 4012: 1012, 4013: 1013 };
const UNAVAILABLE_ATTEMPT = 2;     // 1013: the first retry waits 1-2 s, then backs off
const SIGNED_IN_RECHECK_MS = 1500; // see stillSignedIn
const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 15000;
const COMPACT_SUBPROTOCOL = "livechat.compact";  // deltas as ["d", id, seq, text]
const SYNC_RETRY_MS = 3000;        // a lost snapshot must not block syncing for ever
const LIVENESS_TIMEOUT_MS = 5000;  // no answer to a probe in this long: reconnect

const CONNECTION_LABEL = {
  open: "live", connecting: "connecting…", reconnecting: "reconnecting…", closed: "offline",
};

const handlers = {
  frame(frame) {},        // a decoded server frame of the current socket
  changed() {},           // the connection state changed: controls follow it
  closed() {},            // the current socket closed (its viewers are gone)
  tooBig(socket) {},      // 1009: a prompt sent on `socket` was refused as too big
  ended(code) {},         // 4401, 4403 or 4404: the conversation stays closed
};

export function onSocket(callbacks) {
  Object.assign(handlers, callbacks);
}

export function connect() {
  clearTimeout(state.retryTimer);
  if (!state.conversationId || state.fatal) return;
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const path = config.wsPathTemplate.replace("{id}", encodeURIComponent(state.conversationId));
  let sock;
  try {
    // Ask for deltas in the compact form (the server always grants it).
    sock = new WebSocket(scheme + location.host + path, [COMPACT_SUBPROTOCOL]);
  } catch {
    scheduleReconnect();
    return;
  }
  state.socket = sock;
  state.live = false;
  setConnection("connecting");
  // Each handler checks it still belongs to the current socket: an old one may fire late.
  sock.addEventListener("open", () => { if (sock === state.socket) setConnection("open"); });
  sock.addEventListener("message", (ev) => { if (sock === state.socket) receive(ev.data); });
  sock.addEventListener("close", (ev) => { if (sock === state.socket) onClose(ev); });
}

export function disconnect() {
  clearTimeout(state.retryTimer);
  clearTimeout(state.probeTimer);
  const sock = state.socket;
  state.socket = null;
  if (sock) sock.close(1000);
}

// A delta in the compact form, ["d", message_id, seq, text], as the object the rest reads.
function fromCompact(frame) {
  if (frame[0] !== "d" || frame.length !== 4) return null;
  return { type: "delta", message_id: frame[1], seq: frame[2], text: frame[3] };
}

function receive(raw) {
  state.lastFrameAt = Date.now();
  let frame;
  try { frame = JSON.parse(raw); } catch { return; }
  if (Array.isArray(frame)) frame = fromCompact(frame);
  if (!frame) return;
  handlers.frame(frame);
}

// A snapshot arrived: the connection works, so the backoff and the probe start over.
export function snapshotArrived() {
  state.attempt = 0;
  state.live = true;
  state.syncRequestedAt = 0;
  clearTimeout(state.probeTimer);
}

// Each close code as README's table documents it; anything else reconnects.
function onClose(event) {
  const sock = state.socket;
  const wasLive = state.live;
  state.socket = null;
  state.live = false;
  clearTimeout(state.probeTimer);
  handlers.closed();
  const code = CLOSE_TWINS[event.code] || event.code;
  switch (code) {
    case 4401: checkSignedIn(); break;
    case 4403: case 4404: endConversation(code, wasLive); break;
    case 1012: reconnectAtOnce("The server is restarting"); break;
    case 1013:
      state.attempt = Math.max(state.attempt, UNAVAILABLE_ATTEMPT);
      scheduleReconnect("The server is temporarily unavailable");
      break;
    case 1009: frameTooBig(sock); break;
    case 4429: // too many sockets or frames for this account: come back slowly
      state.attempt = Math.max(state.attempt, 4);
      scheduleReconnect("Too many open connections");
      break;
    default: scheduleReconnect();
  }
}

// 4403, 4404 and a confirmed 4401: the conversation stays closed, saying why.
function endConversation(code, wasLive = false) {
  const reason = (wasLive && FATAL_CLOSES_WHEN_LIVE[code]) || FATAL_CLOSES[code];
  state.fatal = reason;
  if (!state.loaded) setTitle(code === 4401 ? "Signed out" : "Conversation unavailable");
  setConnection("closed", reason, code === 4401);
  updateHeader();
  handlers.ended(code);
}

// Without waiting, but once per working connection: until a snapshot resets it,
// `attempt` stays above 0, so a server that closes again at once (a proxy sending the
// page back to a process that is still draining) gets the usual backoff, not a loop.
function reconnectAtOnce(cause) {
  if (state.attempt > 0) { scheduleReconnect(cause); return; }
  state.attempt = 1;
  connect();
}

// 1009: the server refused a frame as too big. Only a prompt can be (the others are
// a few bytes), so the last one sent on that socket goes back into the composer.
function frameTooBig(sock) {
  handlers.tooBig(sock);
  showNotice(ui.notice, "That message was too big to send. Shorten it and try again.");
  reconnectAtOnce("Connection lost");
}

// 4401 also closes the sockets of a session that stays signed in: after a password
// change the server closes every socket of the user and renews the changing
// session's key. Ask the API which it is before showing the signed-out state.
async function checkSignedIn() {
  const id = state.conversationId;
  setConnection("reconnecting", "Checking that you are still signed in…");
  const signedIn = await stillSignedIn();
  // Moved on meanwhile (another conversation, or a reconnect of its own): not ours.
  if (id !== state.conversationId || state.socket || state.fatal) return;
  if (signedIn === true) reconnectAtOnce("Connection lost");
  else if (signedIn === false) endConversation(4401);
  else scheduleReconnect(); // could not tell (offline, server error): try again later
}

// true, false, or null when it cannot be told. A 401 is asked again once, a moment
// later: the close can reach this page before the response that renews the session
// cookie (in this or another tab) does, and until then the old cookie is refused.
async function stillSignedIn() {
  const first = await signedInNow();
  if (first !== false) return first;
  await new Promise((resolve) => { setTimeout(resolve, SIGNED_IN_RECHECK_MS); });
  return signedInNow();
}

// One question to the API: 200 is signed in, 401 is not, anything else is unknown.
async function signedInNow() {
  try {
    await api("GET", API);
    return true;
  } catch (err) {
    return err.status === 401 ? false : null;
  }
}

// Exponential backoff (0.5 s doubling, capped at 15 s) with "equal jitter": wait a
// random time in [base/2, base], so many tabs dropped together do not reconnect in
// lockstep and a restarted server is not hit by all of them at once.
function scheduleReconnect(cause = "") {
  const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** state.attempt);
  state.attempt += 1;
  const wait = base / 2 + Math.random() * (base / 2);
  const seconds = Math.max(1, Math.round(wait / 1000));
  const why = cause || (navigator.onLine === false ? "You are offline" : "Connection lost");
  setConnection("reconnecting", `${why}. Reconnecting in ${seconds} s…`);
  clearTimeout(state.retryTimer);
  state.retryTimer = setTimeout(connect, wait);
}

// Reconnect now (network back, machine woke up): skip the rest of a backoff wait.
export function reconnectNow() {
  if (!state.conversationId || state.fatal) return;
  const old = state.socket;
  state.socket = null;
  if (old) old.close(4000); // its late events are ignored: it is no longer current
  state.attempt = 0;
  connect();
}

// Is the socket really alive? After sleep or a network change it may look open but
// be dead (no close event for minutes). Ask for a snapshot (which also brings the
// view up to date) and reconnect if nothing arrives in time.
export function checkAlive() {
  if (!state.conversationId || state.fatal) return;
  if (!state.socket || state.socket.readyState !== WebSocket.OPEN) {
    if (!state.socket || state.socket.readyState !== WebSocket.CONNECTING) reconnectNow();
    return;
  }
  const sentAt = Date.now();
  state.socket.send(JSON.stringify({ type: "sync" }));
  state.syncRequestedAt = sentAt;
  clearTimeout(state.probeTimer);
  state.probeTimer = setTimeout(() => {
    if (state.lastFrameAt < sentAt) reconnectNow();
  }, LIVENESS_TIMEOUT_MS);
}

export function setConnection(value, detail = "", loginLink = false) {
  state.connection = value;
  ui.connState.textContent = CONNECTION_LABEL[value] || value;
  ui.connState.dataset.state = value;
  ui.connDetail.replaceChildren();
  if (loginLink) {
    const a = el("a", "login-link", detail);
    a.href = `${LOGIN_URL}?next=${encodeURIComponent(location.pathname)}`;
    ui.connDetail.append(a);
  } else if (detail) {
    ui.connDetail.textContent = detail;
  }
  ui.connDetail.hidden = !detail;
  ui.connDetail.classList.toggle("fatal", Boolean(state.fatal));
  handlers.changed();
}

export function send(frame) {
  if (!state.socket || state.socket.readyState !== WebSocket.OPEN) {
    showNotice(ui.notice, "Not connected: wait for the connection to come back.");
    return false;
  }
  state.socket.send(JSON.stringify(frame));
  return true;
}

// Ask for a fresh snapshot, but not again while one is (probably) on its way.
export function requestSync() {
  if (Date.now() - state.syncRequestedAt < SYNC_RETRY_MS) return;
  if (send({ type: "sync" })) state.syncRequestedAt = Date.now();
}

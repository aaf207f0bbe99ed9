/* The composer and the buttons that write: sending a prompt (Enter sends, Shift+Enter
   starts a new line), Stop, Regenerate, naming an untitled conversation after its first
   prompt, and refused prompts: an `error` frame or a 1009 close puts the prompt back,
   and `rate_limited` / `quota_exceeded` keep the composer disabled until the time the
   server gave. */
import { API, api } from "./api.js";
import { applyConversation, refreshListSoon } from "./conversations.js";
import { regenerateButton, updateControls } from "./controls.js";
import { config, DEFAULT_TITLE, showNotice, SIM_DIRECTIVE, state, ui } from "./page.js";
import { send } from "./socket.js";

const ERROR_TEXT = {
  busy: "A reply is still being generated. Wait for it, or press Stop.",
  forbidden: "Your role in this conversation is read-only.",
  too_long: "That message is too long.",
};
const QUOTA_RETRY_MS = 60000;      // quota errors without retry_after: try again after

// crypto.randomUUID exists only in secure contexts; plain-HTTP LAN hosts need a fallback.
function uuid4() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return [h.slice(0, 8), h.slice(8, 12), h.slice(12, 16), h.slice(16, 20), h.slice(20)].join("-");
}

function sendPrompt() {
  const text = ui.composer.value;
  if (ui.composer.disabled || !text.trim()) return;
  const clientMsgId = uuid4();
  const first = state.loaded && !state.view.order.length;
  if (!send({ type: "prompt", content: text, client_msg_id: clientMsgId })) return;
  state.pendingPrompts.set(clientMsgId, text);
  state.lastPrompt = { socket: state.socket, clientMsgId };
  const pending = state.pendingPrompts;
  if (pending.size > 20) pending.delete(pending.keys().next().value); // keep it bounded
  state.scrollOnNextMessage = true; // the sender wants to see their own message
  state.refocus = true;             // and to type the next one when the answer is in
  ui.composer.value = "";
  autosize();
  if (first) autoTitle(text);
  refreshListSoon();
}

// A conversation still called "New conversation" is named after its first prompt.
function autoTitle(text) {
  const conv = state.conversation;
  if (state.role !== "owner" || !conv || conv.title !== DEFAULT_TITLE) return;
  const typed = config.usingSimulator ? text.replace(SIM_DIRECTIVE, "") : text;
  let title = typed.replace(/\s+/g, " ").trim();
  if (!title) return;
  if (title.length > 60) title = `${title.slice(0, 57).trimEnd()}…`;
  const id = state.conversationId;
  api("PATCH", `${API}${id}/`, { title }).then(() => {
    if (id === state.conversationId) applyConversation({ title });
    refreshListSoon();
  }).catch(() => {});
}

// The textarea grows with its content (up to the CSS max-height).
function autosize() {
  ui.composer.style.height = "auto";
  ui.composer.style.height = `${Math.min(ui.composer.scrollHeight + 2, window.innerHeight * 0.4)}px`;
}

// 1009: the last prompt sent on `sock` was too big; it goes back into the composer.
export function takeBackPrompt(sock) {
  const last = state.lastPrompt;
  const text = last && last.socket === sock && state.pendingPrompts.get(last.clientMsgId);
  if (text && !ui.composer.value) {
    ui.composer.value = text;
    autosize();
  }
  if (text) state.pendingPrompts.delete(last.clientMsgId);
}

// An `error` frame: a refused client frame (the socket stays open).
export function showServerError(frame) {
  const code = frame.code || "";
  let text = ERROR_TEXT[code] || frame.detail || code || "Something went wrong.";
  if (code === "rate_limited") {
    const wait = Number(frame.retry_after) || 10;
    block(wait * 1000, "You are sending too fast.");
    text = frame.detail || "Too many messages in a short time.";
  } else if (code === "quota_exceeded") {
    const until = Date.parse(frame.reset_at || "") - Date.now();
    const wait = until > 0 ? until : Number(frame.retry_after) * 1000 || QUOTA_RETRY_MS;
    block(wait, "Your token quota is used up.");
    text = frame.detail || "Your token quota is used up.";
  }
  showNotice(ui.notice, text);
  const refused = frame.client_msg_id && state.pendingPrompts.get(frame.client_msg_id);
  if (refused && !ui.composer.value) ui.composer.value = refused; // give the prompt back
  if (frame.client_msg_id) state.pendingPrompts.delete(frame.client_msg_id);
  updateControls();
}

// Rate limit and quota: keep the composer disabled, with a countdown, until then.
function block(ms, reason) {
  state.blockedUntil = Date.now() + ms;
  state.blockedReason = reason;
  clearInterval(state.blockTimer);
  state.blockTimer = setInterval(() => {
    if (Date.now() >= state.blockedUntil) {
      clearInterval(state.blockTimer);
      state.blockedUntil = 0;
    }
    updateControls();
  }, 1000);
}

export function initComposer() {
  ui.composerForm.addEventListener("submit", (ev) => { ev.preventDefault(); sendPrompt(); });
  ui.composer.addEventListener("keydown", (ev) => {
    // Enter sends; Shift+Enter (and Enter while an IME is composing) inserts a newline.
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing && ev.keyCode !== 229) {
      ev.preventDefault();
      sendPrompt();
    }
  });
  ui.composer.addEventListener("input", autosize);
  ui.stop.addEventListener("click", () => {
    if (state.stopTarget && send({ type: "cancel", message_id: state.stopTarget })) {
      state.stopRequested = state.stopTarget;
      updateControls();
    }
  });
  regenerateButton.addEventListener("click", () => {
    if (state.regenerateTarget) {
      state.scrollOnNextMessage = true;
      send({ type: "regenerate", message_id: state.regenerateTarget });
    }
  });
}

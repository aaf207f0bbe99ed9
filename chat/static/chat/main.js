/* Livechat's chat page: wires the modules together and starts it. Plain ES modules, no
   build step; the page runs under a strict Content-Security-Policy (no inline script or
   handler, no eval, no style attribute: element.style from script only).

   page.js      configuration, elements, shared state, notices, dialogs, header
   api.js       the JSON API (CSRF)
   socket.js    the WebSocket: close codes, reconnects, liveness probe, compact deltas
   merge.js     the merge rule (pure; the twin of chat/domain/merge.py)
   frames.js    what each server frame does to the page
   render.js    messages to DOM (markdown.js for replies), at most once per frame
   controls.js  composer, Stop and Regenerate as the state allows
   composer.js  sending prompts, Stop, Regenerate, refused prompts
   conversations.js  the list, open/new/rename/delete/leave, viewers, navigation
   members.js   the Members dialog */
import { initComposer, takeBackPrompt } from "./composer.js";
import { updateControls } from "./controls.js";
import {
  idFromPath, initConversations, loadConversations, openConversation, refreshListSoon,
  showViewers,
} from "./conversations.js";
import { handleFrame } from "./frames.js";
import { initMembers } from "./members.js";
import { config, initDialogs, state, ui } from "./page.js";
import { initRender, scheduleRender } from "./render.js";
import { checkAlive, onSocket, reconnectNow } from "./socket.js";

const WAKE_TICK_MS = 5000;         // a tick this late means the machine slept
const WAKE_GAP_MS = 15000;
const LIST_REFRESH_MS = 20000;     // presence in the list, new shared conversations
const HIDDEN_PROBE_MS = 30000;     // back from the background after this long: probe

function wireSocket() {
  onSocket({
    frame: handleFrame,
    changed: updateControls,
    closed: () => showViewers([]),
    tooBig: takeBackPrompt,
    ended: (code) => {
      scheduleRender();
      if (code !== 4401) refreshListSoon(0); // it is gone from our list too
    },
  });
}

// ---- Connection care: network changes, sleep, background tabs ----
function watchConnection() {
  window.addEventListener("online", checkAlive);
  // Offline: drop the socket now rather than wait minutes for TCP to notice; attempts
  // fail until the network is back, and "online" then reconnects at once.
  window.addEventListener("offline", () => {
    if (state.socket) reconnectNow();
  });
  window.addEventListener("pageshow", (ev) => { if (ev.persisted) checkAlive(); });
  document.addEventListener("resume", checkAlive); // Page Lifecycle: a frozen tab resumes
  document.addEventListener("visibilitychange", () => {
    if (document.hidden) { state.hiddenAt = Date.now(); return; }
    loadConversations(); // conversations shared with us meanwhile
    // A tab in the background for a while may have a dead socket (throttled, frozen).
    if (Date.now() - state.hiddenAt > HIDDEN_PROBE_MS) checkAlive();
  });
  // Timers stop while a laptop sleeps: a tick arriving much later than scheduled means
  // it just woke up, and its socket is probably dead without knowing it.
  setInterval(() => {
    const now = Date.now();
    const slept = now - state.lastTick > WAKE_GAP_MS;
    state.lastTick = now;
    if (slept) { checkAlive(); loadConversations(); }
  }, WAKE_TICK_MS);
  setInterval(() => { if (!document.hidden) loadConversations(); }, LIST_REFRESH_MS);
}

function start() {
  wireSocket();
  initComposer();
  initRender();
  initDialogs();
  initConversations();
  initMembers();
  watchConnection();
  const initial = config.conversationId || idFromPath(location.pathname);
  history.replaceState({ conversationId: initial }, "", location.href);
  openConversation(initial, { push: false });
  loadConversations();
}

if (ui.messageList && ui.composer) start(); // else not the chat page

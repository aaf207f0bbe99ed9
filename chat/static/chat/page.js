/* The chat page's common ground: its configuration, its elements, the state the other
   modules share, and small DOM helpers (notices, dialogs, the header).

   Configuration comes from json_script data blocks, so no inline script is needed
   under the Content-Security-Policy. Importing this module only reads the page. */
import { emptyView } from "./merge.js";

function readJSON(id, fallback) {
  const node = document.getElementById(id);
  if (!node) return fallback;
  try { return JSON.parse(node.textContent); } catch { return fallback; }
}

export const config = {
  conversationId: readJSON("conversation-id", null) || null,
  wsPathTemplate: readJSON("ws-path-template", "/ws/chat/{id}/") || "/ws/chat/{id}/",
  username: readJSON("current-username", "") || "",
  // Only the simulator reads `[[sim ...]]` directives; for a real model they are text.
  usingSimulator: readJSON("using-simulator", false) === true,
};
export const LOGIN_URL = "/accounts/login/";
export const DEFAULT_TITLE = "New conversation";
export const SIM_DIRECTIVE = /\[\[sim\b[^\]]*\]\]/g;  // read by the simulator only
const NOTICE_MS = 7000;

const $ = (id) => document.getElementById(id);
export const ui = {
  list: $("conversation-list"), newForm: $("new-conversation-form"),
  newTitle: $("new-conversation-title"), sidebarNotice: $("sidebar-notice"),
  sidebar: $("sidebar"), sidebarToggle: $("sidebar-toggle"), backdrop: $("sidebar-backdrop"),
  title: $("conversation-title"), actions: $("conversation-actions"),
  membersButton: $("members-button"), renameButton: $("rename-button"),
  deleteButton: $("delete-button"), leaveButton: $("leave-button"),
  connState: $("connection-state"), connDetail: $("connection-detail"),
  generating: $("generating-state"), viewers: $("viewers"),
  scroller: $("messages"), messageList: $("message-list"),
  empty: $("empty-state"), emptyText: $("empty-text"), emptyNew: $("empty-new-button"),
  jump: $("jump-button"),
  composerForm: $("composer-form"), composer: $("composer"), send: $("send-button"),
  stop: $("stop-button"), reason: $("composer-reason"), notice: $("notice"),
  membersDialog: $("members-dialog"), membersSub: $("members-dialog-sub"),
  memberList: $("member-list"), inviteForm: $("invite-form"),
  inviteUsername: $("invite-username"), inviteRole: $("invite-role"),
  membersNotice: $("members-notice"), membersLeave: $("members-leave-button"),
  renameDialog: $("rename-dialog"), renameForm: $("rename-form"),
  renameTitle: $("rename-title"), renameNotice: $("rename-notice"),
  confirmDialog: $("confirm-dialog"), confirmForm: $("confirm-form"),
  confirmTitle: $("confirm-dialog-title"), confirmText: $("confirm-text"),
  confirmButton: $("confirm-button"), confirmNotice: $("confirm-notice"),
};

export const state = {
  conversationId: null,
  conversation: null,      // {id, title, role, owner} of the open conversation
  role: null,              // "owner" | "member" | "viewer" when known
  loaded: false,           // a snapshot has arrived for the open conversation
  conversations: [],
  view: emptyView(),       // the in-memory model: message ids in order, id -> Message
  redacted: new Set(),
  elements: new Map(),     // message id -> element
  rendered: new Map(),     // message id -> {content, at, cost} of the last markdown render
  dirty: new Set(), structureDirty: false, frame: 0,
  forceScroll: false, scrollOnSnapshot: false, scrollOnNextMessage: false,
  socket: null, connection: "closed", attempt: 0, retryTimer: 0, fatal: null,
  live: false,             // the current socket has delivered its snapshot
  lastPrompt: null,        // {socket, clientMsgId} of the last prompt sent
  syncRequestedAt: 0, probeTimer: 0, lastFrameAt: 0,
  pendingPrompts: new Map(), // client_msg_id -> text, to hand back a refused prompt
  stopTarget: null, regenerateTarget: null,
  stopRequested: null,     // message id a Stop was sent for (until its `done`)
  blockedUntil: 0, blockedReason: "", blockTimer: 0, // rate limit / quota
  noticeTimer: 0, listTimer: 0, refocus: false, lastTick: Date.now(),
  confirmAction: null,
  viewers: [],             // usernames viewing the open conversation now
  hiddenAt: 0,
};

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export function showNotice(target, text) {
  target.textContent = text;
  target.hidden = false;
  if (target === ui.notice) {
    clearTimeout(state.noticeTimer);
    state.noticeTimer = setTimeout(() => { target.hidden = true; }, NOTICE_MS);
  }
}

export function hideNotice(target) { target.hidden = true; }

// ---- Dialogs ----
export function openDialog(dialog) {
  for (const n of dialog.querySelectorAll(".notice")) n.hidden = true;
  if (typeof dialog.showModal === "function") dialog.showModal();
  else dialog.setAttribute("open", "");
}

export function closeDialog(dialog) {
  if (typeof dialog.close === "function") dialog.close();
  else dialog.removeAttribute("open");
}

// [data-close] buttons and a click on the backdrop close the page's dialogs.
export function initDialogs() {
  for (const dialog of [ui.membersDialog, ui.renameDialog, ui.confirmDialog]) {
    dialog.addEventListener("click", (ev) => {
      if (ev.target.closest("[data-close]")) closeDialog(dialog);
      else if (ev.target === dialog) closeDialog(dialog); // a click on the backdrop
    });
  }
}

// ---- The header: title and the actions the role allows ----
export function setTitle(title) {
  ui.title.textContent = title;
  document.title = state.conversationId ? `${title} · Livechat` : "Livechat";
}

export function updateHeader() {
  const open = Boolean(state.conversationId) && !state.fatal;
  document.body.classList.toggle("no-conversation", !state.conversationId);
  ui.actions.hidden = !open;
  const owner = state.role === "owner";
  ui.renameButton.hidden = !owner;
  ui.deleteButton.hidden = !owner;
  ui.leaveButton.hidden = !open || owner || !state.role;
}

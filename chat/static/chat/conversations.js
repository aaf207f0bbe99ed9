/* Conversations: the list in the sidebar (with who is viewing each), creating, opening,
   renaming, deleting and leaving one, the open conversation's viewers in the header,
   the phone drawer and the browser history (/c/<id>/ links). */
import { API, api } from "./api.js";
import { emptyView } from "./merge.js";
import {
  closeDialog, config, DEFAULT_TITLE, el, hideNotice, LOGIN_URL, openDialog, setTitle,
  showNotice, state, ui, updateHeader,
} from "./page.js";
import { scheduleRender } from "./render.js";
import { connect, disconnect, setConnection } from "./socket.js";

export const conversationPath = (id) => `/c/${encodeURIComponent(id)}/`;

export function idFromPath(path) {
  const m = path.match(/^\/c\/([0-9a-fA-F-]+)\/?$/);
  return m ? m[1] : null;
}

function relativeTime(iso) {
  const t = Date.parse(iso);
  if (!t) return "";
  const s = Math.max(0, (Date.now() - t) / 1000);
  if (s < 60) return "just now";
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  if (s < 7 * 86400) return `${Math.floor(s / 86400)} d ago`;
  return new Date(t).toLocaleDateString();
}

// ---- The list ----
export async function loadConversations() {
  try {
    const data = await api("GET", API);
    state.conversations = (data.conversations || []).slice()
      .sort((a, b) => (Date.parse(b.updated_at) || 0) - (Date.parse(a.updated_at) || 0));
    hideNotice(ui.sidebarNotice);
    renderConversationList();
    const mine = findConversation(state.conversationId);
    if (mine) {
      state.conversation = { ...mine, ...(state.conversation || {}), role: mine.role };
      if (!state.role) state.role = mine.role;
      updateHeader();
    }
  } catch (err) {
    if (err.status === 401) { location.href = `${LOGIN_URL}?next=${encodeURIComponent(location.pathname)}`; return; }
    showNotice(ui.sidebarNotice, `Could not load conversations (${err.message}).`);
  }
}

const findConversation = (id) => state.conversations.find((c) => c.id === id) || null;

function renderConversationList() {
  const items = state.conversations.map((c) => {
    const li = el("li");
    const a = el("a", "conversation-link");
    a.href = conversationPath(c.id);
    a.dataset.conversationId = c.id;
    const top = el("span", "conversation-top");
    top.append(el("span", "conversation-title", c.title || "Untitled"));
    if (c.role && c.role !== "owner") top.append(el("span", `role-badge role-${c.role}`, c.role));
    const meta = el("span", "conversation-meta");
    // The open conversation's presence comes live from its socket; others from the API.
    const live = c.id === state.conversationId && state.connection === "open";
    const names = live ? state.viewers : (c.viewers || []).map((v) => v.username);
    if (names.length) {
      const dot = el("span", "presence-dot", `${names.length} viewing`);
      dot.title = `Viewing now: ${names.join(", ")}`;
      meta.append(dot);
    }
    const who = c.owner && c.owner !== config.username ? `${c.owner} · ` : "";
    meta.append(el("span", "conversation-time", who + relativeTime(c.updated_at)));
    a.append(top, meta);
    if (c.id === state.conversationId) {
      li.classList.add("active");
      a.setAttribute("aria-current", "page");
    }
    li.append(a);
    return li;
  });
  if (!items.length) {
    const empty = el("li", "placeholder", "No conversations yet. Start one above.");
    items.push(empty);
  }
  ui.list.replaceChildren(...items);
  if (!state.conversationId) scheduleRender(); // the welcome text depends on the list
}

// Refetch soon (debounced) so the list order follows the newest activity.
export function refreshListSoon(delay = 800) {
  clearTimeout(state.listTimer);
  state.listTimer = setTimeout(loadConversations, delay);
}

async function createConversation(event) {
  event.preventDefault();
  const button = ui.newForm.querySelector("button[type=submit]");
  const title = ui.newTitle.value.trim() || DEFAULT_TITLE;
  button.disabled = true;
  try {
    const data = await api("POST", API, { title });
    ui.newTitle.value = "";
    hideNotice(ui.sidebarNotice);
    state.conversations.unshift({ role: "owner", viewers: [], ...data });
    openConversation(data.id, { push: true });
    refreshListSoon();
  } catch (err) {
    showNotice(ui.sidebarNotice, `Could not create the conversation: ${err.message}`);
  } finally {
    button.disabled = false;
  }
}

// ---- Sidebar as a drawer on narrow screens ----
function setSidebar(open) {
  document.body.classList.toggle("sidebar-open", open);
  ui.sidebarToggle.setAttribute("aria-expanded", String(open));
  ui.backdrop.hidden = !open;
}
const narrow = () => window.matchMedia("(max-width: 760px)").matches;

// ---- Opening a conversation ----
export function openConversation(id, { push }) {
  if (push && id) history.pushState({ conversationId: id }, "", conversationPath(id));
  if (!id && push) history.pushState({ conversationId: null }, "", "/");
  if (narrow()) setSidebar(!id);
  if (id === state.conversationId && (state.socket || state.fatal)) return;
  disconnect();
  for (const node of state.elements.values()) node.remove();
  state.elements.clear();
  state.rendered.clear();
  const known = findConversation(id);
  Object.assign(state, {
    conversationId: id, conversation: known ? { ...known } : null,
    role: known ? known.role : null, loaded: false, fatal: null, attempt: 0,
    view: emptyView(), redacted: new Set(), structureDirty: true,
    scrollOnSnapshot: true, syncRequestedAt: 0, stopRequested: null,
  });
  state.dirty.clear();
  showViewers([]);
  setTitle(id ? (known && known.title) || "Loading…" : `Welcome, ${config.username}`);
  renderConversationList();
  updateHeader();
  if (id) connect(); else setConnection("closed");
  scheduleRender();
  if (id && !narrow()) state.refocus = true; // the composer gets focus once usable
}

// The open conversation's id, title or role changed (a frame, a rename).
export function applyConversation(conv) {
  if (!conv) return;
  state.conversation = { ...(state.conversation || {}), ...conv };
  if (conv.role) state.role = conv.role;
  if (conv.title) {
    setTitle(conv.title);
    const known = findConversation(state.conversationId);
    if (known) { known.title = conv.title; renderConversationList(); }
  }
  updateHeader();
}

// Who has the open conversation open now: chips in the header, a count in the list.
export function showViewers(viewers) {
  const names = [...new Set((viewers || []).map((v) => v.username))]; // one per user
  const chips = names.map((name) => {
    const chip = el("span", "viewer-chip");
    chip.title = `${name} is viewing now`;
    chip.append(el("span", "avatar small", name.slice(0, 1).toUpperCase()), el("span", "viewer-name", name));
    return chip;
  });
  if (chips.length) chips.unshift(el("span", "viewers-label", "Here now:"));
  ui.viewers.replaceChildren(...chips);
  state.viewers = names;
  renderConversationList();
}

// ---- Rename, delete, leave ----
function confirmAction({ title, text, button, action }) {
  ui.confirmTitle.textContent = title;
  ui.confirmText.textContent = text;
  ui.confirmButton.textContent = button;
  state.confirmAction = action;
  openDialog(ui.confirmDialog);
  ui.confirmButton.focus();
}

// After deleting or leaving: forget the conversation and show the list.
function dropConversation(id) {
  state.conversations = state.conversations.filter((c) => c.id !== id);
  if (state.conversationId === id) openConversation(null, { push: true });
  renderConversationList();
  refreshListSoon(0);
}

export function leave() {
  const id = state.conversationId;
  confirmAction({
    title: "Leave this conversation?",
    text: "You will no longer see it. The owner can invite you again.",
    button: "Leave",
    action: async () => {
      await api("DELETE", `${API}${id}/members/${encodeURIComponent(config.username)}/`);
      closeDialog(ui.membersDialog);
      dropConversation(id);
    },
  });
}

function initManagement() {
  ui.renameButton.addEventListener("click", () => {
    ui.renameTitle.value = state.conversation?.title || "";
    openDialog(ui.renameDialog);
    ui.renameTitle.select();
  });
  ui.renameForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const title = ui.renameTitle.value.trim();
    if (!title) return;
    try {
      const data = await api("PATCH", `${API}${state.conversationId}/`, { title });
      applyConversation({ title: data.title });
      closeDialog(ui.renameDialog);
      refreshListSoon(0);
    } catch (err) {
      showNotice(ui.renameNotice, err.message);
    }
  });

  ui.confirmForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const action = state.confirmAction;
    if (!action) return;
    ui.confirmButton.disabled = true;
    try {
      await action();
      closeDialog(ui.confirmDialog);
    } catch (err) {
      showNotice(ui.confirmNotice, err.message);
    } finally {
      ui.confirmButton.disabled = false;
    }
  });

  ui.deleteButton.addEventListener("click", () => {
    const id = state.conversationId;
    confirmAction({
      title: "Delete this conversation?",
      text: `“${state.conversation?.title || "This conversation"}” and all its messages will be`
        + " deleted for every member. This cannot be undone.",
      button: "Delete",
      action: async () => {
        await api("DELETE", `${API}${id}/`);
        dropConversation(id);
      },
    });
  });
  ui.leaveButton.addEventListener("click", leave);
}

// ---- Navigation: the list, the drawer, back and forward ----
function initNavigation() {
  ui.newForm.addEventListener("submit", createConversation);
  ui.emptyNew.addEventListener("click", () => ui.newForm.requestSubmit());
  ui.list.addEventListener("click", (ev) => {
    const link = ev.target.closest("a[data-conversation-id]");
    // Let the browser handle new-tab / new-window clicks.
    if (!link || ev.button !== 0 || ev.metaKey || ev.ctrlKey || ev.shiftKey || ev.altKey) return;
    ev.preventDefault();
    const id = link.dataset.conversationId;
    openConversation(id, { push: id !== state.conversationId });
  });
  ui.sidebarToggle.addEventListener("click", () => {
    setSidebar(!document.body.classList.contains("sidebar-open"));
  });
  ui.backdrop.addEventListener("click", () => setSidebar(false));
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && document.body.classList.contains("sidebar-open") && narrow()) {
      setSidebar(false);
    }
  });
  window.addEventListener("popstate", () => {
    openConversation(idFromPath(location.pathname), { push: false });
  });
}

export function initConversations() {
  initManagement();
  initNavigation();
}

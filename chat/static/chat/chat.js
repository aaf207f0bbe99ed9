/* Livechat client: conversation list, one WebSocket per open conversation, live replies.
   Plain ES2020, no libraries, no build step. Model and user text only ever goes into the
   page through textContent, never innerHTML. */
"use strict";

(function () {
  // ---- Page configuration: json_script blocks, so no inline JS is needed (CSP). ----
  function readJSON(id, fallback) {
    const el = document.getElementById(id);
    if (!el) return fallback;
    try { return JSON.parse(el.textContent); } catch { return fallback; }
  }

  const config = {
    conversationId: readJSON("conversation-id", null) || null,
    wsPathTemplate: readJSON("ws-path-template", "/ws/chat/{id}/") || "/ws/chat/{id}/",
  };
  const API_CONVERSATIONS = "/api/conversations/";
  const LOGIN_URL = "/accounts/login/";
  // Close codes after which reconnecting cannot help.
  const FATAL_CLOSES = {
    4401: "Please sign in",
    4403: "You are not a member of this conversation.",
    4404: "This conversation does not exist.",
  };
  const ERROR_TEXT = { busy: "A reply is still being generated" };
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 10000;
  const SYNC_RETRY_MS = 3000; // a lost snapshot must not block syncing for ever
  const NEAR_BOTTOM_PX = 80;
  const NOTICE_MS = 6000;

  const $ = (id) => document.getElementById(id);
  const ui = {
    list: $("conversation-list"), newForm: $("new-conversation-form"),
    newTitle: $("new-conversation-title"), sidebarNotice: $("sidebar-notice"),
    title: $("conversation-title"), connState: $("connection-state"),
    connDetail: $("connection-detail"), viewers: $("viewers"),
    scroller: $("messages"), messageList: $("message-list"), empty: $("empty-state"),
    composerForm: $("composer-form"), composer: $("composer"), send: $("send-button"),
    stop: $("stop-button"), reason: $("composer-reason"), notice: $("notice"),
  };
  if (!ui.messageList || !ui.composer) return; // not the chat page

  const state = {
    conversationId: null,
    role: null,               // "owner" | "member" | "viewer" when known; viewers are read-only
    loaded: false,            // a snapshot has arrived for the open conversation
    conversations: [],
    order: [],                // message ids in display order
    byId: new Map(),          // message id -> Message (the in-memory model)
    redacted: new Set(),
    elements: new Map(),      // message id -> element
    dirty: new Set(), structureDirty: false, frame: 0,
    forceScroll: false, scrollOnSnapshot: false, scrollOnNextMessage: false,
    socket: null, connection: "closed", attempt: 0, retryTimer: 0, fatal: null,
    syncRequestedAt: 0,
    pendingPrompts: new Map(), // client_msg_id -> text, to hand back a refused prompt
    stopTarget: null, regenerateTarget: null, // message ids the two buttons act on
    noticeTimer: 0, listTimer: 0, refocus: false,
  };

  // One shared button, moved onto whichever message is the last assistant reply.
  const regenerateButton = document.createElement("button");
  regenerateButton.type = "button";
  regenerateButton.className = "regenerate";
  regenerateButton.id = "regenerate-button";
  regenerateButton.textContent = "Regenerate";

  // ---- Small helpers ----
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // crypto.randomUUID exists only in secure contexts; plain-HTTP LAN hosts need a fallback.
  function uuid4() {
    if (crypto.randomUUID) return crypto.randomUUID();
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
    return [h.slice(0, 8), h.slice(8, 12), h.slice(12, 16), h.slice(16, 20), h.slice(20)].join("-");
  }

  function csrfToken() {
    const m = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    if (m) return decodeURIComponent(m[1]);
    // CSRF_USE_SESSIONS: no cookie, but the logout form carries the token.
    const input = document.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  const conversationPath = (id) => `/c/${encodeURIComponent(id)}/`;
  function idFromPath(path) {
    const m = path.match(/^\/c\/([0-9a-fA-F-]+)\/?$/);
    return m ? m[1] : null;
  }

  function showNotice(target, text) {
    target.textContent = text;
    target.hidden = false;
    if (target === ui.notice) {
      clearTimeout(state.noticeTimer);
      state.noticeTimer = setTimeout(() => { target.hidden = true; }, NOTICE_MS);
    }
  }

  // ---- Conversation list ----
  async function loadConversations() {
    try {
      const res = await fetch(API_CONVERSATIONS, {
        credentials: "same-origin", headers: { Accept: "application/json" },
      });
      if (res.status === 401 || res.status === 403) throw new Error("please sign in");
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      const data = await res.json();
      state.conversations = (data.conversations || []).slice()
        .sort((a, b) => (Date.parse(b.updated_at) || 0) - (Date.parse(a.updated_at) || 0));
      ui.sidebarNotice.hidden = true;
      renderConversationList();
      if (!state.role) state.role = roleFromList(state.conversationId);
    } catch (err) {
      showNotice(ui.sidebarNotice, `Could not load conversations (${err.message}).`);
    }
  }

  function roleFromList(id) {
    const c = state.conversations.find((x) => x.id === id);
    return c ? c.role || null : null;
  }

  function renderConversationList() {
    const items = state.conversations.map((c) => {
      const li = el("li");
      const a = el("a", "conversation-link");
      a.href = conversationPath(c.id);
      a.dataset.conversationId = c.id;
      a.append(el("span", "conversation-title", c.title || "Untitled"));
      if (c.role && c.role !== "owner") a.append(el("span", "conversation-role", c.role));
      if (c.id === state.conversationId) {
        li.classList.add("active");
        a.setAttribute("aria-current", "page");
      }
      li.append(a);
      return li;
    });
    if (!items.length) items.push(el("li", "placeholder", "No conversations yet."));
    ui.list.replaceChildren(...items);
  }

  // Refetch soon (debounced) so the list order follows the newest activity.
  function refreshListSoon() {
    clearTimeout(state.listTimer);
    state.listTimer = setTimeout(loadConversations, 1000);
  }

  async function createConversation(event) {
    event.preventDefault();
    const button = ui.newForm.querySelector("button[type=submit]");
    const title = ui.newTitle.value.trim() || "New conversation";
    button.disabled = true;
    try {
      const res = await fetch(API_CONVERSATIONS, {
        method: "POST",
        credentials: "same-origin",
        headers: {
          "Content-Type": "application/json", Accept: "application/json",
          "X-CSRFToken": csrfToken(),
        },
        body: JSON.stringify({ title }),
      });
      const data = await res.json().catch(() => ({}));
      if (!res.ok || !data.id) {
        const err = typeof data.error === "string" ? data.error : data.error?.detail;
        throw new Error(data.detail || err || `HTTP ${res.status}`);
      }
      ui.newTitle.value = "";
      ui.sidebarNotice.hidden = true;
      state.conversations.unshift({ role: "owner", ...data });
      openConversation(data.id, { push: true });
      refreshListSoon();
    } catch (err) {
      showNotice(ui.sidebarNotice, `Could not create the conversation: ${err.message}`);
    } finally {
      button.disabled = false;
    }
  }

  function setTitle(title) {
    ui.title.textContent = title;
    document.title = state.conversationId ? `${title} · Livechat` : "Livechat";
  }

  // ---- Opening a conversation ----
  function openConversation(id, { push }) {
    if (push && id) history.pushState({ conversationId: id }, "", conversationPath(id));
    if (id === state.conversationId && (state.socket || state.fatal)) return;
    disconnect();
    Object.assign(state, {
      conversationId: id, role: roleFromList(id), loaded: false, fatal: null, attempt: 0,
      order: [], byId: new Map(), redacted: new Set(), structureDirty: true,
      scrollOnSnapshot: true, syncRequestedAt: 0,
    });
    state.dirty.clear();
    ui.viewers.textContent = "";
    const known = state.conversations.find((c) => c.id === id);
    setTitle(id ? (known && known.title) || "Loading…" : "No conversation open");
    renderConversationList();
    if (id) connect(); else setConnection("closed");
    scheduleRender();
  }

  // ---- WebSocket lifecycle ----
  function connect() {
    clearTimeout(state.retryTimer);
    if (!state.conversationId || state.fatal) return;
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const path = config.wsPathTemplate.replace("{id}", encodeURIComponent(state.conversationId));
    let sock;
    try {
      sock = new WebSocket(scheme + location.host + path);
    } catch (err) {
      scheduleReconnect();
      return;
    }
    state.socket = sock;
    setConnection("connecting");
    // Each handler checks it still belongs to the current socket: an old one may fire late.
    sock.addEventListener("open", () => { if (sock === state.socket) setConnection("open"); });
    sock.addEventListener("message", (ev) => { if (sock === state.socket) onFrame(ev.data); });
    sock.addEventListener("close", (ev) => { if (sock === state.socket) onClose(ev); });
  }

  function disconnect() {
    clearTimeout(state.retryTimer);
    const sock = state.socket;
    state.socket = null;
    if (sock) sock.close(1000);
  }

  function onClose(event) {
    state.socket = null;
    ui.viewers.textContent = "";
    const reason = FATAL_CLOSES[event.code];
    if (reason) {
      state.fatal = reason;
      if (!state.loaded) setTitle(event.code === 4401 ? "Signed out" : "Conversation unavailable");
      setConnection("closed", reason, event.code === 4401);
      scheduleRender();
    } else {
      scheduleReconnect();
    }
  }

  // Exponential backoff (0.5 s doubling, capped at 10 s) with "equal jitter": wait a random
  // time in [base/2, base] so many tabs dropped together do not reconnect in lockstep.
  function scheduleReconnect() {
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** state.attempt);
    state.attempt += 1;
    const wait = base / 2 + Math.random() * (base / 2);
    setConnection("closed", "Reconnecting…");
    clearTimeout(state.retryTimer);
    state.retryTimer = setTimeout(connect, wait);
  }

  function setConnection(value, detail = "", loginLink = false) {
    state.connection = value;
    ui.connState.textContent = value;
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
    updateControls();
  }

  function send(frame) {
    if (!state.socket || state.socket.readyState !== WebSocket.OPEN) {
      showNotice(ui.notice, "Not connected.");
      return false;
    }
    state.socket.send(JSON.stringify(frame));
    return true;
  }

  // Ask for a fresh snapshot, but not again while one is (probably) on its way.
  function requestSync() {
    if (Date.now() - state.syncRequestedAt < SYNC_RETRY_MS) return;
    if (send({ type: "sync" })) state.syncRequestedAt = Date.now();
  }

  // ---- Incoming frames: update the in-memory model, then schedule a render ----
  function onFrame(raw) {
    let frame;
    try { frame = JSON.parse(raw); } catch { return; }
    switch (frame.type) {
      case "snapshot": applySnapshot(frame); break;
      case "message": upsertMessage(frame.message); break;
      case "delta": applyDelta(frame); break;
      case "done": upsertMessage(frame.message, true); refreshListSoon(); break;
      case "presence": showViewers(frame.viewers); break;
      case "redacted":
        state.redacted.add(frame.message_id);
        scheduleRender(frame.message_id);
        break;
      case "error": showServerError(frame); break;
      default: break; // unknown frame types are ignored so the server can add new ones
    }
  }

  function applySnapshot(frame) {
    state.attempt = 0; // a working connection resets the backoff
    state.syncRequestedAt = 0;
    state.loaded = true;
    const conv = frame.conversation || {};
    if (conv.title) setTitle(conv.title);
    if (conv.role) state.role = conv.role;
    state.byId = new Map();
    state.order = [];
    for (const m of frame.messages || []) {
      state.byId.set(m.id, m);
      state.order.push(m.id);
    }
    if (Array.isArray(frame.viewers)) showViewers(frame.viewers);
    state.forceScroll = state.forceScroll || state.scrollOnSnapshot;
    state.scrollOnSnapshot = false;
    state.structureDirty = true;
    scheduleRender();
  }

  function upsertMessage(message, final = false) {
    if (!message || !message.id) return;
    const old = state.byId.get(message.id);
    // A late "message" frame must not roll back text that deltas already added.
    const stale = message.status === "streaming" && (old?.seq || 0) > (message.seq || 0);
    if (!final && stale) return;
    state.byId.set(message.id, message);
    if (!old) {
      state.order.push(message.id);
      state.structureDirty = true;
      if (state.scrollOnNextMessage) state.forceScroll = true;
      state.scrollOnNextMessage = false;
    }
    scheduleRender(message.id);
  }

  function applyDelta(frame) {
    const m = state.byId.get(frame.message_id);
    if (!m) { requestSync(); return; }
    const seq = m.seq || 0;
    if (frame.seq <= seq) return; // duplicate: already applied
    if (frame.seq !== seq + 1) { requestSync(); return; } // gap: some text is missing
    m.content = (m.content || "") + frame.text;
    m.seq = frame.seq;
    scheduleRender(m.id);
  }

  function showViewers(viewers) {
    const names = [...new Set((viewers || []).map((v) => v.username))]; // one per user, not tab
    ui.viewers.textContent = names.length ? `Viewing now: ${names.join(", ")}` : "";
  }

  function showServerError(frame) {
    const text = ERROR_TEXT[frame.code] || frame.detail || frame.code || "Something went wrong.";
    showNotice(ui.notice, text);
    const refused = frame.client_msg_id && state.pendingPrompts.get(frame.client_msg_id);
    if (refused && !ui.composer.value) ui.composer.value = refused; // give the prompt back
    if (frame.client_msg_id) state.pendingPrompts.delete(frame.client_msg_id);
  }

  // ---- Rendering: at most once per animation frame, only what changed ----
  function scheduleRender(id) {
    if (id) state.dirty.add(id);
    if (!state.frame) state.frame = requestAnimationFrame(flush);
  }

  function isNearBottom() {
    const s = ui.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < NEAR_BOTTOM_PX;
  }

  function flush() {
    state.frame = 0;
    const stick = state.forceScroll || isNearBottom(); // measured before the DOM changes
    if (state.structureDirty) {
      reconcileList();
    } else {
      for (const id of state.dirty) {
        const m = state.byId.get(id);
        if (m) renderMessage(m);
      }
    }
    state.dirty.clear();
    state.structureDirty = false;
    state.forceScroll = false;
    updateEmptyState();
    updateControls();
    if (stick) ui.scroller.scrollTop = ui.scroller.scrollHeight;
  }

  // Put message elements in model order, moving only nodes that are out of place
  // (re-inserting everything could reset the scroll position and text selection).
  function reconcileList() {
    for (const [id, node] of state.elements) {
      if (!state.byId.has(id)) { node.remove(); state.elements.delete(id); }
    }
    state.order.forEach((id, i) => {
      const node = renderMessage(state.byId.get(id));
      if (ui.messageList.children[i] !== node) {
        ui.messageList.insertBefore(node, ui.messageList.children[i] || null);
      }
    });
  }

  function renderMessage(m) {
    let node = state.elements.get(m.id);
    if (!node) {
      node = el("article", "message");
      for (const part of ["meta", "content", "details", "actions"]) node.append(el("div", part));
      state.elements.set(m.id, node);
    }
    const streaming = m.status === "streaming";
    const redacted = state.redacted.has(m.id) || m.redacted === true;
    node.dataset.messageId = m.id;
    node.dataset.role = m.role;
    node.dataset.status = m.status;
    node.dataset.seq = String(m.seq || 0);
    node.classList.toggle("redacted", redacted);
    node.setAttribute("aria-busy", String(streaming)); // screen readers wait for the final text

    const meta = node.querySelector(".meta");
    const author = m.author || (m.role === "assistant" ? "assistant" : "(deleted user)");
    meta.replaceChildren(el("span", "author", author));
    if (m.created_at) {
      const clock = { hour: "2-digit", minute: "2-digit" };
      const time = el("time", "time", new Date(m.created_at).toLocaleTimeString([], clock));
      time.dateTime = m.created_at;
      meta.append(time);
    }
    if (m.status && m.status !== "complete") {
      meta.append(el("span", `badge status-${m.status}`, streaming ? "generating…" : m.status));
    }

    const content = node.querySelector(".content");
    const text = redacted ? "[removed by moderation]" : m.content || "";
    if (content.textContent !== text) content.textContent = text;

    const details = node.querySelector(".details");
    details.replaceChildren();
    if (m.role === "assistant" && !streaming) {
      const line = detailsLine(m);
      if (line) details.append(el("span", "usage", line));
      if (m.error && m.error.detail) details.append(el("span", "error-detail", m.error.detail));
    }
    details.hidden = !details.childNodes.length;
    return node;
  }

  // "model · N prompt + M completion = T tokens (estimated)"
  function detailsLine(m) {
    const parts = [];
    if (m.model) parts.push(m.model);
    const u = m.usage;
    if (u) {
      let tokens = `${u.prompt_tokens} prompt + ${u.completion_tokens} completion`
        + ` = ${u.total_tokens} tokens`;
      if (m.usage_estimated) tokens += " (estimated)";
      parts.push(tokens);
    }
    return parts.join(" · ");
  }

  function updateEmptyState() {
    let text = "";
    if (!state.conversationId) text = "Pick a conversation on the left, or start a new one.";
    else if (state.fatal) text = state.fatal;
    else if (!state.loaded) text = "Loading…";
    else if (!state.order.length) text = "No messages yet. Say something!";
    ui.empty.textContent = text;
    ui.empty.hidden = !text;
  }

  function streamingMessage() {
    for (const id of state.order) {
      const m = state.byId.get(id);
      if (m.role === "assistant" && m.status === "streaming") return m;
    }
    return null;
  }

  // Composer, Stop and Regenerate follow the connection and the generation state.
  function updateControls() {
    const streaming = streamingMessage();
    const open = state.connection === "open";
    const canWrite = state.role !== "viewer";
    let reason = "";
    if (!state.conversationId) reason = "Open a conversation to write.";
    else if (state.fatal) reason = state.fatal;
    else if (state.connection === "connecting") reason = "Connecting…";
    else if (!open) reason = "Disconnected. Reconnecting…";
    else if (!canWrite) reason = "You can read this conversation but not write in it.";
    else if (streaming) reason = "A reply is being generated…";

    if (reason && document.activeElement === ui.composer) state.refocus = true;
    ui.composer.disabled = Boolean(reason);
    ui.send.disabled = Boolean(reason);
    ui.reason.textContent = reason;
    ui.reason.hidden = !reason;
    if (!reason && state.refocus) { state.refocus = false; ui.composer.focus(); }

    ui.stop.hidden = !(streaming && open && canWrite);
    state.stopTarget = streaming ? streaming.id : null;

    const lastAssistant = [...state.order].reverse().map((id) => state.byId.get(id))
      .find((m) => m.role === "assistant");
    const node = lastAssistant && state.elements.get(lastAssistant.id);
    if (node && !streaming && open && canWrite) {
      state.regenerateTarget = lastAssistant.id;
      node.querySelector(".actions").append(regenerateButton);
    } else {
      state.regenerateTarget = null;
      regenerateButton.remove();
    }
  }

  // ---- User actions ----
  function sendPrompt() {
    const text = ui.composer.value;
    if (ui.composer.disabled || !text.trim()) return;
    const clientMsgId = uuid4();
    if (!send({ type: "prompt", content: text, client_msg_id: clientMsgId })) return;
    state.pendingPrompts.set(clientMsgId, text);
    const pending = state.pendingPrompts;
    if (pending.size > 20) pending.delete(pending.keys().next().value); // keep it bounded
    state.scrollOnNextMessage = true; // the sender wants to see their own message
    ui.composer.value = "";
  }

  ui.composerForm.addEventListener("submit", (ev) => { ev.preventDefault(); sendPrompt(); });
  ui.composer.addEventListener("keydown", (ev) => {
    // Enter sends; Shift+Enter (and Enter while an IME is composing) inserts a newline.
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      sendPrompt();
    }
  });
  ui.stop.addEventListener("click", () => {
    if (state.stopTarget) send({ type: "cancel", message_id: state.stopTarget });
  });
  regenerateButton.addEventListener("click", () => {
    if (state.regenerateTarget) send({ type: "regenerate", message_id: state.regenerateTarget });
  });
  ui.newForm.addEventListener("submit", createConversation);
  ui.list.addEventListener("click", (ev) => {
    const link = ev.target.closest("a[data-conversation-id]");
    // Let the browser handle new-tab / new-window clicks.
    if (!link || ev.button !== 0 || ev.metaKey || ev.ctrlKey || ev.shiftKey || ev.altKey) return;
    ev.preventDefault();
    const id = link.dataset.conversationId;
    openConversation(id, { push: id !== state.conversationId });
  });
  window.addEventListener("popstate", () => {
    openConversation(idFromPath(location.pathname), { push: false });
  });
  // Skip the rest of a backoff wait once the network is back.
  window.addEventListener("online", () => {
    if (!state.socket && !state.fatal && state.conversationId) connect();
  });
  // Conversations shared with us meanwhile show up when the tab comes back.
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) loadConversations();
  });

  // ---- Start ----
  const initial = config.conversationId || idFromPath(location.pathname);
  history.replaceState({ conversationId: initial }, "", location.href);
  openConversation(initial, { push: false });
  loadConversations();
})();

/* Livechat client: conversation list and management, one WebSocket per open
   conversation, live replies rendered as sanitized Markdown.

   Plain ES2020, no build step. Works under a strict Content-Security-Policy: no inline
   scripts or handlers, no eval, no inline style attributes (element.style from JS only).
   User text is only ever set through textContent; assistant text goes through
   markdown.js (raw HTML escaped, output sanitized). */
"use strict";

(function () {
  // ---- Page configuration: json_script blocks, so no inline JS is needed (CSP). ----
  function readJSON(id, fallback) {
    const node = document.getElementById(id);
    if (!node) return fallback;
    try { return JSON.parse(node.textContent); } catch { return fallback; }
  }

  const config = {
    conversationId: readJSON("conversation-id", null) || null,
    wsPathTemplate: readJSON("ws-path-template", "/ws/chat/{id}/") || "/ws/chat/{id}/",
    username: readJSON("current-username", "") || "",
    // Only the simulator reads `[[sim ...]]` directives; for a real model they are text.
    usingSimulator: readJSON("using-simulator", false) === true,
  };
  const API = "/api/conversations/";
  const LOGIN_URL = "/accounts/login/";
  const DEFAULT_TITLE = "New conversation";
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
  const ERROR_TEXT = {
    busy: "A reply is still being generated. Wait for it, or press Stop.",
    forbidden: "Your role in this conversation is read-only.",
    too_long: "That message is too long.",
  };
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 15000;
  const COMPACT_SUBPROTOCOL = "livechat.compact";  // deltas as ["d", id, seq, text]
  const SIM_DIRECTIVE = /\[\[sim\b[^\]]*\]\]/g;  // read by the simulator only
  const SYNC_RETRY_MS = 3000;        // a lost snapshot must not block syncing for ever
  const LIVENESS_TIMEOUT_MS = 5000;  // no answer to a probe in this long: reconnect
  const WAKE_TICK_MS = 5000;         // a tick this late means the machine slept
  const WAKE_GAP_MS = 15000;
  const LIST_REFRESH_MS = 20000;     // presence in the list, new shared conversations
  const HIDDEN_PROBE_MS = 30000;     // back from the background after this long: probe
  const QUOTA_RETRY_MS = 60000;      // quota errors without retry_after: try again after
  const NEAR_BOTTOM_PX = 80;
  const NOTICE_MS = 7000;
  const SLOW_RENDER_MS = 8;          // markdown slower than this is rendered less often

  const $ = (id) => document.getElementById(id);
  const ui = {
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
  if (!ui.messageList || !ui.composer) return; // not the chat page
  const markdown = window.LivechatMarkdown;

  const state = {
    conversationId: null,
    conversation: null,      // {id, title, role, owner} of the open conversation
    role: null,              // "owner" | "member" | "viewer" when known
    loaded: false,           // a snapshot has arrived for the open conversation
    conversations: [],
    order: [],               // message ids in display order
    byId: new Map(),         // message id -> Message (the in-memory model)
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

  // One shared button, moved onto whichever message is the last assistant reply.
  const regenerateButton = el("button", "regenerate small ghost", "↻ Regenerate");
  regenerateButton.type = "button";
  regenerateButton.id = "regenerate-button";

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

  function hideNotice(target) { target.hidden = true; }

  // Owners and members may report; the server refuses viewers (403), so they are not
  // offered it.
  const canReport = () => state.role !== "viewer";

  // A member's report opens a moderation case for staff (POST .../report/).
  async function reportMessage(messageId) {
    if (!canReport()) return;
    const reason = window.prompt("Why should staff review this message?");
    if (!reason || !reason.trim() || !state.conversationId) return;
    try {
      await api("POST",
        `/api/conversations/${state.conversationId}/messages/${messageId}/report/`,
        { reason: reason.trim().slice(0, 1000) });
      showNotice(ui.notice, "Reported: staff will review this message.");
    } catch (err) {
      showNotice(ui.notice, `Could not report: ${err.message}`);
    }
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

  function formatMs(ms) {
    if (ms === null || ms === undefined) return "";
    return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(ms < 10000 ? 1 : 0)} s`;
  }

  // ---- JSON API: errors come back as {"error": {"code", "detail"}} ----
  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (method !== "GET") headers["X-CSRFToken"] = csrfToken();
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const res = await fetch(path, {
      method, credentials: "same-origin", headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const data = res.status === 204 ? null : await res.json().catch(() => null);
    if (!res.ok) {
      const detail = data && data.error && (data.error.detail || data.error.code);
      const err = new Error(detail || `HTTP ${res.status}`);
      err.status = res.status;
      err.code = data && data.error ? data.error.code : "";
      throw err;
    }
    return data;
  }

  // ---- Conversation list ----
  async function loadConversations() {
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
  function refreshListSoon(delay = 800) {
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

  function setTitle(title) {
    ui.title.textContent = title;
    document.title = state.conversationId ? `${title} · Livechat` : "Livechat";
  }

  // ---- Sidebar as a drawer on narrow screens ----
  function setSidebar(open) {
    document.body.classList.toggle("sidebar-open", open);
    ui.sidebarToggle.setAttribute("aria-expanded", String(open));
    ui.backdrop.hidden = !open;
  }
  const narrow = () => window.matchMedia("(max-width: 760px)").matches;

  // ---- Opening a conversation ----
  function openConversation(id, { push }) {
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
      order: [], byId: new Map(), redacted: new Set(), structureDirty: true,
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

  function updateHeader() {
    const open = Boolean(state.conversationId) && !state.fatal;
    document.body.classList.toggle("no-conversation", !state.conversationId);
    ui.actions.hidden = !open;
    const owner = state.role === "owner";
    ui.renameButton.hidden = !owner;
    ui.deleteButton.hidden = !owner;
    ui.leaveButton.hidden = !open || owner || !state.role;
  }

  // ---- WebSocket lifecycle ----
  function connect() {
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
    sock.addEventListener("message", (ev) => { if (sock === state.socket) onFrame(ev.data); });
    sock.addEventListener("close", (ev) => { if (sock === state.socket) onClose(ev); });
  }

  function disconnect() {
    clearTimeout(state.retryTimer);
    clearTimeout(state.probeTimer);
    const sock = state.socket;
    state.socket = null;
    if (sock) sock.close(1000);
  }

  // Each close code as README's table documents it; anything else reconnects.
  function onClose(event) {
    const sock = state.socket;
    const wasLive = state.live;
    state.socket = null;
    state.live = false;
    clearTimeout(state.probeTimer);
    showViewers([]);
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
    scheduleRender();
    if (code !== 4401) refreshListSoon(0); // it is gone from our list too
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
    const last = state.lastPrompt;
    const text = last && last.socket === sock && state.pendingPrompts.get(last.clientMsgId);
    if (text && !ui.composer.value) {
      ui.composer.value = text;
      autosize();
    }
    if (text) state.pendingPrompts.delete(last.clientMsgId);
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
  function reconnectNow() {
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
  function checkAlive() {
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

  const CONNECTION_LABEL = {
    open: "live", connecting: "connecting…", reconnecting: "reconnecting…", closed: "offline",
  };

  function setConnection(value, detail = "", loginLink = false) {
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
    updateControls();
  }

  function send(frame) {
    if (!state.socket || state.socket.readyState !== WebSocket.OPEN) {
      showNotice(ui.notice, "Not connected: wait for the connection to come back.");
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
  // A delta in the compact form, ["d", message_id, seq, text], as the object the rest reads.
  function fromCompact(frame) {
    if (frame[0] !== "d" || frame.length !== 4) return null;
    return { type: "delta", message_id: frame[1], seq: frame[2], text: frame[3] };
  }

  function onFrame(raw) {
    state.lastFrameAt = Date.now();
    let frame;
    try { frame = JSON.parse(raw); } catch { return; }
    if (Array.isArray(frame)) frame = fromCompact(frame);
    if (!frame) return;
    switch (frame.type) {
      case "snapshot": applySnapshot(frame); break;
      case "message": upsertMessage(frame.message); break;
      case "delta": applyDelta(frame); break;
      case "done":
        upsertMessage(frame.message, true);
        if (state.stopRequested === frame.message.id) state.stopRequested = null;
        refreshListSoon();
        break;
      case "presence": showViewers(frame.viewers); break;
      case "conversation": applyConversation(frame.conversation); break;
      case "redacted":
        state.redacted.add(frame.message_id);
        scheduleRender(frame.message_id);
        break;
      case "restored": // a redaction undone by staff
        state.redacted.delete(frame.message.id);
        upsertMessage(frame.message, true);
        break;
      case "error": showServerError(frame); break;
      default: break; // unknown frame types are ignored so the server can add new ones
    }
  }

  function applyConversation(conv) {
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

  function applySnapshot(frame) {
    state.attempt = 0; // a working connection resets the backoff
    state.live = true;
    state.syncRequestedAt = 0;
    clearTimeout(state.probeTimer);
    state.loaded = true;
    if (state.connection !== "open") setConnection("open");
    applyConversation(frame.conversation);
    state.byId = new Map();
    state.order = [];
    // The snapshot is the truth about what is hidden (each message says `redacted`).
    state.redacted = new Set();
    for (const m of frame.messages || []) {
      state.byId.set(m.id, m);
      state.order.push(m.id);
    }
    if (state.stopRequested && !state.byId.has(state.stopRequested)) state.stopRequested = null;
    if (Array.isArray(frame.viewers)) showViewers(frame.viewers);
    state.forceScroll = state.forceScroll || state.scrollOnSnapshot;
    state.scrollOnSnapshot = false;
    state.structureDirty = true;
    for (const id of state.order) state.dirty.add(id);
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
      if (message.role === "user" && message.author === config.username) {
        state.scrollOnNextMessage = true; // and the answer to it
      } else {
        state.scrollOnNextMessage = false;
      }
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

  function showServerError(frame) {
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
    const deferred = [];
    if (state.structureDirty) reconcileList();
    for (const id of state.dirty) {
      const m = state.byId.get(id);
      if (m && !renderMessage(m)) deferred.push(id);
    }
    state.dirty.clear();
    state.structureDirty = false;
    state.forceScroll = false;
    updateEmptyState();
    updateControls();
    if (stick) {
      ui.scroller.scrollTop = ui.scroller.scrollHeight;
      ui.jump.hidden = true;
    } else if (state.loaded && state.order.length) {
      ui.jump.hidden = false;
    }
    // Markdown of very long streaming replies is re-rendered less often (see renderContent).
    if (deferred.length) for (const id of deferred) scheduleRender(id);
  }

  // Put message elements in model order, moving only nodes that are out of place
  // (re-inserting everything would reset the scroll position and text selection).
  function reconcileList() {
    for (const [id, node] of state.elements) {
      if (!state.byId.has(id)) {
        node.remove();
        state.elements.delete(id);
        state.rendered.delete(id);
      }
    }
    state.order.forEach((id, i) => {
      const m = state.byId.get(id);
      let node = state.elements.get(id);
      if (!node) { node = createMessageNode(m); state.dirty.add(id); }
      if (ui.messageList.children[i] !== node) {
        ui.messageList.insertBefore(node, ui.messageList.children[i] || null);
      }
    });
  }

  function createMessageNode(m) {
    const node = el("article", "message");
    const head = el("div", "meta");
    const body = el("div", "content");
    const details = el("div", "details");
    const actions = el("div", "actions");
    const report = el("button", "report-button link-button", "Report");
    report.type = "button";
    report.title = "Ask staff to review this message";
    report.addEventListener("click", () => reportMessage(m.id));
    actions.append(report);
    node.append(head, body, details, actions);
    node.dataset.messageId = m.id;
    state.elements.set(m.id, node);
    return node;
  }

  const STATUS_LABEL = {
    streaming: "generating…", cancelled: "cancelled", failed: "failed", interrupted: "interrupted",
  };

  // Returns false when the content render was put off to a later frame.
  function renderMessage(m) {
    const node = state.elements.get(m.id) || createMessageNode(m);
    const streaming = m.status === "streaming";
    const redacted = state.redacted.has(m.id) || m.redacted === true;
    node.dataset.role = m.role;
    node.dataset.status = m.status;
    node.dataset.seq = String(m.seq || 0);
    node.classList.toggle("redacted", redacted);
    node.classList.toggle("mine", m.role === "user" && m.author === config.username);
    node.setAttribute("aria-busy", String(streaming)); // screen readers wait for the final text
    node.querySelector(".report-button").hidden = streaming || redacted || !canReport();

    const meta = node.querySelector(".meta");
    const author = m.role === "assistant" ? "Assistant" : m.author || "(deleted user)";
    const avatar = el("span", `avatar small ${m.role === "assistant" ? "bot" : ""}`,
      m.role === "assistant" ? "AI" : author.slice(0, 1).toUpperCase());
    avatar.setAttribute("aria-hidden", "true");
    const parts = [avatar, el("span", "author", author)];
    if (m.created_at) {
      const clock = { hour: "2-digit", minute: "2-digit" };
      const time = el("time", "time", new Date(m.created_at).toLocaleTimeString([], clock));
      time.dateTime = m.created_at;
      time.title = new Date(m.created_at).toLocaleString();
      parts.push(time);
    }
    if (m.status && m.status !== "complete") {
      const badge = el("span", `badge status-${m.status}`, STATUS_LABEL[m.status] || m.status);
      badge.title = `Status: ${m.status}`;
      parts.push(badge);
    }
    meta.replaceChildren(...parts);

    const done = renderContent(node.querySelector(".content"), m, redacted);

    const details = node.querySelector(".details");
    const lines = [];
    if (m.role === "assistant" && !streaming) {
      const line = detailsLine(m);
      if (line) lines.push(el("span", "usage", line));
      if (m.error && (m.error.detail || m.error.code)) {
        let text = m.error.detail || m.error.code;
        if (m.error.retry_after) text += ` (retry after ${formatMs(m.error.retry_after * 1000)})`;
        lines.push(el("span", "error-detail", text));
      }
    }
    details.replaceChildren(...lines);
    details.hidden = !lines.length;
    details.title = m.role === "assistant" && !streaming ? tooltip(m) : "";
    return done;
  }

  function renderContent(target, m, redacted) {
    const text = redacted ? "[removed by moderation]" : m.content || "";
    const last = state.rendered.get(m.id);
    if (last && last.content === text && last.redacted === redacted) return true;
    if (m.role !== "assistant" || redacted) {
      renderUserText(target, text); // shown exactly as typed (pre-wrap), as text
      state.rendered.set(m.id, { content: text, redacted, at: 0, cost: 0 });
      return true;
    }
    // Markdown re-renders the whole reply; for a very long one that is costly, so while
    // it streams wait a few frames between renders (the final text always renders).
    const now = performance.now();
    if (m.status === "streaming" && last && last.cost > SLOW_RENDER_MS
        && now - last.at < last.cost * 6) {
      return false;
    }
    markdown.renderInto(target, text);
    target.classList.add("markdown");
    state.rendered.set(m.id, { content: text, redacted, at: now, cost: performance.now() - now });
    return true;
  }

  // Simulator directives (`[[sim reply=...]]`) are long and unreadable: shown as a chip
  // with the directive in its tooltip. Only with the simulator, though: a real model
  // reads them as part of the prompt, and a chip would hide that text from co-members.
  // Everything else is plain text.
  function renderUserText(target, text) {
    if (!config.usingSimulator) {
      target.textContent = text;
      return;
    }
    const parts = [];
    let at = 0;
    for (const match of text.matchAll(SIM_DIRECTIVE)) {
      if (match.index > at) parts.push(document.createTextNode(text.slice(at, match.index)));
      const chip = el("span", "sim-directive", "⚙ simulator directive");
      chip.title = match[0];
      parts.push(chip);
      at = match.index + match[0].length;
    }
    if (at < text.length) parts.push(document.createTextNode(text.slice(at)));
    target.replaceChildren(...parts);
  }

  // "complete · gpt-4o-mini · 12 prompt + 300 completion = 312 tokens · first token 310 ms
  //  · total 2.4 s"
  function detailsLine(m) {
    const parts = [m.status];
    if (m.model) parts.push(m.model);
    const u = m.usage;
    if (u) {
      let tokens = `${u.prompt_tokens} prompt + ${u.completion_tokens} completion`
        + ` = ${u.total_tokens} tokens`;
      if (m.usage_estimated) tokens += " (estimated)";
      parts.push(tokens);
    }
    if (m.ttft_ms !== null && m.ttft_ms !== undefined) parts.push(`first token ${formatMs(m.ttft_ms)}`);
    if (m.duration_ms !== null && m.duration_ms !== undefined) parts.push(`total ${formatMs(m.duration_ms)}`);
    return parts.join(" · ");
  }

  function tooltip(m) {
    const lines = [`Status: ${m.status}`];
    if (m.model) lines.push(`Model: ${m.model}`);
    if (m.usage) {
      lines.push(`Tokens: ${m.usage.prompt_tokens} prompt, ${m.usage.completion_tokens} completion,`
        + ` ${m.usage.total_tokens} total${m.usage_estimated ? " (estimated)" : ""}`);
    }
    if (m.ttft_ms !== null && m.ttft_ms !== undefined) lines.push(`Time to first token: ${formatMs(m.ttft_ms)}`);
    if (m.finish_reason) lines.push(`Finish reason: ${m.finish_reason}`);
    return lines.join("\n");
  }

  function updateEmptyState() {
    let text = "";
    if (!state.conversationId) {
      text = state.conversations.length
        ? "Pick a conversation from the list, or start a new one."
        : "Start a conversation, then invite others to watch the answers stream in with you.";
    }
    else if (state.fatal) text = state.fatal;
    else if (!state.loaded) text = "Loading…";
    else if (!state.order.length) {
      text = state.role === "viewer" ? "No messages yet." : "No messages yet. Say hello!";
    }
    ui.emptyText.textContent = text;
    ui.empty.hidden = !text;
    ui.emptyNew.hidden = Boolean(state.conversationId);
  }

  function streamingMessage() {
    for (let i = state.order.length - 1; i >= 0; i -= 1) {
      const m = state.byId.get(state.order[i]);
      if (m && m.role === "assistant" && m.status === "streaming") return m;
    }
    return null;
  }

  // Composer, Stop and Regenerate follow the connection, the role and the generation.
  function updateControls() {
    const streaming = streamingMessage();
    const open = state.connection === "open" && state.loaded;
    const canWrite = state.role !== "viewer";
    const blocked = state.blockedUntil > Date.now();
    let reason = "";
    if (!state.conversationId) reason = "Open a conversation to write.";
    else if (state.fatal) reason = state.fatal;
    else if (state.connection === "connecting") reason = "Connecting…";
    else if (state.connection !== "open") reason = "Disconnected: reconnecting…";
    else if (!state.loaded) reason = "Loading…";
    else if (!canWrite) reason = "You are a viewer: you can read along but not write.";
    else if (streaming) {
      reason = streaming.id === state.stopRequested
        ? "Stopping…" : "A reply is being generated. Press Stop to cancel it.";
    } else if (blocked) {
      const seconds = Math.ceil((state.blockedUntil - Date.now()) / 1000);
      const when = seconds <= 90 ? `in ${seconds} s`
        : `at ${new Date(state.blockedUntil).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })}`;
      reason = `${state.blockedReason} You can send again ${when}.`;
    }

    if (reason && document.activeElement === ui.composer) state.refocus = true;
    ui.composer.disabled = Boolean(reason);
    ui.send.disabled = Boolean(reason);
    ui.reason.textContent = reason;
    ui.reason.hidden = !reason || !state.conversationId;
    ui.reason.dataset.kind = blocked && !streaming ? "blocked" : streaming ? "busy" : "";
    ui.composerForm.classList.toggle("is-disabled", Boolean(reason));
    if (!reason && state.refocus) { state.refocus = false; ui.composer.focus(); }

    ui.generating.hidden = !streaming;
    ui.stop.hidden = !(streaming && open && canWrite);
    ui.stop.disabled = Boolean(streaming && streaming.id === state.stopRequested);
    state.stopTarget = streaming ? streaming.id : null;

    let lastAssistant = null;
    for (let i = state.order.length - 1; i >= 0 && !lastAssistant; i -= 1) {
      const m = state.byId.get(state.order[i]);
      if (m && m.role === "assistant") lastAssistant = m;
    }
    const node = lastAssistant && state.elements.get(lastAssistant.id);
    if (node && !streaming && open && canWrite && lastAssistant.reply_to !== null) {
      state.regenerateTarget = lastAssistant.id;
      regenerateButton.disabled = blocked;
      const actions = node.querySelector(".actions");
      if (regenerateButton.parentNode !== actions) actions.append(regenerateButton);
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
    const first = state.loaded && !state.order.length;
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
  ui.jump.addEventListener("click", () => {
    ui.scroller.scrollTop = ui.scroller.scrollHeight;
    ui.jump.hidden = true;
  });
  ui.scroller.addEventListener("scroll", () => { if (isNearBottom()) ui.jump.hidden = true; }, { passive: true });

  // Copy buttons of code blocks (delegated: the blocks are re-rendered while streaming).
  ui.messageList.addEventListener("click", async (ev) => {
    const button = ev.target.closest("button.copy-code");
    if (!button) return;
    const code = button.closest(".code-block")?.querySelector("pre code, pre");
    if (!code) return;
    const ok = await copyText(code.textContent);
    button.textContent = ok ? "Copied" : "Copy failed";
    button.classList.toggle("copied", ok);
    setTimeout(() => { button.textContent = "Copy"; button.classList.remove("copied"); }, 1500);
  });

  async function copyText(text) {
    try {
      if (navigator.clipboard && window.isSecureContext) {
        await navigator.clipboard.writeText(text);
        return true;
      }
    } catch { /* fall back below */ }
    // Plain-HTTP hosts have no async clipboard: copy through a hidden textarea.
    const area = el("textarea", "clipboard-helper");
    area.value = text;
    area.setAttribute("readonly", "");
    document.body.append(area);
    area.select();
    let ok = false;
    try { ok = document.execCommand("copy"); } catch { ok = false; }
    area.remove();
    return ok;
  }

  // ---- Conversation management: rename, delete, members, leave ----
  function openDialog(dialog) {
    for (const n of dialog.querySelectorAll(".notice")) n.hidden = true;
    if (typeof dialog.showModal === "function") dialog.showModal();
    else dialog.setAttribute("open", "");
  }
  function closeDialog(dialog) {
    if (typeof dialog.close === "function") dialog.close();
    else dialog.removeAttribute("open");
  }
  for (const dialog of [ui.membersDialog, ui.renameDialog, ui.confirmDialog]) {
    dialog.addEventListener("click", (ev) => {
      if (ev.target.closest("[data-close]")) closeDialog(dialog);
      else if (ev.target === dialog) closeDialog(dialog); // a click on the backdrop
    });
  }

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

  function confirmAction({ title, text, button, action }) {
    ui.confirmTitle.textContent = title;
    ui.confirmText.textContent = text;
    ui.confirmButton.textContent = button;
    state.confirmAction = action;
    openDialog(ui.confirmDialog);
    ui.confirmButton.focus();
  }
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

  // After deleting or leaving: forget the conversation and show the list.
  function dropConversation(id) {
    state.conversations = state.conversations.filter((c) => c.id !== id);
    if (state.conversationId === id) openConversation(null, { push: true });
    renderConversationList();
    refreshListSoon(0);
  }

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

  function leave() {
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
  ui.leaveButton.addEventListener("click", leave);
  ui.membersLeave.addEventListener("click", leave);

  ui.membersButton.addEventListener("click", async () => {
    const owner = state.role === "owner";
    ui.inviteForm.hidden = !owner;
    ui.membersLeave.hidden = owner || !state.role;
    ui.membersSub.textContent = owner
      ? "Members can write and stop replies; viewers can only read."
      : "Only the owner can invite or remove people.";
    ui.memberList.replaceChildren(el("li", "placeholder", "Loading…"));
    openDialog(ui.membersDialog);
    if (owner) ui.inviteUsername.focus();
    await loadMembers();
  });

  async function loadMembers() {
    const id = state.conversationId;
    try {
      const data = await api("GET", `${API}${id}/members/`);
      if (id === state.conversationId) renderMembers(data.members || []);
    } catch (err) {
      showNotice(ui.membersNotice, `Could not load members: ${err.message}`);
    }
  }

  function renderMembers(members) {
    const owner = state.role === "owner";
    const here = new Set(state.viewers);
    const rows = members.map((m) => {
      const li = el("li", "member");
      li.dataset.username = m.username;
      const who = el("span", "member-who");
      who.append(el("span", "avatar small", m.username.slice(0, 1).toUpperCase()));
      const name = el("span", "member-name", m.username);
      if (m.username === config.username) name.append(el("span", "you", " (you)"));
      who.append(name);
      if (here.has(m.username)) who.append(el("span", "presence-dot", "here now"));
      li.append(who);
      if (owner && m.role !== "owner") {
        const role = el("select", "member-role");
        role.setAttribute("aria-label", `Role of ${m.username}`);
        for (const r of ["member", "viewer"]) {
          const opt = el("option", "", r);
          opt.value = r;
          opt.selected = m.role === r;
          role.append(opt);
        }
        role.addEventListener("change", () => setMember(m.username, role.value));
        const remove = el("button", "ghost small danger", "Remove");
        remove.type = "button";
        remove.addEventListener("click", () => removeMember(m.username));
        li.append(role, remove);
      } else {
        li.append(el("span", `role-badge role-${m.role}`, m.role));
      }
      return li;
    });
    ui.memberList.replaceChildren(...rows);
  }

  async function setMember(username, role) {
    hideNotice(ui.membersNotice);
    try {
      await api("POST", `${API}${state.conversationId}/members/`, { username, role });
      await loadMembers();
      return true;
    } catch (err) {
      showNotice(ui.membersNotice, err.status === 404 ? `There is no user “${username}”.` : err.message);
      return false;
    }
  }

  async function removeMember(username) {
    hideNotice(ui.membersNotice);
    try {
      await api("DELETE", `${API}${state.conversationId}/members/${encodeURIComponent(username)}/`);
      await loadMembers();
    } catch (err) {
      showNotice(ui.membersNotice, err.message);
    }
  }

  ui.inviteForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const username = ui.inviteUsername.value.trim();
    if (!username) return;
    if (await setMember(username, ui.inviteRole.value)) {
      ui.inviteUsername.value = "";
      ui.inviteUsername.focus();
    }
  });

  // ---- Navigation ----
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

  // ---- Connection care: network changes, sleep, background tabs ----
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

  // ---- Start ----
  const initial = config.conversationId || idFromPath(location.pathname);
  history.replaceState({ conversationId: initial }, "", location.href);
  openConversation(initial, { push: false });
  loadConversations();
})();

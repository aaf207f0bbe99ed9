/* Messages to DOM (docs/ui.md, "Rendering"). Frames only change the model and mark
   messages dirty; one requestAnimationFrame callback redraws what changed, so a burst of
   deltas costs one layout. Message elements are created once and reconciled in place.
   Assistant text is Markdown through markdown.js (raw HTML escaped, output sanitized);
   user text is only ever set through textContent, with `[[sim ...]]` directives as
   chips where the simulator answers. */
import { api } from "./api.js";
import { canReport, updateControls } from "./controls.js";
import { config, el, showNotice, SIM_DIRECTIVE, state, ui } from "./page.js";

const NEAR_BOTTOM_PX = 80;
const SLOW_RENDER_MS = 8;          // markdown slower than this is rendered less often
const STATUS_LABEL = {
  streaming: "generating…", cancelled: "cancelled", failed: "failed", interrupted: "interrupted",
};

// markdown.js, a classic script that runs before the modules (both are deferred).
const markdown = () => window.LivechatMarkdown;

function formatMs(ms) {
  if (ms === null || ms === undefined) return "";
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(ms < 10000 ? 1 : 0)} s`;
}

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

// ---- At most once per animation frame, only what changed ----
export function scheduleRender(id) {
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
    const m = state.view.byId.get(id);
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
  } else if (state.loaded && state.view.order.length) {
    ui.jump.hidden = false;
  }
  // Markdown of very long streaming replies is re-rendered less often (see renderContent).
  if (deferred.length) for (const id of deferred) scheduleRender(id);
}

// Put message elements in model order, moving only nodes that are out of place
// (re-inserting everything would reset the scroll position and text selection).
function reconcileList() {
  const { order, byId } = state.view;
  for (const [id, node] of state.elements) {
    if (!byId.has(id)) {
      node.remove();
      state.elements.delete(id);
      state.rendered.delete(id);
    }
  }
  order.forEach((id, i) => {
    const m = byId.get(id);
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
  markdown().renderInto(target, text);
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
  else if (!state.view.order.length) {
    text = state.role === "viewer" ? "No messages yet." : "No messages yet. Say hello!";
  }
  ui.emptyText.textContent = text;
  ui.empty.hidden = !text;
  ui.emptyNew.hidden = Boolean(state.conversationId);
}

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

// The listeners of the message area: "Jump to latest" and the copy buttons.
export function initRender() {
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
}

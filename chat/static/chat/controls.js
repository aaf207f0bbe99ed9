/* The controls that follow the conversation: the composer (enabled, or disabled with the
   reason underneath), "Generating…", Stop, and Regenerate under the last answer. They
   depend on the connection, the role, the running answer and a rate-limit block, and
   are redrawn after every render and connection change. */
import { el, state, ui } from "./page.js";

// One shared button, moved onto whichever message is the last assistant reply.
export const regenerateButton = el("button", "regenerate small ghost", "↻ Regenerate");
regenerateButton.type = "button";
regenerateButton.id = "regenerate-button";

// Owners and members may report; the server refuses viewers (403), so they are not
// offered it.
export const canReport = () => state.role !== "viewer";

export function streamingMessage() {
  const { order, byId } = state.view;
  for (let i = order.length - 1; i >= 0; i -= 1) {
    const m = byId.get(order[i]);
    if (m && m.role === "assistant" && m.status === "streaming") return m;
  }
  return null;
}

// Composer, Stop and Regenerate follow the connection, the role and the generation.
export function updateControls() {
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

  const { order, byId } = state.view;
  let lastAssistant = null;
  for (let i = order.length - 1; i >= 0 && !lastAssistant; i -= 1) {
    const m = byId.get(order[i]);
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

/* What each server frame does to the page (README, "WebSocket protocol"): the model
   changes by the merge rule (merge.js), then a render is scheduled; presence, renames,
   moderation and refusals go to the modules that show them. */
import { showServerError } from "./composer.js";
import { applyConversation, refreshListSoon, showViewers } from "./conversations.js";
import {
  ADDED, APPLIED, applyDelta, applyMessage, applySnapshot, IGNORED, SYNC,
} from "./merge.js";
import { config, state } from "./page.js";
import { scheduleRender } from "./render.js";
import { requestSync, setConnection, snapshotArrived } from "./socket.js";

export function handleFrame(frame) {
  switch (frame.type) {
    case "snapshot": onSnapshot(frame); break;
    case "message": upsertMessage(frame.message); break;
    case "delta": onDelta(frame); break;
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

function onSnapshot(frame) {
  snapshotArrived(); // a working connection resets the backoff
  state.loaded = true;
  if (state.connection !== "open") setConnection("open");
  applyConversation(frame.conversation);
  applySnapshot(state.view, frame.messages);
  // The snapshot is the truth about what is hidden (each message says `redacted`).
  state.redacted = new Set();
  const { byId, order } = state.view;
  if (state.stopRequested && !byId.has(state.stopRequested)) state.stopRequested = null;
  if (Array.isArray(frame.viewers)) showViewers(frame.viewers);
  state.forceScroll = state.forceScroll || state.scrollOnSnapshot;
  state.scrollOnSnapshot = false;
  state.structureDirty = true;
  for (const id of order) state.dirty.add(id);
  scheduleRender();
}

function upsertMessage(message, final = false) {
  const result = applyMessage(state.view, message, final);
  if (result === IGNORED) return;
  if (result === ADDED) {
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

function onDelta(frame) {
  const result = applyDelta(state.view, frame);
  if (result === SYNC) requestSync(); // unknown message, or a gap: some text is missing
  else if (result === APPLIED) scheduleRender(frame.message_id);
}

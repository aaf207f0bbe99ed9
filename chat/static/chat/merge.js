/* The merge rule: how `snapshot`, `message`, `delta` and `done` frames fold into the
   messages a viewer shows. Pure: no DOM, no socket, no clock. chat/domain/merge.py is
   the same rule in Python (property-tested by tests/domain/test_merge.py); tests/page/test_merge_js.py
   holds this module to the same cases and to that module's results.

   - A snapshot replaces everything.
   - A `message` adds a message or replaces it, except that a late echo of a streaming
     message never rolls back text that deltas already added; a final state (`done`, or
     `restored` after moderation) always replaces.
   - A delta is applied only when its `seq` is the next one of a streaming message. One
     already applied, or for a message that is no longer streaming, is ignored; a gap or
     an unknown message asks for a fresh snapshot (`sync`).

   A view is {order: [message id], byId: Map(message id -> Message)}; the Message objects
   are the frames' own, and deltas extend their `content` and `seq` in place. */

export const APPLIED = "applied";
export const IGNORED = "ignored";
export const SYNC = "sync";
export const ADDED = "added";
export const REPLACED = "replaced";

export function emptyView() {
  return { order: [], byId: new Map() };
}

export function applySnapshot(view, messages) {
  view.byId = new Map();
  view.order = [];
  for (const m of messages || []) {
    view.byId.set(m.id, m);
    view.order.push(m.id);
  }
}

// ADDED (new, appended to the order), REPLACED or IGNORED.
export function applyMessage(view, message, final = false) {
  if (!message || !message.id) return IGNORED;
  const old = view.byId.get(message.id);
  // A late "message" frame must not roll back text that deltas already added.
  const stale = message.status === "streaming" && (old?.seq || 0) > (message.seq || 0);
  if (!final && stale) return IGNORED;
  view.byId.set(message.id, message);
  if (old) return REPLACED;
  view.order.push(message.id);
  return ADDED;
}

// APPLIED, IGNORED (a duplicate, or a straggler after `done`) or SYNC (send `sync`).
export function applyDelta(view, delta) {
  const m = view.byId.get(delta.message_id);
  if (!m) return SYNC;
  const seq = m.seq || 0;
  if (m.status !== "streaming" || delta.seq <= seq) return IGNORED;
  if (delta.seq !== seq + 1) return SYNC; // a gap: only a snapshot can fill it
  m.content = (m.content || "") + delta.text;
  m.seq = delta.seq;
  return APPLIED;
}

// One frame, as the page applies it (and as chat/domain/merge.py's
// ConversationView.apply does): true when the viewer must send `sync`. Frames that carry
// no message text (presence, errors, ...) change nothing here.
export function applyFrame(view, frame) {
  switch (frame.type) {
    case "snapshot": applySnapshot(view, frame.messages); return false;
    case "message": applyMessage(view, frame.message); return false;
    case "done": case "restored": applyMessage(view, frame.message, true); return false;
    case "delta": return applyDelta(view, frame) === SYNC;
    default: return false;
  }
}

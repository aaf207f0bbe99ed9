/* The Members dialog: everyone with their role and who is here now. The owner invites
   by username as member or viewer, changes roles and removes people; others can leave. */
import { API, api } from "./api.js";
import { leave } from "./conversations.js";
import { config, el, hideNotice, openDialog, showNotice, state, ui } from "./page.js";

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

export function initMembers() {
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

  ui.inviteForm.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const username = ui.inviteUsername.value.trim();
    if (!username) return;
    if (await setMember(username, ui.inviteRole.value)) {
      ui.inviteUsername.value = "";
      ui.inviteUsername.focus();
    }
  });
}

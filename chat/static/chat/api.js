/* The JSON API (README, "WebSocket protocol and HTTP API"): same-origin requests with the
   session cookie, writes with the CSRF token. Errors come back as
   {"error": {"code", "detail"}} and are thrown as an Error with `status` and `code`. */

export const API = "/api/conversations/";

export function csrfToken() {
  const m = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  if (m) return decodeURIComponent(m[1]);
  // CSRF_USE_SESSIONS: no cookie, but the logout form carries the token.
  const input = document.querySelector("input[name=csrfmiddlewaretoken]");
  return input ? input.value : "";
}

export async function api(method, path, body) {
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

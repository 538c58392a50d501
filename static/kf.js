/* kf.js: sends the site's forms to the JSON API and shows its answers. Plain JS, no libraries.
 *
 * <form data-api="/path" [data-method] [data-multipart] data-success="name" [data-error="name"]>
 * posts the form as JSON (or multipart), then calls onSuccess[name] or shows the API error:
 * details' field messages in [data-error-for=field], the rest in [data-form-error].
 * <button data-action="name"> runs actions[name]; with data-confirm it needs a second click.
 */
(() => {
  "use strict";

  const $ = (sel, root = document) => root.querySelector(sel);
  const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

  function csrfToken() {
    const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]*)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  /** One call to the API. Resolves to {ok, status, data}; a failed call always has data.error. */
  async function api(method, url, body) {
    const headers = { Accept: "application/json", "X-CSRFToken": csrfToken() };
    const init = { method, headers, credentials: "same-origin" };
    if (body instanceof FormData) {
      init.body = body;
    } else if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(url, init);
    } catch (_) {
      return { ok: false, status: 0, data: { error: { code: "network", message: "Could not reach kf. Check your connection and try again." } } };
    }
    let data = null;
    if (response.status !== 204) {
      try { data = await response.json(); } catch (_) { data = null; }
    }
    if (!response.ok && !(data && data.error)) {
      data = { error: { code: "http_" + response.status, message: `kf answered with an unexpected error (${response.status}).` } };
    }
    return { ok: response.ok, status: response.status, data: data || {} };
  }

  function formBody(form) {
    if (form.hasAttribute("data-multipart")) return new FormData(form);
    const body = {};
    for (const el of form.elements) {
      if (!el.name || el.disabled || el.type === "submit" || el.type === "button") continue;
      if (el.type === "checkbox") {
        if (!Array.isArray(body[el.name])) body[el.name] = [];
        if (el.checked) body[el.name].push(el.value);
      } else if (el.type === "radio") {
        if (el.checked) body[el.name] = el.value;
      } else if (el.dataset.current !== undefined && el.value === el.dataset.current) {
        // Left out when unchanged: some changes (email) ask for a recent sign-in.
      } else if (el.type === "number") {
        if (el.value !== "") body[el.name] = Number(el.value);
      } else {
        body[el.name] = el.value;
      }
    }
    return body;
  }

  // --- showing answers ----------------------------------------------------------------------------

  function clearMessages(scope) {
    for (const el of $$("[data-error-for], [data-form-error], [data-list-error], [data-form-ok]", scope)) {
      el.hidden = true;
      el.textContent = "";
    }
    for (const el of $$("[aria-invalid]", scope)) el.removeAttribute("aria-invalid");
  }

  function say(scope, selector, text) {
    const box = $(selector, scope);
    if (!box) return;
    box.textContent = text;
    box.hidden = false;
  }

  function link(href, text, testId) {
    const a = document.createElement("a");
    a.href = href;
    a.textContent = text;
    if (testId) a.dataset.test = testId;
    return a;
  }

  /** Shows an API error inside `scope`: field messages next to their fields, the rest in `boxSelector`. */
  function showError(scope, error, boxSelector = "[data-form-error]") {
    const details = (error && error.details) || {};
    const reason = details.reason;
    if (error.code === "unauthenticated" && !scope.closest("#login-form")) {
      location.assign("/login?next=" + encodeURIComponent(location.pathname));
      return;
    }
    if (reason === "account_pending_deletion") {
      location.reload();
      return;
    }
    const fields = Object.entries(details).filter(([, messages]) => Array.isArray(messages));
    let unplaced = error.code !== "invalid_request" || fields.length === 0;
    // A service's own sentence ("The current password is wrong.") reads better than the terse field
    // note; validation messages come as "field: message" and keep their per-field notes.
    const single = fields.length === 1 && fields[0][1].length === 1;
    const sentence = single && !error.message.startsWith(fields[0][0] + ":") ? error.message : null;
    for (const [field, messages] of fields) {
      const slot = $(`[data-error-for="${CSS.escape(field)}"]`, scope);
      if (!slot) { unplaced = true; continue; }
      slot.textContent = sentence || messages.join(" ");
      slot.hidden = false;
      const input = $(`[name="${CSS.escape(field)}"]`, scope);
      if (input) input.setAttribute("aria-invalid", "true");
    }
    const box = $(boxSelector, scope) || $("[data-form-error]", scope);
    if (!box) return;
    box.textContent = "";
    if (reason === "recent_login_required") {
      box.append("For your safety, sign in again to do this. ");
      box.append(link("/login?next=" + encodeURIComponent(location.pathname), "Sign in again", "sign-in-again"));
      box.hidden = false;
    } else if (unplaced) {
      box.textContent = error.message;
      box.hidden = false;
    }
  }

  const fmt = (iso, length = 16) => (iso ? iso.slice(0, length).replace("T", " ") : "never");

  function timeCell(iso, length) {
    const td = document.createElement("td");
    if (!iso) { td.textContent = "never"; return td; }
    const time = document.createElement("time");
    time.dateTime = iso;
    time.textContent = fmt(iso, length);
    td.append(time);
    return td;
  }

  function textCell(text, asCode = false) {
    const td = document.createElement("td");
    if (asCode) {
      const code = document.createElement("code");
      code.textContent = text;
      td.append(code);
    } else {
      td.textContent = text;
    }
    return td;
  }

  function showUser(user) {
    for (const el of $$("[data-whoami]")) el.textContent = user.name || user.email;
    if (user.avatar_url) {
      for (const img of $$("img[data-avatar]")) { img.src = user.avatar_url; img.hidden = false; }
      for (const el of $$("[data-avatar-initial]")) el.remove();
    }
  }

  // --- after a successful submit ------------------------------------------------------------------

  function revealPanel(form, fills) {
    form.hidden = true;
    const panel = $("[data-success-panel]", form.parentElement);
    if (!panel) return;
    for (const [name, value] of Object.entries(fills)) {
      for (const el of $$(`[data-fill="${name}"]`, panel)) el.textContent = value;
    }
    panel.hidden = false;
    panel.focus?.();
  }

  const onSuccess = {
    register(form, data) { revealPanel(form, { email: data.user.email }); },
    forgot(form) { revealPanel(form, { email: form.elements.email.value }); },
    reset(form) { revealPanel(form, {}); },
    login(form) { location.assign(form.dataset.next || "/account"); },
    logout() { location.assign("/login"); },
    reload() { location.reload(); },

    profile(form, data) {
      const user = data.user;
      const { name, email } = form.elements;
      name.dataset.current = user.name;
      const asked = email.value;
      email.value = email.dataset.current = user.email;
      const pending = $("[data-pending-email]", form);
      if (user.pending_email) {
        $("[data-fill=pending]", pending).textContent = user.pending_email;
        pending.hidden = false;
      }
      showUser(user);
      say(form, "[data-form-ok]", asked !== user.email && user.pending_email === asked
        ? `Saved. We sent a confirmation link to ${asked}; until you open it you sign in with ${user.email}.`
        : "Saved.");
    },

    avatar(form, data) {
      showUser(data.user);
      form.reset();
    },

    password(form) {
      for (const row of $$("[data-session-id]:not([data-current])")) row.remove();
      say(form, "[data-form-ok]", "Password changed. Your other sessions were signed out.");
    },

    "mfa-verify"(form, data) {
      const section = form.closest("section");
      const list = $("[data-mfa-code-list]", section);
      list.textContent = "";
      for (const code of data.recovery_codes) {
        const li = document.createElement("li");
        const c = document.createElement("code");
        c.textContent = code;
        li.append(c);
        list.append(li);
      }
      $("[data-mfa-enrol]", section).hidden = true;
      $("[data-mfa-start]", section).hidden = true;
      $("[data-mfa-codes]", section).hidden = false;
      const badge = $("[data-test=mfa-status]", section);
      badge.textContent = "On";
      badge.classList.add("badge-ok");
    },

    "api-key"(form, data) {
      const section = form.closest("section");
      $("[data-new-key-value]", section).textContent = data.key;
      $("[data-new-key]", section).hidden = false;
      const tr = document.createElement("tr");
      tr.dataset.keyId = data.id;
      tr.dataset.test = "key-row";
      const prefix = textCell(data.prefix + "…", true);
      prefix.firstChild.dataset.test = "key-prefix";
      const actions = document.createElement("td");
      actions.className = "cell-actions";
      const revoke = document.createElement("button");
      Object.assign(revoke, { type: "button", className: "btn btn-sm btn-quiet", textContent: "Revoke" });
      Object.assign(revoke.dataset, { action: "key-revoke", confirm: "Really revoke?", id: data.id, test: "key-revoke" });
      actions.append(revoke);
      tr.append(textCell(data.name), prefix, textCell(data.scopes.join(", ")), timeCell(data.created_at),
        timeCell(data.last_used_at), timeCell(data.expires_at, 10), actions);
      const rows = $("[data-key-rows]", section);
      rows.prepend(tr);
      $("[data-empty]", rows).hidden = true;
    },
  };

  const onError = {
    login(form, result) {
      const error = result.data.error;
      const details = error.details || {};
      if (error.code === "mfa_required") {
        const wrap = $("[data-otp-field]", form);
        const input = $("input", wrap);
        const codeWasSent = !wrap.hidden && input.value.trim() !== "";
        wrap.hidden = false;
        input.disabled = false;
        input.required = true;
        if (codeWasSent) {
          say(form, '[data-error-for="otp"]', error.message);
          input.setAttribute("aria-invalid", "true");
          input.select();
        } else {
          input.focus();
        }
        return true;
      }
      if (details.reason === "email_unverified") {
        $("[data-unverified]", form).hidden = false;
        return true;
      }
      return false;
    },
  };

  async function submitForm(form) {
    if (form.getAttribute("aria-busy") === "true") return;
    clearMessages(form);
    form.setAttribute("aria-busy", "true");
    const buttons = $$("button[type=submit]", form);
    for (const b of buttons) b.disabled = true;
    try {
      const result = await api(form.dataset.method || "POST", form.dataset.api, formBody(form));
      if (result.ok) {
        if (form.hasAttribute("data-reset-on-success")) form.reset();
        const handler = onSuccess[form.dataset.success];
        if (handler) handler(form, result.data);
      } else {
        const handler = onError[form.dataset.error];
        if (!(handler && handler(form, result))) showError(form, result.data.error);
      }
    } finally {
      form.removeAttribute("aria-busy");
      for (const b of buttons) b.disabled = false;
    }
  }

  // --- buttons ------------------------------------------------------------------------------------

  function actionScope(button) {
    return button.closest("[data-mfa-start]") || button.closest("section") || document.body;
  }

  function failed(button, result) {
    const scope = actionScope(button);
    clearMessages(scope);
    showError(scope, result.data.error, "[data-list-error]");
  }

  /** Destructive buttons need a second click within a few seconds. */
  function confirmed(button) {
    if (!button.dataset.confirm || button.dataset.armed) return true;
    const label = button.textContent;
    button.dataset.armed = "1";
    button.textContent = button.dataset.confirm;
    button.classList.add("btn-danger");
    setTimeout(() => {
      delete button.dataset.armed;
      button.textContent = label;
      button.classList.remove("btn-danger");
    }, 4000);
    return false;
  }

  const actions = {
    reload() { location.reload(); },

    async "resend-verification"(button) {
      const form = button.closest("form");
      const result = await api("POST", "/auth/resend-verification", { email: form.elements.email.value });
      const status = $("[data-resend-status]", form);
      status.textContent = result.ok
        ? "If that address is waiting for confirmation, a new link is on its way."
        : result.data.error.message;
      status.hidden = false;
    },

    async "mfa-setup"(button) {
      const result = await api("POST", "/api/auth/mfa-setup");
      if (!result.ok) return failed(button, result);
      const section = button.closest("section");
      const qr = $("[data-mfa-qr]", section);
      // An <img> rather than inline markup: the SVG cannot run anything inside the page.
      qr.src = "data:image/svg+xml;charset=utf-8," + encodeURIComponent(result.data.qr_svg);
      $("[data-mfa-secret]", section).textContent = result.data.secret;
      button.hidden = true;
      $("[data-mfa-enrol]", section).hidden = false;
      $("#mfa-verify-code", section)?.focus();
    },

    async "session-revoke"(button) {
      const result = await api("POST", `/api/account/sessions/${encodeURIComponent(button.dataset.id)}/revoke`);
      if (!result.ok) return failed(button, result);
      const row = button.closest("tr");
      if (row.hasAttribute("data-current")) location.assign("/login");
      else row.remove();
    },

    async "key-revoke"(button) {
      const result = await api("DELETE", `/api/account/api-keys/${encodeURIComponent(button.dataset.id)}`);
      if (!result.ok) return failed(button, result);
      const rows = button.closest("tbody");
      button.closest("tr").remove();
      if (!$("[data-key-id]", rows)) $("[data-empty]", rows).hidden = false;
    },

    async copy(button) {
      const source = $(button.dataset.copyFrom);
      try {
        await navigator.clipboard.writeText(source.textContent);
        button.textContent = "Copied";
      } catch (_) {
        const range = document.createRange();
        range.selectNodeContents(source);
        getSelection().removeAllRanges();
        getSelection().addRange(range);
        button.textContent = "Selected: press Ctrl+C";
      }
      setTimeout(() => { button.textContent = "Copy"; }, 2500);
    },

    async export(button) {
      const section = button.closest("section");
      const status = $("[data-export-status]", section);
      const download = $("[data-export-link]", section);
      button.disabled = true;
      download.hidden = true;
      const poll = async () => {
        const result = await api("GET", "/api/account/export-data");
        if (!result.ok) { button.disabled = false; status.textContent = ""; return failed(button, result); }
        const exp = result.data;
        if (exp.status === "ready") {
          download.href = exp.url;
          download.hidden = false;
          status.textContent = `Ready. The link works until ${fmt(exp.expires_at)} UTC.`;
          button.disabled = false;
        } else if (exp.status === "pending") {
          status.textContent = "Preparing your export…";
          setTimeout(poll, 2000);
        } else {
          status.textContent = "The export failed; try again.";
          button.disabled = false;
        }
      };
      await poll();
    },

    async "audit-more"(button) {
      const url = "/api/account/audit-list?cursor=" + encodeURIComponent(button.dataset.cursor);
      const result = await api("GET", url);
      if (!result.ok) return failed(button, result);
      const rows = $("[data-audit-rows]", button.closest("section"));
      for (const item of result.data.items) {
        const tr = document.createElement("tr");
        tr.dataset.test = "audit-row";
        tr.append(timeCell(item.at, 19), textCell(item.action, true), textCell(item.ip || "—"),
          textCell(item.target || "—"));
        rows.append(tr);
      }
      button.dataset.cursor = result.data.next_cursor || "";
      button.hidden = !result.data.next_cursor;
    },

    async "cancel-delete"(button) {
      const result = await api("POST", "/api/account/cancel-delete");
      if (!result.ok) return failed(button, result);
      location.reload();
    },
  };

  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (!(form instanceof HTMLFormElement) || !form.dataset.api) return;
    event.preventDefault();
    submitForm(form);
  });

  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button || button.disabled) return;
    const action = actions[button.dataset.action];
    if (!action || !confirmed(button)) return;
    event.preventDefault();
    if (button.dataset.busy) return;
    button.dataset.busy = "1";
    try {
      await action(button);
    } finally {
      delete button.dataset.busy;
    }
  });

  // Page scripts (project.js, …) build on these rather than keeping copies of their own.
  window.kf = Object.freeze({ $, $$, api, csrfToken, clearMessages, say, showError, link, fmt, textCell, timeCell,
    onSuccess, actions });
})();

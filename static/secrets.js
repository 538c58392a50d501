/* secrets.js: the /secrets page on top of kf.js. Values are fetched only when Reveal is clicked and
 * removed from the page again on Hide; the rotation's progress comes from its job's SSE stream. */
(() => {
  "use strict";
  const { $, $$, api, clearMessages, say, showError, actions } = window.kf;
  const page = $("[data-secrets-page]");
  const wsId = page ? page.dataset.ws : "";
  const secretUrl = (name) => `/api/secrets/${encodeURIComponent(name)}?ws_id=${encodeURIComponent(wsId)}`;

  // The workspace picker works without a button click too.
  const picker = $("[data-ws-picker]");
  if (picker) $("select", picker).addEventListener("change", () => picker.submit());

  function rowFor(name) {
    return $$("[data-secret-name]").find((tr) => tr.dataset.secretName === name) || null;
  }

  function newRow(item) {
    const tr = document.createElement("tr");
    tr.dataset.secretName = item.name;
    tr.dataset.test = "secret-row";
    const name = document.createElement("td");
    const code = document.createElement("code");
    code.textContent = item.name;
    code.dataset.test = "secret-row-name";
    name.append(code);
    const version = document.createElement("td");
    version.className = "num";
    version.dataset.test = "secret-row-version";
    const valueCell = document.createElement("td");
    valueCell.className = "secret-cell";
    const value = document.createElement("code");
    Object.assign(value, { className: "secret-value", hidden: true });
    Object.assign(value.dataset, { secretValue: "", test: "secret-value-shown" });
    valueCell.append(value);
    const buttons = document.createElement("td");
    buttons.className = "cell-actions";
    for (const [action, label, confirm] of [["secret-reveal", "Reveal"], ["secret-delete", "Delete", "Really delete?"]]) {
      const b = document.createElement("button");
      Object.assign(b, { type: "button", className: "btn btn-sm btn-quiet", textContent: label });
      Object.assign(b.dataset, { action, test: action });
      if (confirm) b.dataset.confirm = confirm;
      buttons.append(b);
    }
    tr.append(name, version, window.kf.timeCell(item.updated_at), valueCell, buttons);
    return tr;
  }

  function showRow(item) {
    const rows = $("[data-secret-rows]");
    let tr = rowFor(item.name);
    if (!tr) {
      tr = newRow(item);
      const after = $$("[data-secret-name]", rows).find((other) => other.dataset.secretName > item.name);
      rows.insertBefore(tr, after || $("[data-empty]", rows));
    } else {
      tr.replaceChild(window.kf.timeCell(item.updated_at), tr.children[2]);
      hideValue(tr);
    }
    $("[data-test=secret-row-version]", tr).textContent = String(item.version);
    $("[data-empty]", rows).hidden = true;
  }

  function hideValue(tr) {
    const value = $("[data-secret-value]", tr);
    value.textContent = "";
    value.hidden = true;
    const button = $("[data-action=secret-reveal]", tr);
    if (button) button.textContent = "Reveal";
  }

  const form = $("[data-secret-form]");
  if (form) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      if (form.getAttribute("aria-busy") === "true") return;
      clearMessages(form);
      const name = form.elements.name.value.trim();
      const submit = $("button[type=submit]", form);
      form.setAttribute("aria-busy", "true");
      submit.disabled = true;
      try {
        const result = await api("POST", secretUrl(name), { value: form.elements.value.value, ws_id: wsId });
        if (!result.ok) return showError(form, result.data.error);
        showRow(result.data);
        form.elements.value.value = "";
        say(form, "[data-form-ok]", result.status === 201
          ? `Saved ${result.data.name}.` : `Saved ${result.data.name} as version ${result.data.version}.`);
      } finally {
        form.removeAttribute("aria-busy");
        submit.disabled = false;
      }
    });
  }

  function listError(button, result) {
    const section = button.closest("section");
    clearMessages(section);
    showError(section, result.data.error, "[data-list-error]");
  }

  actions["secret-reveal"] = async (button) => {
    const tr = button.closest("tr");
    const value = $("[data-secret-value]", tr);
    if (!value.hidden) return hideValue(tr);
    const result = await api("GET", secretUrl(tr.dataset.secretName));
    if (!result.ok) return listError(button, result);
    value.textContent = result.data.value;
    value.hidden = false;
    button.textContent = "Hide";
  };

  actions["secret-delete"] = async (button) => {
    const tr = button.closest("tr");
    const result = await api("DELETE", secretUrl(tr.dataset.secretName));
    if (!result.ok) return listError(button, result);
    const rows = tr.parentElement;
    tr.remove();
    if (!$("[data-secret-name]", rows)) $("[data-empty]", rows).hidden = false;
  };

  // --- master key rotation (operators) ------------------------------------------------------------

  const rotation = $("[data-rotation]");

  function progress(done, total) {
    const row = $("[data-rotation-progress]", rotation);
    row.hidden = false;
    const bar = $("[data-rotation-bar]", rotation);
    bar.max = Math.max(total, 1);
    bar.value = total ? Math.min(done, total) : 1;
    $("[data-rotation-count]", rotation).textContent = `${done} / ${total}`;
  }

  function finished(button, end) {
    button.disabled = false;
    $("[data-rotation-phase]", rotation).textContent = end.status;
    if (end.status === "succeeded") {
      $("[data-test=key-version]", rotation).textContent = `v${end.key_version}`;
      const retired = (end.retired || []).map((v) => `v${v}`).join(", ");
      say(rotation, "[data-form-ok]", `Rotated to v${end.key_version}: ${end.rewrapped} data keys re-wrapped`
        + (retired ? `; retired ${retired}.` : "."));
    } else {
      say(rotation, "[data-list-error]", end.error || `The rotation ${end.status}.`);
    }
  }

  function follow(button, jobId) {
    const source = new EventSource(`/api/jobs/${encodeURIComponent(jobId)}/stream`);
    source.addEventListener("progress", (event) => {
      const data = JSON.parse(event.data);
      progress(data.done, data.total);
    });
    source.addEventListener("end", (event) => {
      source.close();
      const end = JSON.parse(event.data);
      if (end.total !== undefined) progress(end.rewrapped, end.total);
      finished(button, end);
    });
    source.onerror = () => {
      if (source.readyState !== EventSource.CLOSED) return; // reconnecting by itself
      button.disabled = false;
      say(rotation, "[data-list-error]", "Lost the progress stream; reload the page to see the result.");
    };
  }

  actions["secret-rotate"] = async (button) => {
    clearMessages(rotation);
    button.disabled = true;
    const result = await api("POST", "/api/secrets/rotate-master");
    if (!result.ok) {
      button.disabled = false;
      return listError(button, result);
    }
    const r = result.data;
    $("[data-test=key-version]", rotation).textContent = `v${r.key_version}`;
    $("[data-rotation-phase]", rotation).textContent = r.started ? "re-wrapping" : "already running";
    progress(r.rewrapped, r.total);
    if (r.job_id) follow(button, r.job_id);
    else button.disabled = false;
  };
})();

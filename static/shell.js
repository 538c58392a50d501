/* shell.js: the project's shell page. Builds on kf.js (window.kf); plain JS.
 *
 * Run, Run tests and Run on host POST to /api/shell/run, /api/shell/test and /api/shell/ssh-run through
 * one function (startJob), take the job id from the X-Job-ID header and then follow the job with
 * EventSource on /api/jobs/<id>/stream, which reconnects by itself (Last-Event-ID) and resumes right
 * after the last event shown. Cancel posts /api/shell/cancel/<id>. Pull a file posts
 * /api/shell/ssh-pull; Suggest posts /api/shell/suggest and only ever fills the command box.
 */
(() => {
  "use strict";

  const { $, $$, api, csrfToken, clearMessages, showError, textCell, timeCell, actions } = window.kf;

  const page = $("[data-shell]");
  if (!page) return;
  const projectId = page.dataset.project;

  const card = $("[data-output-card]");
  const output = $("[data-output]");
  const statusBadge = $("[data-output-status]");
  const cancelButton = $("[data-action=shell-cancel]");
  const results = $("[data-test-results]");
  const MAX_OUTPUT_CHARS = 2_000_000; // the page keeps the newest output; the job keeps all of it

  let current = null; // {jobId, source}

  function setStatus(text, tone) {
    statusBadge.textContent = text;
    statusBadge.className = "badge" + (tone ? ` badge-${tone}` : "");
  }

  function append(stream, text) {
    const atBottom = output.scrollHeight - output.scrollTop - output.clientHeight < 24;
    const last = output.lastElementChild;
    if (last && last.dataset.stream === stream) {
      last.textContent += text;
    } else {
      const span = document.createElement("span");
      span.dataset.stream = stream;
      span.className = `out-${stream}`;
      span.textContent = text;
      output.append(span);
    }
    while (output.textContent.length > MAX_OUTPUT_CHARS && output.firstElementChild) output.firstElementChild.remove();
    if (atBottom) output.scrollTop = output.scrollHeight;
  }

  function resetOutput(command, kind) {
    card.hidden = false;
    output.replaceChildren();
    $("[data-output-command]").textContent = command || "";
    $("[data-output-summary]").textContent = "";
    $("[data-output-truncated]").hidden = true;
    const error = $("[data-output-error]");
    error.hidden = true;
    error.textContent = "";
    results.hidden = true;
    results.dataset.kind = kind || "shell";
    setStatus("starting");
  }

  function showTestResults(end) {
    results.hidden = false;
    const counts = ["passed", "failed", "errors", "skipped"];
    $('[data-count="runner"]', results).textContent = end.runner || "—";
    for (const name of counts) {
      $(`[data-count="${name}"]`, results).textContent = end[name] === null || end[name] === undefined ? "—" : end[name];
    }
    $("[data-no-counts]", results).hidden = end.passed !== null && end.passed !== undefined;
    const rows = $("[data-failure-rows]", results);
    rows.replaceChildren();
    for (const failure of end.failures || []) {
      const tr = document.createElement("tr");
      tr.dataset.test = "failure-row";
      const where = failure.path ? `${failure.path}${failure.line ? ":" + failure.line : ""}` : "—";
      const whereCell = textCell(where, true);
      whereCell.className = "where";
      const message = document.createElement("td");
      const pre = document.createElement("pre");
      pre.className = "failure-message";
      pre.textContent = failure.message;
      message.append(pre);
      tr.append(textCell(failure.name, true), whereCell, message);
      rows.append(tr);
    }
    $("[data-failures-wrap]", results).hidden = !(end.failures || []).length;
  }

  function showEnd(end) {
    const tone = { succeeded: "ok", failed: "error", cancelled: "warn" }[end.status];
    const exit = end.exit_code === null || end.exit_code === undefined ? (end.signal || "no exit code") : `exit ${end.exit_code}`;
    setStatus(`${end.status} · ${exit}`, tone);
    const parts = [];
    if (end.duration_ms !== undefined) parts.push(`${end.duration_ms} ms`);
    if (end.output_bytes !== undefined) parts.push(`${end.output_bytes} bytes of output`);
    if (end.timed_out) parts.push("timed out");
    $("[data-output-summary]").textContent = parts.join(" · ");
    if (end.error) {
      const error = $("[data-output-error]");
      error.textContent = end.error;
      error.hidden = false;
    }
    if (end.runner !== undefined) showTestResults(end);
    if (cancelButton) cancelButton.hidden = true;
  }

  function stopFollowing() {
    if (current && current.source) current.source.close();
    current = null;
  }

  /** What the output panel calls a command: an ssh job's names its host. */
  function commandLabel(command, host) {
    return host ? `${host}: ${command || ""}` : (command || "");
  }

  /** Shows a job's events from the first one (or resumes after the last seen) until its `end`. */
  function follow(jobId, command, kind) {
    stopFollowing();
    resetOutput(command, kind);
    const source = new EventSource(`/api/jobs/${encodeURIComponent(jobId)}/stream`);
    current = { jobId, source };
    card.dataset.jobId = jobId;
    if (cancelButton) { cancelButton.hidden = false; cancelButton.disabled = false; }
    const on = (type, handler) => source.addEventListener(type, (event) => {
      if (!current || current.source !== source) return;
      handler(JSON.parse(event.data));
    });
    on("job", (data) => { $("[data-output-command]").textContent = commandLabel(data.command, data.host); });
    on("status", (data) => setStatus(data.status));
    on("stdout", (data) => append("stdout", data.text));
    on("stderr", (data) => append("stderr", data.text));
    on("truncated", (data) => {
      const note = $("[data-output-truncated]");
      note.textContent = data.message;
      note.hidden = false;
    });
    on("end", (data) => {
      source.close();
      showEnd(data);
      current = null;
      refreshLists();
    });
    source.addEventListener("error", () => {
      if (source.readyState !== EventSource.CLOSED || !current || current.source !== source) return;
      const error = $("[data-output-error]");
      error.textContent = "Lost the output stream; reload the page to see the result.";
      error.hidden = false;
    });
  }

  /** The one way a job starts from this page (local run, tests, ssh-run): POSTs `body` (plus the
   * project) to `url`, whose answer is the job's stream, of which only the X-Job-ID header is read; the
   * job is then followed on /api/jobs/<id>/stream. Errors go next to `form`'s fields. */
  async function startJob(form, url, body, kind) {
    clearMessages(form);
    const buttons = $$("button[type=submit]", form);
    for (const b of buttons) b.disabled = true;
    const controller = new AbortController();
    try {
      let response;
      try {
        response = await fetch(url, {
          method: "POST",
          credentials: "same-origin",
          signal: controller.signal,
          headers: { Accept: "application/json", "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
          body: JSON.stringify({ project_id: projectId, ...body }),
        });
      } catch (_) {
        showError(form, { code: "network", message: "Could not reach kf. Check your connection and try again." });
        return null;
      }
      if (!response.ok) {
        const data = await response.json().catch(() => null);
        showError(form, (data && data.error) || { code: "http", message: `kf answered ${response.status}.` });
        return null;
      }
      const jobId = response.headers.get("X-Job-ID");
      controller.abort(); // the job runs on; EventSource follows it
      follow(jobId, commandLabel(body.command, body.host), kind);
      refreshLists();
      return jobId;
    } finally {
      for (const b of buttons) b.disabled = false;
    }
  }

  const runForm = $("[data-run-form]");
  if (runForm) {
    runForm.addEventListener("submit", (event) => {
      event.preventDefault();
      const body = { command: runForm.elements.command.value };
      const cwd = runForm.elements.cwd.value.trim();
      if (cwd) body.cwd = cwd;
      const timeout = runForm.elements.timeout_s.value;
      if (timeout !== "") body.timeout_s = Number(timeout);
      const secrets = $$("input[name=secrets]:checked", runForm).map((el) => el.value);
      if (secrets.length) body.secrets = secrets;
      startJob(runForm, "/api/shell/run", body, "shell");
    });
  }

  const testForm = $("[data-test-form]");
  if (testForm) {
    testForm.addEventListener("submit", (event) => {
      event.preventDefault();
      const body = {};
      if (testForm.elements.runner.value) body.runner = testForm.elements.runner.value;
      if (testForm.elements.args.value.trim()) body.args = testForm.elements.args.value;
      startJob(testForm, "/api/shell/test", body, "test");
    });
  }

  const sshRunForm = $("[data-ssh-run-form]");
  if (sshRunForm) {
    sshRunForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      const body = { host: sshRunForm.elements.host.value, command: sshRunForm.elements.command.value };
      // The output panel is above this form: bring it into view once the job started.
      if (await startJob(sshRunForm, "/api/shell/ssh-run", body, "ssh")) card.scrollIntoView({ block: "start" });
    });
  }

  // --- pull a file ----------------------------------------------------------------------------------

  const pullForm = $("[data-ssh-pull-form]");
  if (pullForm) {
    pullForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      if (pullForm.getAttribute("aria-busy") === "true") return;
      const box = $("[data-pull-result]", pullForm);
      box.hidden = true;
      clearMessages(pullForm);
      pullForm.setAttribute("aria-busy", "true");
      const button = $("button[type=submit]", pullForm);
      button.disabled = true;
      try {
        const { host, remote_path: remote, path } = pullForm.elements;
        const result = await api("POST", "/api/shell/ssh-pull",
          { project_id: projectId, host: host.value, remote_path: remote.value, path: path.value });
        if (!result.ok) {
          showError(pullForm, result.data.error);
          return;
        }
        for (const name of ["path", "size", "sha256"]) $(`[data-pull="${name}"]`, box).textContent = String(result.data[name]);
        $("[data-pull-verb]", box).textContent = result.data.replaced ? "Replaced" : "Saved";
        box.hidden = false;
      } finally {
        pullForm.removeAttribute("aria-busy");
        button.disabled = false;
      }
    });
  }

  // --- suggest a command ----------------------------------------------------------------------------

  const suggestForm = $("[data-suggest-form]");
  const suggestion = $("[data-suggestion]");
  if (suggestForm) {
    suggestForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      if (suggestForm.getAttribute("aria-busy") === "true") return;
      suggestion.hidden = true; // never leave an old answer under a new question
      clearMessages(suggestForm);
      suggestForm.setAttribute("aria-busy", "true");
      const button = $("button[type=submit]", suggestForm);
      button.disabled = true;
      button.textContent = "Asking the model…";
      try {
        const result = await api("POST", "/api/shell/suggest",
          { project_id: projectId, prompt: suggestForm.elements.prompt.value });
        if (!result.ok) {
          showError(suggestForm, result.data.error);
          return;
        }
        $("[data-suggested-command]", suggestion).textContent = result.data.command;
        $("[data-suggested-explanation]", suggestion).textContent = result.data.explanation;
        $("[data-suggested-model]", suggestion).textContent = result.data.model;
        suggestion.hidden = false;
      } finally {
        suggestForm.removeAttribute("aria-busy");
        button.disabled = false;
        button.textContent = "Suggest";
      }
    });
    // Ctrl+Enter (⌘+Enter) asks, as in most prompt boxes; Enter alone is a new line.
    suggestForm.elements.prompt.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        suggestForm.requestSubmit();
      }
    });
  }

  /** Copies the suggestion into the command box; running it stays the user's decision. */
  actions["shell-use-suggestion"] = () => {
    if (!runForm) return;
    const box = runForm.elements.command;
    box.value = $("[data-suggested-command]", suggestion).textContent;
    box.scrollIntoView({ block: "center" });
    box.focus();
  };

  actions["shell-cancel"] = async (button) => {
    const jobId = card.dataset.jobId;
    if (!jobId) return;
    button.disabled = true;
    setStatus("cancelling", "warn");
    const result = await api("POST", `/api/shell/cancel/${encodeURIComponent(jobId)}`);
    if (!result.ok) {
      button.disabled = false;
      const error = $("[data-output-error]");
      error.textContent = result.data.error.message;
      error.hidden = false;
    }
  };

  actions["shell-follow"] = (button) => {
    follow(button.dataset.jobId, button.dataset.command, button.dataset.kind);
    card.scrollIntoView({ block: "start" });
  };

  actions["shell-reuse"] = (button) => {
    if (!runForm) return;
    runForm.elements.command.value = button.dataset.command;
    runForm.elements.command.focus();
  };

  // --- the lists ----------------------------------------------------------------------------------

  function actionButton(action, label, job, testId) {
    const button = document.createElement("button");
    Object.assign(button, { type: "button", className: "btn btn-sm btn-quiet", textContent: label });
    Object.assign(button.dataset, { action, jobId: job.job_id || job.id, command: job.command, kind: job.kind, test: testId });
    return button;
  }

  function badge(status) {
    const span = document.createElement("span");
    const tone = { succeeded: "badge-ok", failed: "badge-error", cancelled: "badge-warn" }[status];
    span.className = "badge" + (tone ? ` ${tone}` : "");
    span.textContent = status;
    return span;
  }

  async function refreshRecent() {
    const result = await api("GET", `/api/shell/recent?project_id=${encodeURIComponent(projectId)}&limit=20`);
    if (!result.ok) return;
    const rows = $("[data-recent-rows]");
    const empty = $("[data-empty]", rows);
    for (const row of $$("tr[data-job-id]", rows)) row.remove();
    for (const item of result.data.items) {
      const tr = document.createElement("tr");
      tr.dataset.test = "recent-row";
      tr.dataset.jobId = item.job_id;
      const command = textCell(item.command, true);
      command.firstChild.dataset.test = "recent-command";
      if (item.kind === "test") {
        const tag = document.createElement("span");
        tag.className = "badge";
        tag.textContent = "tests";
        command.append(" ", tag);
      }
      const exit = textCell(item.exit_code === null ? "—" : String(item.exit_code));
      exit.className = "num";
      exit.dataset.test = "recent-exit";
      const status = document.createElement("td");
      status.append(badge(item.status));
      const cell = document.createElement("td");
      cell.className = "cell-actions";
      cell.append(actionButton("shell-follow", "Show", item, "recent-show"));
      if (runForm && item.kind === "shell") cell.append(actionButton("shell-reuse", "Use", item, "recent-reuse"));
      tr.append(command, exit, status, timeCell(item.at, 19), cell);
      rows.insertBefore(tr, empty);
    }
    empty.hidden = result.data.items.length > 0;
  }

  async function refreshRunning() {
    const result = await api("GET", `/api/shell/jobs?project_id=${encodeURIComponent(projectId)}`);
    if (!result.ok) return;
    const rows = $("[data-running-rows]");
    const empty = $("[data-empty]", rows);
    for (const row of $$("tr[data-job-id]", rows)) row.remove();
    for (const item of result.data.items) {
      const tr = document.createElement("tr");
      tr.dataset.test = "running-row";
      tr.dataset.jobId = item.id;
      const cell = document.createElement("td");
      cell.className = "cell-actions";
      cell.append(actionButton("shell-follow", "Show", item, "running-follow"));
      tr.append(textCell(item.command, true), textCell(item.kind), item.started_at ? timeCell(item.started_at, 19)
        : textCell("queued"), cell);
      rows.insertBefore(tr, empty);
    }
    empty.hidden = result.data.items.length > 0;
  }

  function refreshLists() {
    refreshRecent();
    refreshRunning();
  }
})();

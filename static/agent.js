/* agent.js: the agent pages. Builds on kf.js (window.kf); plain JS.
 *
 * /projects/<id>/agent: Start POSTs /api/agent/run (a streaming fetch), takes the run id from the
 * X-Run-ID header or the first `run` event, aborts the fetch (the run goes on without it), puts
 * /agent/runs/<id> in the address bar and follows the run. A run already in flight when the page
 * opens is followed at once (the server put its id on the run card).
 * /agent/runs/<id>: the same run card. Following is an EventSource on /api/agent/follow?run_id=…,
 * from the first event, so a finished run replays its whole log and a running one catches up and
 * goes on live; EventSource reconnects by itself with Last-Event-ID, and events already shown are
 * skipped by their seq. Cancel and Roll back (with "roll back anyway" after a 409) post to the API.
 * Everything the model or the project wrote is put in the page with textContent, never as markup.
 */
(() => {
  "use strict";

  const { $, $$, api, csrfToken, clearMessages, showError, actions } = window.kf;

  const page = $("[data-agent]");
  if (!page) return;
  const projectId = page.dataset.project;
  const card = $("[data-run-card]");
  const transcript = $("[data-transcript]", card);
  const statusBadge = $("[data-run-status]", card);
  const cancelButton = $("[data-action=agent-cancel]", card);
  const rollbackButton = $("[data-action=agent-rollback]", card);
  const FINAL = ["succeeded", "failed", "cancelled", "budget_exceeded"];
  const TONES = { succeeded: "ok", failed: "error", cancelled: "warn", budget_exceeded: "warn", running: "live" };
  const RESULT_PREVIEW_CHARS = 20_000; // a tool result longer than this shows its start, with "show all"

  // What the card shows: one run at a time. seq is the last event shown (reconnects skip up to it).
  let current = null; // {runId, source, seq, message: {step, li, text} | null, tools: Map, ended, run}

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  // A run's status only moves forward (queued → running → an end): an answer to GET /api/agent/runs/<id>
  // sent before the worker started can arrive after the live `status` event and must not undo it.
  const STATUS_RANK = { queued: 0, running: 1 };
  const rankOf = (status) => STATUS_RANK[status] ?? 2;

  function setStatus(status) {
    if (current) {
      if (current.statusRank !== undefined && rankOf(status) < current.statusRank) return;
      current.statusRank = rankOf(status);
    }
    statusBadge.textContent = status;
    statusBadge.dataset.status = status;
    statusBadge.className = "badge" + (TONES[status] ? ` badge-${TONES[status]}` : "");
  }

  function setField(name, text) {
    const dd = $(`[data-run-field="${name}"]`, card);
    dd.textContent = text;
    dd.title = text;
  }

  const money = (usd) => (usd === null || usd === undefined ? "" : `$${usd}`);

  function showRunError(message) {
    const box = $("[data-run-error]", card);
    box.textContent = message;
    box.hidden = !message;
  }

  /** The header from GET /api/agent/runs/<id> (or the same fields of the run's events). */
  function showRun(run) {
    if (run.task !== undefined) $("[data-run-task]", card).textContent = run.task;
    if (run.status) setStatus(run.status);
    if (run.model !== undefined) setField("model", run.model || "—");
    if (run.steps !== undefined) setField("steps", `${run.steps} / ${run.max_steps}`);
    if (run.usd !== undefined) {
      setField("usd", money(run.usd) + (run.max_cost_usd !== null && run.max_cost_usd !== undefined
        ? ` / ${money(run.max_cost_usd)}` : ""));
    }
    if (run.input_tokens !== undefined) setField("tokens", `${run.input_tokens} · ${run.output_tokens}`);
    if (run.files_changed !== undefined) setField("files_changed", String(run.files_changed));
    if (run.status) {
      const finished = FINAL.includes(run.status);
      if (cancelButton) cancelButton.hidden = finished;
      if (rollbackButton) rollbackButton.hidden = !(finished && run.can_rollback);
    }
    updateRow(run);
  }

  /** The run's row in "Recent runs" (the project page), kept in step with the card. */
  function updateRow(run) {
    const row = current && $(`[data-run-id="${CSS.escape(current.runId)}"]`, page);
    if (!row) return;
    const cells = { steps: run.steps, usd: run.usd, files_changed: run.files_changed };
    for (const [name, value] of Object.entries(cells)) {
      const cell = $(`[data-row-field="${name}"]`, row);
      if (cell && value !== undefined) cell.textContent = String(value);
    }
    const badge = $("[data-test=run-row-status]", row);
    if (badge && run.status) {
      badge.textContent = run.status;
      badge.className = "badge" + (TONES[run.status] ? ` badge-${TONES[run.status]}` : "");
    }
  }

  const pause = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

  /** Reads the run again. After its `end` event, until the row says it ended too (the final numbers
   * and can_rollback come with that); an older answer never undoes what `end` showed. */
  async function refreshRun(runId) {
    for (let attempt = 0; attempt < 20; attempt += 1) {
      const result = await api("GET", `/api/agent/runs/${encodeURIComponent(runId)}`);
      if (!current || current.runId !== runId) return;
      if (!result.ok) {
        showRunError(result.data.error.message);
        return;
      }
      const finished = FINAL.includes(result.data.status);
      if (finished || !current.ended) {
        current.run = result.data;
        showRun(result.data);
      }
      if (finished || !current.ended) return;
      await pause(250);
    }
  }

  // --- the transcript ------------------------------------------------------------------------------

  function entry(kind, testId) {
    const li = el("li", `t-entry t-${kind}`);
    li.dataset.test = testId;
    transcript.append(li);
    $("[data-transcript-waiting]", card).hidden = true;
    return li;
  }

  function label(text) {
    return el("p", "t-label", text);
  }

  /** The assistant's text of one step: deltas grow it, the closing `done` event replaces it whole. */
  function messageEntry(step) {
    const open = current.message;
    if (open && open.step === step) return open;
    const li = entry("message", "assistant-message");
    li.dataset.step = String(step);
    li.append(label(`Assistant · step ${step}`));
    const text = el("div", "t-text");
    text.dataset.test = "assistant-text";
    li.append(text);
    current.message = { step, li, text };
    return current.message;
  }

  function onMessage(data) {
    if (data.done) {
      const open = current.message && current.message.step === data.step ? current.message : null;
      const text = data.text || "";
      if (!text) {
        if (open) open.li.remove(); // a turn that only called tools
      } else {
        (open || messageEntry(data.step)).text.textContent = text;
      }
      current.message = null;
      return;
    }
    if (data.delta) messageEntry(data.step).text.textContent += data.delta;
  }

  /** One line saying what a tool call is about: its path, command or query, else its first argument. */
  function callSummary(args) {
    if (!args || typeof args !== "object") return "";
    if (args._raw !== undefined) return String(args._raw);
    for (const key of ["path", "command", "query", "q", "pattern", "name", "url"]) {
      if (typeof args[key] === "string" && args[key]) return args[key];
    }
    const first = Object.values(args)[0];
    if (first === undefined) return "";
    return typeof first === "string" ? first : JSON.stringify(first);
  }

  function pretty(value) {
    if (typeof value === "string") return value;
    return JSON.stringify(value, null, 2);
  }

  function block(text, className, testId) {
    const pre = el("pre", `t-pre ${className || ""}`.trim(), text);
    if (testId) pre.dataset.test = testId;
    return pre;
  }

  function onToolCall(data) {
    current.message = null;
    const li = entry("tool", "tool-call");
    li.dataset.callId = data.id;
    const details = el("details", "t-tool-details");
    const summary = el("summary", "t-tool-summary");
    summary.dataset.test = "tool-toggle";
    const name = el("code", "t-tool-name", data.name);
    name.dataset.test = "tool-name";
    const line = el("span", "t-tool-line", callSummary(data.arguments));
    line.dataset.test = "tool-summary";
    const state = el("span", "badge badge-live", "running");
    state.dataset.test = "tool-state";
    summary.append(name, line, state);
    details.append(summary, label("Arguments"), block(pretty(data.arguments), "", "tool-arguments"));
    const result = el("div", "t-tool-result");
    result.dataset.test = "tool-result";
    details.append(result);
    li.append(details);
    current.tools.set(data.id, { li, state, result });
  }

  /** A long result shows its start; the rest is one click away (the page stays light). */
  function resultBlock(content) {
    const text = content || "";
    if (text.length <= RESULT_PREVIEW_CHARS) return block(text || "(no output)", "", "tool-content");
    const pre = block(text.slice(0, RESULT_PREVIEW_CHARS) + "\n…", "", "tool-content");
    const more = el("button", "btn btn-sm btn-quiet", `Show all ${text.length} characters`);
    more.type = "button";
    more.addEventListener("click", () => { pre.textContent = text; more.remove(); });
    const wrap = el("div");
    wrap.append(pre, more);
    return wrap;
  }

  function onToolResult(data) {
    let tool = current.tools.get(data.id);
    if (!tool) {
      onToolCall({ id: data.id, name: data.name, arguments: {} });
      tool = current.tools.get(data.id);
    }
    tool.state.textContent = data.ok ? "ok" : "error";
    tool.state.className = `badge ${data.ok ? "badge-ok" : "badge-error"}`;
    tool.li.classList.toggle("t-tool-failed", !data.ok);
    tool.result.textContent = "";
    tool.result.append(label(data.ok ? "Result" : "Error"), resultBlock(data.content));
    if (data.data && typeof data.data === "object" && Object.keys(data.data).length) {
      const more = el("details", "t-data");
      more.append(el("summary", "", "Data"), block(pretty(data.data)));
      tool.result.append(more);
    }
  }

  /** A unified diff, one line element per line, coloured by its first character. */
  function diffBlock(diff) {
    const pre = el("pre", "t-pre diff");
    pre.dataset.test = "diff";
    const lines = (diff || "").split("\n");
    if (lines.length && lines[lines.length - 1] === "") lines.pop();
    for (const text of lines) {
      let kind = "ctx";
      if (text.startsWith("+++") || text.startsWith("---") || text.startsWith("diff ") || text.startsWith("\\")) kind = "meta";
      else if (text.startsWith("@@")) kind = "hunk";
      else if (text.startsWith("+")) kind = "add";
      else if (text.startsWith("-")) kind = "del";
      const span = el("span", `diff-line diff-${kind}`, text);
      span.dataset.test = `diff-${kind}`;
      pre.append(span);
    }
    return pre;
  }

  function onFileChanged(data) {
    current.message = null;
    const li = entry("file", "file-change");
    const head = el("p", "t-file-head");
    const path = el("code", "t-file-path", data.path);
    path.dataset.test = "file-path";
    // `change` names it; events of the write tools that only say `created` mean added or modified.
    const kind = data.change || (data.created === true ? "added" : data.created === false ? "modified" : "changed");
    const change = el("span", `badge ${{ added: "badge-ok", deleted: "badge-error" }[kind] || ""}`.trim(), kind);
    change.dataset.test = "file-change-kind";
    head.append(change, path);
    li.append(head);
    if (data.diff) li.append(diffBlock(data.diff));
    else li.append(el("p", "muted small", "No text diff (a binary file, or no change in text)."));
    if (data.diff_truncated) li.append(el("p", "muted small", "The diff is cut short here; the file on disk has the rest."));
  }

  function onSnapshot(data) {
    const li = entry("note", "snapshot");
    const when = data.kind === "before" ? "before the first change" : "after the run";
    li.append(el("span", "t-note-label", "Snapshot"), ` of the files ${when}: `, el("code", "", data.snapshot_id));
  }

  function onFinding(data) {
    const li = entry("finding", "finding");
    const tone = { error: "badge-error", high: "badge-error", warning: "badge-warn", medium: "badge-warn" }[data.severity];
    li.append(el("span", `badge ${tone || ""}`.trim(), data.severity), " ",
      el("code", "", `${data.path}${data.line ? `:${data.line}` : ""}`), " ",
      el("span", "muted small", data.rule), " ", el("span", "", data.message));
  }

  function onRetry(data) {
    const li = entry("note t-warn", "retry");
    li.append(el("span", "t-note-label", `Retry ${data.attempt}`),
      ` in ${Number(data.wait_seconds).toFixed(1)} s: `, el("span", "", data.message));
  }

  function pathList(paths, into) {
    into.textContent = "";
    for (const p of paths || []) into.append(el("li", "mono small", p));
  }

  function onAutoRollback(data) {
    const li = entry("note t-warn", "auto-rollback");
    const paths = data.paths || [];
    li.append(el("span", "t-note-label", "Rolled back"),
      `${data.automatic === false ? "" : " automatically"} to snapshot `, el("code", "", data.snapshot_id), `: ${paths.length} file${paths.length === 1 ? "" : "s"} restored.`);
    if (paths.length) {
      const ul = el("ul", "path-list");
      pathList(paths, ul);
      li.append(ul);
    }
  }

  function onCost(data) {
    const run = current.run || {};
    Object.assign(run, { input_tokens: data.input_tokens, output_tokens: data.output_tokens, usd: data.usd });
    setField("tokens", `${data.input_tokens} · ${data.output_tokens}`);
    setField("usd", money(data.usd) + (run.max_cost_usd ? ` / ${money(run.max_cost_usd)}` : ""));
  }

  function onEnd(data) {
    current.message = null;
    current.ended = true;
    const li = entry("end", "run-end");
    const status = el("span", `badge${TONES[data.status] ? ` badge-${TONES[data.status]}` : ""}`, data.status);
    status.dataset.test = "end-status";
    const parts = [];
    if (data.steps !== undefined) parts.push(`${data.steps} step${data.steps === 1 ? "" : "s"}`);
    if (data.usd !== undefined) parts.push(money(data.usd));
    if (data.files_changed !== undefined) parts.push(`${data.files_changed} file${data.files_changed === 1 ? "" : "s"} changed`);
    li.append(el("span", "t-note-label", "Ended"), " ", status, " ", el("span", "muted small", parts.join(" · ")));
    if (data.error) {
      const error = el("p", "t-end-error", data.error);
      error.dataset.test = "end-error";
      li.append(error);
    }
    setStatus(data.status);
    if (data.steps !== undefined) setField("steps", `${data.steps} / ${(current.run || {}).max_steps ?? "?"}`);
    if (data.files_changed !== undefined) setField("files_changed", String(data.files_changed));
    if (data.input_tokens !== undefined) setField("tokens", `${data.input_tokens} · ${data.output_tokens}`);
    if (cancelButton) cancelButton.hidden = true;
    refreshRun(current.runId); // the final numbers, and whether it can be rolled back
  }

  const HANDLERS = {
    run(data) {
      current.run = Object.assign(current.run || {}, data);
      showRun({ task: data.task, model: data.model });
      if (data.max_steps !== undefined) setField("steps", `0 / ${data.max_steps}`);
    },
    status(data) {
      if (!current.ended) setStatus(data.status);
      $("[data-transcript-waiting]", card).hidden = data.status !== "running" || transcript.children.length > 0;
    },
    message: onMessage,
    tool_call: onToolCall,
    tool_result: onToolResult,
    file_changed: onFileChanged,
    snapshot: onSnapshot,
    cost: onCost,
    finding: onFinding,
    retry: onRetry,
    rollback: onAutoRollback,
    end: onEnd,
  };

  function stopFollowing() {
    if (current && current.source) current.source.close();
    current = null;
  }

  /** Shows run `runId` in the card: its header now, then every event of its log from the first. */
  function follow(runId, run) {
    stopFollowing();
    current = { runId, source: null, seq: 0, message: null, tools: new Map(), ended: false, run: run || null };
    card.hidden = false;
    card.dataset.run = runId;
    transcript.textContent = "";
    showRunError("");
    for (const box of $$("[data-rollback-conflict], [data-rollback-done]", card)) box.hidden = true;
    const linkEl = $("[data-run-link]", card);
    linkEl.href = `/agent/runs/${encodeURIComponent(runId)}`;
    linkEl.textContent = runId;
    if (run) showRun(run);
    refreshRun(runId);

    const source = new EventSource(`/api/agent/follow?run_id=${encodeURIComponent(runId)}`);
    const mine = current;
    mine.source = source;
    for (const [type, handler] of Object.entries(HANDLERS)) {
      source.addEventListener(type, (event) => {
        if (current !== mine) return;
        const seq = Number(event.lastEventId) || 0;
        if (seq && seq <= mine.seq) return; // already shown before a reconnect
        if (seq) mine.seq = seq;
        if (type === "end") source.close();
        handler(JSON.parse(event.data));
      });
    }
    source.addEventListener("error", () => {
      // EventSource retries by itself while the connection can be re-made; CLOSED means it gave up
      // (e.g. the follow endpoint answered with an error instead of a stream).
      if (current !== mine || mine.ended || source.readyState !== EventSource.CLOSED) return;
      showRunError("Lost the run's event stream; reload the page to see where it is.");
    });
  }

  // --- starting a run ------------------------------------------------------------------------------

  /** The run id of a POST /api/agent/run answer: its X-Run-ID header, else its first event's data. */
  async function runIdOf(response) {
    const fromHeader = response.headers.get("X-Run-ID");
    if (fromHeader) return fromHeader;
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return null;
      buffer += decoder.decode(value, { stream: true });
      for (const chunk of buffer.split("\n\n").slice(0, -1)) {
        const data = chunk.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
        if (data) return JSON.parse(data).run_id || null;
      }
    }
  }

  function runBody(form) {
    const { task, model, max_steps: maxSteps, max_cost_usd: maxCost } = form.elements;
    const body = { project_id: projectId, task: task.value };
    if (model.value.trim()) body.model = model.value.trim();
    if (maxSteps.value !== "") body.max_steps = Number(maxSteps.value);
    if (maxCost.value !== "") body.max_cost_usd = maxCost.value; // a decimal string: exact, as the API keeps it
    return body;
  }

  async function startRun(form) {
    if (form.getAttribute("aria-busy") === "true") return;
    clearMessages(form);
    form.setAttribute("aria-busy", "true");
    const button = $("button[type=submit]", form);
    button.disabled = true;
    const controller = new AbortController();
    try {
      let response;
      try {
        response = await fetch("/api/agent/run", {
          method: "POST",
          credentials: "same-origin",
          signal: controller.signal,
          headers: { Accept: "application/json", "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
          body: JSON.stringify(runBody(form)),
        });
      } catch (_) {
        showError(form, { code: "network", message: "Could not reach kf. Check your connection and try again." });
        return;
      }
      if (!response.ok) {
        const data = await response.json().catch(() => null);
        const error = (data && data.error) || { code: "http", message: `kf answered ${response.status}.` };
        showError(form, error);
        // The project already has a run in flight: show that one rather than nothing.
        const other = error.code === "conflict" && error.details && error.details.run_id;
        if (other && !(current && current.runId === other)) follow(other);
        return;
      }
      const runId = await runIdOf(response);
      controller.abort(); // the run goes on; EventSource follows it
      if (!runId) {
        showError(form, { code: "http", message: "kf started no run (its answer named none)." });
        return;
      }
      // The address is now the run's own page, so a reload or a shared link shows this run.
      history.replaceState(null, "", `/agent/runs/${encodeURIComponent(runId)}`);
      $("[data-start-card]").hidden = true;
      follow(runId);
      card.scrollIntoView({ block: "start" });
    } finally {
      form.removeAttribute("aria-busy");
      button.disabled = false;
    }
  }

  const runForm = $("[data-run-form]");
  if (runForm) {
    runForm.addEventListener("submit", (event) => {
      event.preventDefault();
      startRun(runForm);
    });
    // The cost estimate, before anything starts: asked again when the task, model or step limit
    // settles (400 ms after the last key), answered by POST /api/budget/estimate.
    const estimateLine = $("[data-estimate]", runForm);
    let estimateTimer = null;
    let estimateAsked = 0;
    const estimate = async () => {
      const body = runBody(runForm);
      if (!body.task.trim()) {
        estimateLine.hidden = true;
        return;
      }
      const asked = ++estimateAsked;
      const result = await api("POST", "/api/budget/estimate", {
        task: body.task, project_id: projectId, model: body.model,
        max_steps: body.max_steps || Number(estimateLine.dataset.defaultSteps) || undefined,
      });
      if (asked !== estimateAsked) return; // an older answer
      estimateLine.hidden = false;
      if (!result.ok) {
        estimateLine.textContent = `No estimate: ${result.data.error.message}`;
        return;
      }
      const e = result.data;
      const left = e.remaining_today_usd === null ? "no daily cap"
        : `${money(e.remaining_today_usd)} left today`;
      estimateLine.textContent = `Estimate for ${e.model}: about ${money(e.usd_expected)} `
        + `(${money(e.usd_low)} – ${money(e.usd_high)}; ${e.input_tokens} tokens in, ${e.output_tokens} out) · `
        + `${left} · prices: ${e.pricing_source}`;
    };
    for (const name of ["task", "model", "max_steps"]) {
      runForm.elements[name].addEventListener("input", () => {
        clearTimeout(estimateTimer);
        estimateTimer = setTimeout(estimate, 400);
      });
    }
    // Ctrl+Enter (⌘+Enter) starts, as in most prompt boxes; Enter alone is a new line.
    runForm.elements.task.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        runForm.requestSubmit();
      }
    });
  }

  // --- cancel and roll back ------------------------------------------------------------------------

  actions["agent-cancel"] = async (button) => {
    if (!current) return;
    button.disabled = true;
    const result = await api("POST", `/api/agent/cancel/${encodeURIComponent(current.runId)}`);
    button.disabled = false;
    if (result.ok) {
      if (!current.ended) setStatus("cancelling");
      button.hidden = true; // the `end` event follows within seconds
    } else {
      showRunError(result.data.error.message);
      if (result.data.error.code === "conflict") button.hidden = true; // it had already ended
    }
  };

  async function rollback(force) {
    if (!current) return;
    const runId = current.runId;
    const conflict = $("[data-rollback-conflict]", card);
    const done = $("[data-rollback-done]", card);
    showRunError("");
    const body = { run_id: runId };
    if (force) body.force = true;
    const result = await api("POST", "/api/agent/rollback", body);
    if (!current || current.runId !== runId) return;
    if (result.ok) {
      conflict.hidden = true;
      const paths = result.data.paths || [];
      $("[data-rollback-done-message]", done).textContent =
        `Rolled back to snapshot ${result.data.snapshot_id}: ${paths.length} file${paths.length === 1 ? "" : "s"} restored.`;
      pathList(paths, $("[data-rollback-done-paths]", done));
      done.hidden = false;
      rollbackButton.hidden = true;
      return;
    }
    const error = result.data.error;
    if (error.code === "conflict" && error.details && Array.isArray(error.details.paths)) {
      $("[data-rollback-conflict-message]", conflict).textContent = error.message;
      pathList(error.details.paths, $("[data-rollback-conflict-paths]", conflict));
      conflict.hidden = false;
      return;
    }
    showRunError(error.message);
  }

  actions["agent-rollback"] = () => rollback(false);
  actions["agent-rollback-force"] = () => rollback(true);
  actions["agent-rollback-dismiss"] = () => { $("[data-rollback-conflict]", card).hidden = true; };

  // The run page, or a project page whose project has a run in flight.
  if (card.dataset.run) follow(card.dataset.run);
})();

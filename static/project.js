/* project.js: the project pages. Builds on kf.js (window.kf: api, showError, actions, …); plain JS.
 *
 * /projects: the load form is a kf.js form; once loaded, open the project's page.
 * /projects/<id>: a lazy file tree, a file viewer (server-highlighted fragments from
 * /projects/<id>/view), search, symbols, findings and a rescan followed live over SSE. Which file
 * and line are shown lives in the URL hash (#path=src/app.py&line=9), so such links can be shared.
 */
(() => {
  "use strict";

  const { $, $$, api, csrfToken, clearMessages, showError, link, textCell, fmt, onSuccess, actions } = window.kf;

  onSuccess["project-load"] = (form, data) => {
    location.assign(`/projects/${encodeURIComponent(data.project.id)}`);
  };

  actions["load-source"] = (button) => {
    const form = button.closest("form");
    clearMessages(form);
    for (const b of $$("[data-action=load-source]", form)) b.setAttribute("aria-pressed", String(b === button));
    for (const field of $$("[data-source-field]", form)) {
      const chosen = field.dataset.sourceField === button.dataset.source;
      field.hidden = !chosen;
      $("input", field).disabled = !chosen; // kf.js leaves disabled fields out of the body
    }
    $(`[data-source-field="${button.dataset.source}"] input`, form).focus();
  };

  const page = $("[data-project]");
  if (!page) return;
  const projectId = page.dataset.project;

  const query = (params) => {
    const search = new URLSearchParams({ project_id: projectId });
    for (const [name, value] of Object.entries(params)) {
      if (value !== undefined && value !== null && value !== "") search.set(name, String(value));
    }
    return search.toString();
  };

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function bytes(n) {
    const units = ["bytes", "KB", "MB", "GB", "TB"];
    let value = n;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
    return unit === 0 ? `${n} bytes` : `${value.toFixed(1)}\u00a0${units[unit]}`;
  }

  const plural = (n, word, words = `${word}s`) => `${n} ${n === 1 ? word : words}`;

  // --- where we are: #path=…&line=… ---------------------------------------------------------------

  function fileHref(path, line) {
    let hash = "#path=" + encodeURIComponent(path).replaceAll("%2F", "/");
    if (line) hash += `&line=${line}`;
    return hash;
  }

  function fromHash() {
    const params = new URLSearchParams(location.hash.slice(1));
    return { path: params.get("path"), line: Number.parseInt(params.get("line"), 10) || null };
  }

  function fileLink(path, line, text, testId) {
    const a = link(fileHref(path, line), text, testId);
    a.dataset.path = path;
    return a;
  }

  // --- the tree: one level at a time --------------------------------------------------------------

  const tree = $("[data-tree]");
  const treeScope = tree.closest("section");

  function treeItem(entry) {
    const li = el("li");
    if (entry.type === "dir") {
      const button = el("button", "tree-dir", entry.name);
      button.type = "button";
      button.setAttribute("aria-expanded", "false");
      Object.assign(button.dataset, { action: "tree-toggle", path: entry.path, test: "tree-dir" });
      if (!entry.has_children) button.dataset.empty = "";
      const children = el("ul");
      children.hidden = true;
      li.append(button, children);
    } else {
      const a = fileLink(entry.path, null, entry.name, "tree-file");
      a.className = "tree-file";
      a.title = `${entry.path} · ${bytes(entry.size)}`;
      li.append(a);
    }
    return li;
  }

  async function treeLoad(list, path) {
    const result = await api("GET", `/api/project/tree?${query({ path })}`);
    if (!result.ok) {
      showError(treeScope, result.data.error, "[data-list-error]");
      return false;
    }
    const entries = result.data.entries;
    list.replaceChildren(...entries.map(treeItem));
    if (!entries.length) list.append(el("li", "tree-empty muted", path ? "empty folder" : "This project has no files."));
    return true;
  }

  async function treeExpand(button) {
    if (!button.dataset.loaded) {
      if (!(await treeLoad(button.nextElementSibling, button.dataset.path))) return false;
      button.dataset.loaded = "1";
    }
    button.setAttribute("aria-expanded", "true");
    button.nextElementSibling.hidden = false;
    return true;
  }

  actions["tree-toggle"] = async (button) => {
    clearMessages(treeScope);
    if (button.getAttribute("aria-expanded") === "true") {
      button.setAttribute("aria-expanded", "false");
      button.nextElementSibling.hidden = true;
    } else {
      await treeExpand(button);
    }
  };

  const treeButton = (path) => $$("button[data-action=tree-toggle]", tree).find((b) => b.dataset.path === path);

  /** Opens the folders down to `path` and marks its file as the one shown. */
  async function treeReveal(path) {
    const parts = path.split("/");
    for (let i = 1; i < parts.length; i += 1) {
      const button = treeButton(parts.slice(0, i).join("/"));
      if (!button || !(await treeExpand(button))) break;
    }
    for (const a of $$("a[aria-current]", tree)) a.removeAttribute("aria-current");
    const current = $$("a.tree-file", tree).find((a) => a.dataset.path === path);
    if (current) current.setAttribute("aria-current", "true");
  }

  async function treeRefresh() {
    const expanded = $$("button[aria-expanded=true]", tree).map((b) => b.dataset.path);
    if (!(await treeLoad(tree, ""))) return;
    for (const path of expanded) {
      const button = treeButton(path);
      if (button) await treeExpand(button);
    }
    if (shown.path) await treeReveal(shown.path);
  }

  // --- the file viewer ----------------------------------------------------------------------------

  const viewer = $("[data-viewer-body]");
  const shown = { path: null };

  function markLine(line, scroll) {
    for (const old of $$(".hl", viewer)) { old.classList.remove("hl"); delete old.dataset.test; }
    const target = line && document.getElementById(`line-${line}`);
    if (target && viewer.contains(target)) {
      target.classList.add("hl");
      target.dataset.test = "current-line";
      if (scroll) target.scrollIntoView({ block: "center" });
    } else if (scroll) {
      const box = viewer.closest("section").getBoundingClientRect();
      if (box.top < 0 || box.top > innerHeight * 0.6) viewer.closest("section").scrollIntoView({ block: "start" });
    }
  }

  async function openFile(path, line, { force = false } = {}) {
    if (path !== shown.path || force) {
      const url = `/projects/${encodeURIComponent(projectId)}/view?path=${encodeURIComponent(path)}`;
      viewer.setAttribute("aria-busy", "true");
      let response;
      let html = "";
      try {
        response = await fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } });
        html = await response.text();
      } catch (_) {
        response = null;
      } finally {
        viewer.removeAttribute("aria-busy");
      }
      if (response && response.redirected && new URL(response.url).pathname === "/login") {
        location.assign("/login?next=" + encodeURIComponent(location.pathname));
        return;
      }
      const fragment = document.createElement("template");
      fragment.innerHTML = html;
      if (!fragment.content.querySelector("[data-file]")) {
        // Not the viewer's fragment (no connection, or the project is gone): say so briefly.
        const note = el("p", "notice notice-error", response
          ? `kf could not show this file (${response.status}).`
          : "Could not reach kf. Check your connection and try again.");
        note.dataset.test = "file-error";
        fragment.content.replaceChildren(note);
      }
      viewer.replaceChildren(fragment.content);
      shown.path = path;
      treeReveal(path);
    }
    markLine(line, true);
  }

  function showFromHash() {
    const { path, line } = fromHash();
    if (path) openFile(path, line);
  }

  window.addEventListener("hashchange", showFromHash);

  document.addEventListener("click", (event) => {
    // Pygments' line-number links (#L-9) become shareable #path=…&line=9 links.
    const number = event.target.closest(".code-view a[href^='#L-']");
    if (number && shown.path) {
      event.preventDefault();
      location.hash = fileHref(shown.path, number.getAttribute("href").slice(3));
      return;
    }
    // A link to what the hash already says does not fire hashchange: show it again anyway.
    const again = event.target.closest("a[href^='#path=']");
    if (again && again.getAttribute("href") === location.hash) {
      event.preventDefault();
      showFromHash();
    }
  });

  // --- search -------------------------------------------------------------------------------------

  /** Runs a GET form: the answer, or null after showing the error inside the form. */
  async function getForm(form, url) {
    clearMessages(form);
    form.setAttribute("aria-busy", "true");
    const submit = $("button[type=submit]", form);
    if (submit) submit.disabled = true;
    try {
      const result = await api("GET", url);
      if (result.ok) return result.data;
      showError(form, result.data.error);
      return null;
    } finally {
      form.removeAttribute("aria-busy");
      if (submit) submit.disabled = false;
    }
  }

  function preview(line, hit, q, { regex, caseSensitive }) {
    const code = el("code", "preview");
    const text = line.trimStart(); // the indentation only pushes the match out of sight
    const start = hit.column - 1 - (line.length - text.length);
    const slice = start >= 0 ? text.slice(start, start + q.length) : "";
    const same = caseSensitive ? slice === q : slice.toLowerCase() === q.toLowerCase();
    if (!regex && q && same) {
      code.append(text.slice(0, start), el("mark", "", slice), text.slice(start + q.length));
    } else {
      code.textContent = text;
    }
    return code;
  }

  const searchForm = $("[data-search-form]");
  searchForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const { q, glob, regex, case: caseBox } = searchForm.elements;
    const options = { regex: regex.checked, caseSensitive: caseBox.checked };
    const data = await getForm(searchForm, `/api/project/search?${query({
      q: q.value, glob: glob.value.trim(), regex: options.regex, case: options.caseSensitive })}`);
    const list = $("[data-search-results]");
    const summary = $("[data-search-summary]");
    list.replaceChildren();
    summary.hidden = data === null;
    if (data === null) return;
    for (const hit of data.items) {
      const li = el("li");
      li.dataset.test = "search-hit";
      li.append(fileLink(hit.path, hit.line, `${hit.path}:${hit.line}:${hit.column}`, "search-hit-link"),
        preview(hit.preview, hit, q.value, options));
      list.append(li);
    }
    summary.textContent = data.items.length
      ? `${plural(data.items.length, "match", "matches")} in ${data.took_ms} ms` +
        (data.truncated ? " — only the first ones are shown: narrow the search." : ".")
      : `No matches (${data.took_ms} ms).`;
  });

  // --- symbols ------------------------------------------------------------------------------------

  const symbolsForm = $("[data-symbols-form]");
  symbolsForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const { q, mode } = symbolsForm.elements;
    const data = await getForm(symbolsForm, `/api/project/symbols?${query({ q: q.value.trim(), mode: mode.value })}`);
    const list = $("[data-symbols-results]");
    const summary = $("[data-symbols-summary]");
    list.replaceChildren();
    summary.hidden = data === null;
    if (data === null) return;
    for (const symbol of data.items) {
      const li = el("li");
      li.dataset.test = "symbol-hit";
      const name = fileLink(symbol.path, symbol.line, symbol.container ? `${symbol.container}.${symbol.name}` : symbol.name,
        "symbol-link");
      name.className = "symbol-name";
      li.append(name, " ", el("span", "badge", symbol.kind),
        el("span", "where", `${symbol.path}:${symbol.line}`));
      list.append(li);
    }
    summary.textContent = data.items.length
      ? plural(data.items.length, "symbol") + (data.truncated ? " (more exist: narrow the name)" : "")
      : "No symbol by that name.";
  });

  // --- findings -----------------------------------------------------------------------------------

  const findingsForm = $("[data-findings-form]");
  const findingsSection = findingsForm.closest("section");
  const findingsRows = $("[data-findings-rows]");
  const findingsMore = $("[data-action=findings-more]");
  const severityBadge = { error: "badge-error", warning: "badge-warn", info: "" };

  async function findingsLoad(cursor) {
    clearMessages(findingsSection);
    const result = await api("GET", `/api/project/findings?${query({
      severity: findingsForm.elements.severity.value, cursor })}`);
    if (!result.ok) {
      showError(findingsSection, result.data.error, "[data-list-error]");
      return;
    }
    if (!cursor) findingsRows.replaceChildren();
    for (const finding of result.data.items) {
      const tr = el("tr");
      tr.dataset.test = "finding-row";
      const severity = el("td");
      severity.append(el("span", `badge ${severityBadge[finding.severity] || ""}`, finding.severity));
      const where = el("td", "where");
      where.append(fileLink(finding.path, finding.line, `${finding.path}:${finding.line}`, "finding-link"));
      tr.append(severity, textCell(finding.rule, true), where, textCell(finding.message));
      findingsRows.append(tr);
    }
    if (!findingsRows.children.length) {
      const empty = el("tr", "empty");
      const td = el("td", "", findingsForm.elements.severity.value ? "No findings of this severity." : "No findings.");
      td.colSpan = 4;
      empty.append(td);
      findingsRows.append(empty);
    }
    findingsMore.dataset.cursor = result.data.next_cursor || "";
    findingsMore.hidden = !result.data.next_cursor;
  }

  findingsForm.addEventListener("change", () => findingsLoad());
  findingsForm.addEventListener("submit", (event) => { event.preventDefault(); findingsLoad(); });
  actions["findings-more"] = (button) => findingsLoad(button.dataset.cursor);

  // --- stats, and the rescan that changes them ----------------------------------------------------

  async function statsRefresh() {
    const result = await api("GET", `/api/project/info?${query({})}`);
    if (!result.ok) return null;
    const project = result.data.project;
    const stat = (name) => $(`[data-stat="${name}"]`);
    stat("files").textContent = project.stats.files;
    stat("bytes").textContent = bytes(project.stats.bytes);
    stat("symbols").textContent = project.stats.symbols;
    stat("findings").textContent = project.stats.findings;
    const indexed = stat("indexed_at");
    indexed.textContent = "";
    if (project.indexed_at) {
      const time = el("time", "", fmt(project.indexed_at, 19));
      time.dateTime = project.indexed_at;
      indexed.append(time);
    } else {
      indexed.textContent = "not yet";
    }
    $("[data-indexing-note]").hidden = Boolean(project.indexed_at);
    return project;
  }

  async function refreshAll() {
    await statsRefresh();
    await Promise.all([treeRefresh(), findingsLoad()]);
    if (shown.path) await openFile(shown.path, fromHash().line, { force: true });
  }

  const status = $("[data-rescan-status]");
  const bar = $("[data-rescan-bar]");

  function showProgress({ phase, done, total }) {
    $("[data-rescan-phase]", status).textContent = phase;
    if (total > 0) {
      bar.max = total;
      bar.value = Math.min(done, total);
      $("[data-rescan-count]", status).textContent = `${done} / ${total}`;
    } else {
      bar.removeAttribute("value"); // still counting: an indeterminate bar
      $("[data-rescan-count]", status).textContent = done ? String(done) : "";
    }
  }

  function showEnd(end) {
    if (end.status === "succeeded") {
      $("[data-rescan-phase]", status).textContent = "done";
      $("[data-rescan-count]", status).textContent = "";
      bar.max = 1;
      bar.value = 1;
      const done = $("[data-rescan-done]", status);
      done.textContent = `${plural(end.files, "file")} · ${plural(end.symbols, "symbol")} · ` +
        `${plural(end.findings, "finding")} · ${end.duration_ms} ms`;
      done.hidden = false;
    } else {
      $("[data-rescan-phase]", status).textContent = end.status;
      const error = $("[data-rescan-error]", status);
      error.textContent = end.status === "cancelled" ? "The rescan was cancelled."
        : `The rescan failed: ${end.error || end.status}.`;
      error.hidden = false;
    }
  }

  /** Follows a job's event stream until its `end`. EventSource reconnects by itself with
   * Last-Event-ID, and the server resumes right after the last event we saw. */
  function follow(jobId) {
    return new Promise((resolve) => {
      const source = new EventSource(`/api/jobs/${encodeURIComponent(jobId)}/stream`);
      source.addEventListener("progress", (event) => showProgress(JSON.parse(event.data)));
      source.addEventListener("end", (event) => {
        source.close();
        const end = JSON.parse(event.data);
        showEnd(end);
        resolve(end);
      });
      source.addEventListener("error", () => {
        if (source.readyState !== EventSource.CLOSED) return; // reconnecting
        const error = $("[data-rescan-error]", status);
        error.textContent = "Lost the progress stream; reload the page to see the result.";
        error.hidden = false;
        resolve(null);
      });
    });
  }

  actions.rescan = async (button) => {
    clearMessages(status);
    $("[data-rescan-done]", status).hidden = true;
    status.hidden = false;
    showProgress({ phase: "starting", done: 0, total: 0 });
    button.disabled = true;
    try {
      // The POST answers with the job's stream; we only need its id from the headers, then follow
      // the job with EventSource (which reconnects by itself). Dropping this response does not stop it.
      const controller = new AbortController();
      let response;
      try {
        response = await fetch("/api/project/rescan", {
          method: "POST",
          credentials: "same-origin",
          signal: controller.signal,
          headers: { Accept: "application/json", "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
          body: JSON.stringify({ project_id: projectId }),
        });
      } catch (_) {
        showError(status, { code: "network", message: "Could not reach kf. Check your connection and try again." },
          "[data-rescan-error]");
        return;
      }
      if (!response.ok) {
        const data = await response.json().catch(() => null);
        showError(status, (data && data.error) || { code: "http", message: `kf answered ${response.status}.` },
          "[data-rescan-error]");
        return;
      }
      const jobId = response.headers.get("X-Job-ID");
      controller.abort();
      const end = await follow(jobId);
      if (end && end.status === "succeeded") await refreshAll();
    } finally {
      button.disabled = false;
    }
  };

  // While the first scan runs (just loaded), watch for its end; give up after ten minutes (a scan
  // that failed leaves the project unindexed: a member's Rescan then shows why).
  async function waitForIndex(tries = 400) {
    const project = await statsRefresh();
    if (project && project.indexed_at) {
      await Promise.all([treeRefresh(), findingsLoad()]);
      return;
    }
    if (tries > 1) setTimeout(() => waitForIndex(tries - 1), 1500);
  }

  // --- start --------------------------------------------------------------------------------------

  treeLoad(tree, "").then(showFromHash);
  findingsLoad();
  if (page.hasAttribute("data-indexing")) setTimeout(waitForIndex, 1000);
})();

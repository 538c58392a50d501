/* budget.js: the /budget page on top of kf.js (its data-api forms save the caps and prices): the
 * workspace picker, removing a price, and the estimate form, which shows the API's answer in place. */
(() => {
  "use strict";
  const { $, $$, api, clearMessages, showError, actions } = window.kf;
  const page = $("[data-budget-page]");
  if (!page) return;
  const wsId = page.dataset.ws;

  const picker = $("[data-ws-picker]");
  if (picker) $("select", picker).addEventListener("change", () => picker.submit());

  actions["budget-price-delete"] = async (button) => {
    const tr = button.closest("tr");
    const url = `/api/budget/prices?ws_id=${encodeURIComponent(wsId)}&model=${encodeURIComponent(tr.dataset.model)}`;
    const result = await api("DELETE", url);
    const section = button.closest("section");
    if (!result.ok) {
      clearMessages(section);
      return showError(section, result.data.error, "[data-list-error]");
    }
    const rows = tr.parentElement;
    tr.remove();
    if (!$$("[data-model]", rows).length) $("[data-empty]", rows).hidden = false;
  };

  const dollars = (usd) => (usd === null || usd === undefined ? "no cap" : `$${usd}`);

  const form = $("[data-estimate-form]");
  const out = $("[data-estimate-result]");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (form.getAttribute("aria-busy") === "true") return;
    clearMessages(form);
    const body = { task: form.elements.task.value };
    const projectId = form.elements.project_id.value;
    if (projectId) body.project_id = projectId;
    else body.ws_id = wsId;
    const model = form.elements.model.value.trim();
    if (model) body.model = model;
    const steps = form.elements.max_steps.value;
    if (steps !== "") body.max_steps = Number(steps);
    form.setAttribute("aria-busy", "true");
    try {
      const result = await api("POST", "/api/budget/estimate", body);
      if (!result.ok) {
        out.hidden = true;
        return showError(form, result.data.error);
      }
      const e = result.data;
      const fills = {
        usd_low: dollars(e.usd_low), usd_expected: dollars(e.usd_expected), usd_high: dollars(e.usd_high),
        tokens: `${e.input_tokens.toLocaleString()} / ${e.output_tokens.toLocaleString()}`,
        remaining_today_usd: dollars(e.remaining_today_usd), pricing_source: e.pricing_source,
      };
      for (const [name, text] of Object.entries(fills)) $(`[data-fill="${name}"]`, out).textContent = text;
      out.hidden = false;
    } finally {
      form.removeAttribute("aria-busy");
    }
  });
})();

/* receipts.js: the /receipts page on top of kf.js. Verify asks the server to recompute the log up to a
 * receipt (POST /api/receipts/<run_id>/verify) and shows the answer under its row. */
(() => {
  "use strict";
  const { $, api, actions } = window.kf;

  const picker = $("[data-ws-picker]");
  if (picker) $("select", picker).addEventListener("change", () => picker.submit());

  function verdict(data) {
    if (data.ok) {
      const proof = data.inclusion_proof;
      return `Verified: ${data.checked} receipt${data.checked === 1 ? "" : "s"} recomputed up to seq ${data.seq}; `
        + `the chain, the Merkle root and the signed head match, and the receipt is entry ${data.seq} of the `
        + `${proof.tree_size} in the newest signed head (root ${proof.root.slice(0, 16)}…).`;
    }
    const where = data.first_bad_seq === null ? "" : ` (first bad receipt: ${data.first_bad_seq})`;
    return `Not verified${where}: ${data.reason}`;
  }

  actions["receipt-verify"] = async (button) => {
    const tr = button.closest("tr");
    const runId = tr.dataset.runId;
    const resultRow = tr.parentElement.querySelector(`[data-verify-result-for="${CSS.escape(runId)}"]`);
    const line = $("[data-test=verify-result]", resultRow);
    resultRow.hidden = false;
    line.className = "verify-line";
    line.textContent = "Verifying…";
    button.disabled = true;
    try {
      const result = await api("POST", `/api/receipts/${encodeURIComponent(runId)}/verify`);
      if (!result.ok) {
        line.classList.add("verify-bad");
        line.textContent = result.data.error.message;
        return;
      }
      line.classList.add(result.data.ok ? "verify-ok" : "verify-bad");
      line.dataset.ok = String(result.data.ok);
      line.textContent = verdict(result.data);
    } finally {
      button.disabled = false;
    }
  };
})();

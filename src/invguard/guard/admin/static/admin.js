// The admin page's only script: refresh the live SLIs every 15 s and confirm key revocations.
"use strict";

function fmt(x, digits) {
  return x === null || x === undefined ? "\u2014" : Number(x).toFixed(digits);
}

async function refreshSlis() {
  try {
    const r = await fetch("/admin/api/slis", { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (!r.ok) return;
    const doc = await r.json();
    for (const [name, s] of Object.entries(doc.slis)) {
      const row = document.querySelector(`tr[data-sli="${CSS.escape(name)}"]`);
      if (!row) continue;
      row.querySelector(".bad").textContent = String(Math.round(s.bad));
      row.querySelector(".total").textContent = String(Math.round(s.total));
      row.querySelector(".ratio").textContent = fmt(s.ratio, 4);
    }
    for (const s of doc.slos) {
      const row = document.querySelector(`tr[data-slo="${CSS.escape(s.slo)}"]`);
      if (!row) continue;
      row.querySelector(".budget").textContent = fmt(100 * s.budget_remaining, 1) + "%";
      row.querySelector(".burn1h").textContent = fmt(s.burn["1h"] || 0, 2);
      row.querySelector(".burn5m").textContent = fmt(s.burn["5m"] || 0, 2);
      row.querySelector(".alert").textContent = s.alert || "";
    }
    document.body.dataset.slisRefreshed = String(Date.now());
  } catch (e) {
    // the guard is restarting: the next tick tries again
  }
}

document.addEventListener("DOMContentLoaded", () => {
  for (const form of document.querySelectorAll("form.confirm")) {
    form.addEventListener("submit", (ev) => {
      if (!window.confirm(form.dataset.confirm)) ev.preventDefault();
    });
  }
  if (document.getElementById("sli-rows")) {
    refreshSlis();
    window.setInterval(refreshSlis, 15000);
  }
});

// The visitor page: keeps the totals moving by polling /api/stats (which records
// nothing) every few seconds while the page is visible.
"use strict";

(function () {
  const h = window.hubbub;
  const $ = h.$;
  const EVERY_MS = 5000;
  let timer = null;
  let failures = 0;
  let polling = false;

  function schedule(ms) {
    clearTimeout(timer);
    timer = document.hidden ? null : setTimeout(poll, ms);
  }

  function put(id, value) {
    const node = $(id);
    if (Number.isSafeInteger(value) && node.textContent !== String(value)) node.textContent = String(value);
  }

  async function poll() {
    timer = null;
    if (polling) return;
    polling = true;
    const result = await h.api("/api/stats");
    polling = false;
    const state = $("stats-state");
    if (result.ok && result.data && typeof result.data === "object") {
      failures = 0;
      put("unique-visitors", result.data.unique_visitors);
      put("total-visits", result.data.total_visits);
      const now = new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
      h.showState(state, "live", "Live: updated at " + now + ".");
      schedule(EVERY_MS);
    } else {
      const wait = Math.max(EVERY_MS, h.backoff(failures));
      failures += 1;
      const why = result.ok ? "an unexpected answer" : result.error.message;
      h.showState(state, "reconnecting", "Totals paused (" + why + "); trying again in " + Math.ceil(wait / 1000) + " s.");
      schedule(wait);
    }
  }

  h.ready(() => {
    document.addEventListener("visibilitychange", () => {
      if (document.hidden) {
        clearTimeout(timer);
        timer = null;
      } else if (timer === null) {
        poll();
      }
    });
    schedule(EVERY_MS);
  });
})();

// The viewers' buffs page: the newest questions, then new ones live from
// /api/buffs/events. Choosing an answer highlights it on this device only
// (answers are not sent anywhere yet). Every text is inserted as text.
"use strict";

(function () {
  const h = window.hubbub;
  const $ = h.$;
  const LIMIT = 20;
  const MAX_SHOWN = 50;
  const CHOICES_KEY = "hubbub.buffs.choices";
  const CHOICES_KEPT = 200;
  const shown = new Map(); // buff id -> <li>

  // buff id -> index of the chosen answer, oldest first, at most CHOICES_KEPT.
  const choices = new Map(
    (() => {
      try {
        const pairs = JSON.parse(h.store.get("localStorage", CHOICES_KEY) || "[]");
        return Array.isArray(pairs) ? pairs.filter((p) => Array.isArray(p) && p.length === 2 && p.every(Number.isSafeInteger)).slice(-CHOICES_KEPT) : [];
      } catch (_) {
        return [];
      }
    })(),
  );

  function choose(id, index, answers) {
    choices.delete(id);
    choices.set(id, index);
    while (choices.size > CHOICES_KEPT) choices.delete(choices.keys().next().value);
    h.store.set("localStorage", CHOICES_KEY, JSON.stringify(Array.from(choices)));
    for (const label of answers.children) {
      label.classList.toggle("chosen", label.querySelector("input").checked);
    }
  }

  function render(buff, fresh) {
    const chosen = choices.get(buff.id);
    const answers = h.el("div", { class: "answers" });
    buff.answers.forEach((answer, index) => {
      const input = h.el("input", { type: "radio", name: "buff-" + buff.id, value: index, checked: chosen === index });
      input.addEventListener("change", () => choose(buff.id, index, answers));
      answers.append(h.el("label", { class: chosen === index ? "answer chosen" : "answer" }, input, h.el("span", { text: answer })));
    });
    const legend = h.el("legend", { text: buff.question }, fresh ? h.el("span", { class: "badge", text: "New" }) : null);
    return h.el(
      "li",
      { class: fresh ? "buff new" : "buff", "data-id": buff.id },
      h.el("fieldset", {}, legend, answers, h.el("p", { class: "meta" }, h.timeElement(buff.created_at))),
    );
  }

  // Newest first, each buff once, at most MAX_SHOWN.
  function show(buff, fresh) {
    if (!buff || !Number.isSafeInteger(buff.id) || !Array.isArray(buff.answers)) return;
    if (h.placeById($("buffs"), shown, buff.id, () => render(buff, fresh), true, MAX_SHOWN) === null) return;
    $("list-state").hidden = true;
    if (fresh) h.announce("New question: " + buff.question, "questions");
  }

  function setListState(text, empty) {
    const state = $("list-state");
    state.textContent = text;
    state.className = empty ? "empty" : "muted";
    state.hidden = text === "";
  }

  h.ready(() => {
    const state = $("connection");
    h.loadAndFollow("/api/buffs?limit=" + LIMIT, "/api/buffs/events", {
      onList(buffs) {
        buffs.forEach((buff) => show(buff, false));
        if (buffs.length === 0) setListState("No questions yet. They appear here the moment they are asked.", true);
      },
      onEvent: (buff) => show(buff, true),
      onState: (value) => h.showState(state, value),
      onListError(error, wait) {
        const retry = wait === null ? "" : " Trying again in " + Math.ceil(wait / 1000) + " s.";
        setListState("Could not load the questions (" + error.message + ")." + retry, false);
      },
    });
  });
})();

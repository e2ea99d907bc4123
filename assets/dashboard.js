// The buffs dashboard: staff create buffs with the admin token, see the API's
// validation errors next to the field at fault, and the recent buffs (live).
// The token lives in this tab's sessionStorage and travels only in the
// Authorization header: never in an address, a form submission or a log.
"use strict";

(function () {
  const h = window.hubbub;
  const $ = h.$;
  const TOKEN_KEY = "hubbub.admin.token";
  const MIN_ANSWERS = 2;
  const MAX_ANSWERS = 10;
  const LIMIT = 20;
  const MAX_SHOWN = 50;
  const shown = new Map(); // buff id -> <li>
  let answerIds = 0;

  // Answer inputs: numbered labels, a remove button each, 2 to 10 of them.
  function renumber() {
    const items = Array.from($("answers").children);
    items.forEach((item, index) => {
      item.querySelector("label").textContent = "Answer " + (index + 1);
      const remove = item.querySelector("button");
      remove.setAttribute("aria-label", "Remove answer " + (index + 1));
      remove.disabled = items.length <= MIN_ANSWERS;
    });
    $("add-answer").disabled = items.length >= MAX_ANSWERS;
  }

  function addAnswer(value) {
    if ($("answers").children.length >= MAX_ANSWERS) return null;
    answerIds += 1;
    const id = "answer-" + answerIds;
    const input = h.el("input", { id, class: "answer-input", maxlength: 200, autocomplete: "off", "aria-describedby": "answers-error" });
    input.value = value || "";
    const remove = h.el("button", { type: "button", class: "secondary", text: "×" });
    const item = h.el("li", {}, h.el("label", { for: id, class: "visually-hidden" }), input, remove);
    remove.addEventListener("click", () => {
      if ($("answers").children.length <= MIN_ANSWERS) return;
      const next = item.nextElementSibling || item.previousElementSibling;
      item.remove();
      renumber();
      if (next) next.querySelector("input").focus();
    });
    $("answers").append(item);
    renumber();
    return input;
  }

  function resetAnswers() {
    $("answers").replaceChildren();
    for (let i = 0; i < MIN_ANSWERS; i += 1) addAnswer("");
  }

  function answerInputs() {
    return Array.from($("answers").querySelectorAll("input"));
  }

  function formState(text, kind) {
    const node = $("create-state");
    node.textContent = text;
    node.dataset.kind = kind || "";
  }

  function clearErrors() {
    h.fieldError($("token"), $("token-error"), "");
    h.fieldError($("question"), $("question-error"), "");
    $("answers-error").textContent = "";
    answerInputs().forEach((input) => input.removeAttribute("aria-invalid"));
    formState("", "");
  }

  function answersError(message) {
    $("answers-error").textContent = message;
    answerInputs().forEach((input) => input.setAttribute("aria-invalid", "true"));
  }

  async function create(event) {
    event.preventDefault();
    clearErrors();
    const token = $("token").value.trim();
    if (token === "") {
      h.fieldError($("token"), $("token-error"), "Enter the admin token to create buffs.");
      $("token").focus();
      return;
    }
    // A header carries printable ASCII only: fetch would refuse anything else, and
    // that refusal would read as "could not reach hubbub".
    if (!/^[\x20-\x7e]+$/.test(token)) {
      h.fieldError($("token"), $("token-error"), "The token can only hold letters, digits, spaces and ASCII punctuation.");
      $("token").focus();
      return;
    }
    h.store.set("sessionStorage", TOKEN_KEY, token);
    const question = $("question").value;
    // Blank answer boxes are left out; the server checks the rest.
    const answers = answerInputs().map((input) => input.value).filter((value) => value.trim() !== "");
    const button = $("create-button");
    button.disabled = true;
    formState("Sending…", "");
    const result = await h.api("/api/buffs", {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: "Bearer " + token },
      body: JSON.stringify({ question, answers }),
    });
    button.disabled = false;
    if (result.ok) {
      show(result.data, true);
      formState("Sent to viewers as buff #" + result.data.id + ".", "ok");
      $("question").value = "";
      resetAnswers();
      $("question").focus();
      return;
    }
    const error = result.error;
    formState("", "");
    if (error.status === 401) {
      h.store.remove("sessionStorage", TOKEN_KEY);
      h.fieldError($("token"), $("token-error"), "This token was refused. Check it and try again.");
      $("token").focus();
    } else if (error.field === "question") {
      h.fieldError($("question"), $("question-error"), h.fieldMessage("The question", error.problem));
      $("question").focus();
    } else if (error.field === "answers") {
      answersError(h.fieldMessage("Answers", error.problem));
      const first = answerInputs()[0];
      if (first) first.focus();
    } else if (error.status === 413) {
      formState("Too large to send: " + error.message, "error");
    } else {
      formState(error.message + " Nothing was created.", "error");
    }
  }

  function render(buff, fresh) {
    return h.el(
      "li",
      { "data-id": buff.id, class: fresh ? "new" : null },
      h.el("p", { class: "question", text: buff.question }),
      h.el("p", { class: "answers-line", text: buff.answers.join(" · ") }),
      h.el("p", { class: "meta" }, h.el("span", { class: "muted", text: "#" + buff.id + " · " }), h.timeElement(buff.created_at)),
    );
  }

  // Newest first, each buff once, at most MAX_SHOWN.
  function show(buff, fresh) {
    if (!buff || !Number.isSafeInteger(buff.id) || !Array.isArray(buff.answers)) return;
    if (h.placeById($("recent"), shown, buff.id, () => render(buff, fresh), true, MAX_SHOWN) === null) return;
    $("list-state").hidden = true;
  }

  h.ready(() => {
    $("token").value = h.store.get("sessionStorage", TOKEN_KEY) || "";
    $("forget-token").addEventListener("click", () => {
      h.store.remove("sessionStorage", TOKEN_KEY);
      $("token").value = "";
      h.fieldError($("token"), $("token-error"), "");
      formState("The token is forgotten in this tab.", "ok");
      $("token").focus();
    });
    $("add-answer").addEventListener("click", () => {
      const input = addAnswer("");
      if (input) input.focus();
    });
    $("create").addEventListener("submit", create);
    resetAnswers();

    const state = $("connection");
    const listState = $("list-state");
    h.loadAndFollow("/api/buffs?limit=" + LIMIT, "/api/buffs/events", {
      onList(buffs) {
        buffs.forEach((buff) => show(buff, false));
        if (buffs.length === 0) listState.textContent = "No buffs yet: the first one you send appears here.";
      },
      onEvent: (buff) => show(buff, true),
      onState: (value) => h.showState(state, value),
      onListError(error, wait) {
        const retry = wait === null ? "" : " Trying again in " + Math.ceil(wait / 1000) + " s.";
        listState.hidden = false;
        listState.textContent = "Could not load the recent buffs (" + error.message + ")." + retry;
      },
    });
  });
})();

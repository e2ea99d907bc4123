// The chat page: the channel's recent history over REST at once, then live
// messages over Server-Sent Events. The channel is in the address
// (/chat/?channel=NAME). Every message is inserted as text, never HTML.
"use strict";

(function () {
  const h = window.hubbub;
  const $ = h.$;
  const DEFAULT_CHANNEL = "general";
  const HISTORY = 50;
  const MAX_SHOWN = 500;
  const OWN_KEY = "hubbub.chat.own";
  const OWN_KEPT = 200;
  const USER_KEY = "hubbub.chat.user";

  let channel = null;
  let stream = null;
  let cooldownTimer = null;
  const shown = new Map(); // message id -> <li>

  // Ids of the messages this browser posted, so they can be marked as ours.
  const own = new Set(
    (() => {
      try {
        const ids = JSON.parse(h.store.get("localStorage", OWN_KEY) || "[]");
        return Array.isArray(ids) ? ids.filter(Number.isSafeInteger).slice(-OWN_KEPT) : [];
      } catch (_) {
        return [];
      }
    })(),
  );

  function rememberOwn(id) {
    own.add(id);
    const kept = Array.from(own).slice(-OWN_KEPT);
    if (kept.length < own.size) {
      own.clear();
      kept.forEach((ownId) => own.add(ownId));
    }
    h.store.set("localStorage", OWN_KEY, JSON.stringify(kept));
  }

  const path = (suffix) => "/api/chat/" + encodeURIComponent(channel) + suffix;

  function channelFromAddress() {
    const name = new URLSearchParams(window.location.search).get("channel");
    return name === null || name.trim() === "" ? DEFAULT_CHANNEL : name.trim().toLowerCase();
  }

  function nearBottom(list) {
    return list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  }

  function render(message) {
    const mine = own.has(message.id);
    return h.el(
      "li",
      { class: mine ? "message own" : "message", "data-id": message.id },
      h.el(
        "div",
        { class: "meta" },
        h.el("span", { class: "user", text: message.user }),
        mine ? h.el("span", { class: "you", text: "you" }) : null,
        h.timeElement(message.sent_at),
      ),
      h.el("p", { class: "text", text: message.text }),
    );
  }

  // Inserts a message in id order (live and history may overlap or interleave),
  // at most once, keeping the newest MAX_SHOWN.
  function show(message, live) {
    if (!message || !Number.isSafeInteger(message.id)) return;
    const list = $("messages");
    const stick = nearBottom(list);
    if (h.placeById(list, shown, message.id, () => render(message), false, MAX_SHOWN) === null) return;
    $("history-state").hidden = true;
    if (stick) list.scrollTop = list.scrollHeight;
    if (live && !own.has(message.id)) h.announce(message.user + ": " + message.text, "messages");
  }

  function setHistoryState(text, empty) {
    const state = $("history-state");
    state.textContent = text;
    state.className = empty ? "empty" : "muted";
    state.hidden = text === "";
  }

  function open(name, push) {
    if (stream) stream.stop();
    stream = null;
    h.fieldError($("channel"), $("channel-error"), "");
    $("channel").value = name;
    channel = name;
    if (push) {
      const address = "/chat/?channel=" + encodeURIComponent(name);
      if (window.location.pathname + window.location.search !== address) window.history.pushState({ channel: name }, "", address);
    }
    $("channel-title").textContent = "#" + name;
    document.title = "#" + name + " · Chat · hubbub";
    shown.clear();
    $("messages").replaceChildren();
    setHistoryState("Loading the recent messages…", false);
    h.showState($("connection"), "connecting");

    const state = $("connection");
    stream = h.loadAndFollow(path("/messages?limit=" + HISTORY), path("/events"), {
      onList(history) {
        // The API gives the newest messages in ascending id order.
        history.forEach((message) => show(message, false));
        const list = $("messages");
        list.scrollTop = list.scrollHeight;
        if (history.length === 0) setHistoryState("No messages in #" + name + " yet. Say hello!", true);
      },
      onEvent: (message) => show(message, true),
      onState: (value) => h.showState(state, value),
      onListError(error, wait) {
        if (wait === null) {
          // The server judges the channel name: its 400 names the field.
          const message = error.field === "channel" ? h.fieldMessage("Channel", error.problem) : error.message;
          h.fieldError($("channel"), $("channel-error"), message);
          h.showState(state, "offline", "Not connected");
          setHistoryState("Choose another channel to see its messages.", true);
        } else {
          setHistoryState("Could not load the messages (" + error.message + "). Trying again in " + Math.ceil(wait / 1000) + " s.", false);
        }
      },
    });
  }

  function clearErrors() {
    h.fieldError($("user"), $("user-error"), "");
    h.fieldError($("text"), $("text-error"), "");
  }

  // After a 429: the wait is said once next to the input (an alert that changed
  // every second would be read out every second) and counted down on the button;
  // sending resumes after it.
  function coolDown(seconds) {
    const button = $("send-button");
    let left = Math.max(1, seconds);
    clearInterval(cooldownTimer);
    h.fieldError($("text"), $("text-error"), "Too many messages: you can send again in " + left + " s. Your message is kept.");
    const tick = () => {
      if (left <= 0) {
        clearInterval(cooldownTimer);
        cooldownTimer = null;
        button.disabled = false;
        button.textContent = "Send";
        h.fieldError($("text"), $("text-error"), "");
        return;
      }
      button.textContent = "Wait " + left + " s";
      left -= 1;
    };
    button.disabled = true;
    tick();
    cooldownTimer = setInterval(tick, 1000);
  }

  async function send(event) {
    event.preventDefault();
    if (cooldownTimer !== null || channel === null) return;
    clearErrors();
    const user = $("user").value.trim();
    const text = $("text").value;
    if (user === "") {
      h.fieldError($("user"), $("user-error"), "Enter a name to send messages.");
      $("user").focus();
      return;
    }
    if (text.trim() === "") {
      h.fieldError($("text"), $("text-error"), "Type a message first.");
      $("text").focus();
      return;
    }
    h.store.set("localStorage", USER_KEY, user);
    const button = $("send-button");
    button.disabled = true;
    const sentTo = channel;
    const result = await h.api(path("/messages"), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ user, text }),
    });
    button.disabled = false;
    if (result.ok) {
      rememberOwn(result.data.id);
      if ($("text").value === text) $("text").value = "";
      $("text").focus();
      if (sentTo === channel) {
        // The stream may have brought it first, before we knew it was ours.
        const early = shown.get(result.data.id);
        if (early) {
          const marked = render(result.data);
          early.replaceWith(marked);
          shown.set(result.data.id, marked);
        }
        show(result.data, false);
        $("messages").scrollTop = $("messages").scrollHeight;
      }
      return;
    }
    // Whatever went wrong, the text stays in the box and the reason is shown by it.
    const error = result.error;
    if (error.status === 429) {
      coolDown(error.retryAfter === null ? 10 : error.retryAfter);
    } else if (error.field === "user") {
      h.fieldError($("user"), $("user-error"), h.fieldMessage("Name", error.problem));
      $("user").focus();
    } else if (error.field === "channel") {
      h.fieldError($("channel"), $("channel-error"), h.fieldMessage("Channel", error.problem));
    } else if (error.field === "text") {
      h.fieldError($("text"), $("text-error"), h.fieldMessage("Message", error.problem));
    } else if (error.status === 413) {
      h.fieldError($("text"), $("text-error"), "This message is too large to send: " + error.message);
    } else {
      h.fieldError($("text"), $("text-error"), error.message + " Your message was not sent.");
    }
  }

  h.ready(() => {
    $("user").value = h.store.get("localStorage", USER_KEY) || "";
    $("channel-form").addEventListener("submit", (event) => {
      event.preventDefault();
      open($("channel").value.trim().toLowerCase(), true);
    });
    $("send").addEventListener("submit", send);
    $("text").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        $("send").requestSubmit();
      }
    });
    window.addEventListener("popstate", () => open(channelFromAddress(), false));
    open(channelFromAddress(), false);
  });
})();

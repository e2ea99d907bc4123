// hubbub chat demo: history over REST, live messages over Server-Sent Events.
// Every URL is a path on this origin; every message is inserted as text, never HTML.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  let source = null;
  let channel = null;
  let lastId = 0;
  const shown = new Set();

  function show(message) {
    if (shown.has(message.id)) return; // history and live may overlap
    shown.add(message.id);
    lastId = Math.max(lastId, message.id);
    const item = document.createElement("li");
    item.dataset.id = String(message.id);
    const user = document.createElement("span");
    user.className = "user";
    user.textContent = message.user;
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = message.text;
    const time = document.createElement("time");
    time.dateTime = message.sent_at;
    time.textContent = new Date(message.sent_at).toLocaleTimeString();
    item.append(user, text, time);
    $("messages").append(item);
    item.scrollIntoView({ block: "nearest" });
  }

  function path(suffix) {
    return "/api/chat/" + encodeURIComponent(channel) + suffix;
  }

  async function errorText(response) {
    try {
      const body = await response.json();
      return body.message || response.statusText;
    } catch (_) {
      return response.statusText;
    }
  }

  async function join(event) {
    event.preventDefault();
    if (source) source.close();
    channel = $("channel").value.trim();
    $("messages").replaceChildren();
    shown.clear();
    lastId = 0;
    $("error").textContent = "";
    const history = await fetch(path("/messages?limit=50"));
    if (!history.ok) {
      $("error").textContent = await errorText(history);
      return;
    }
    (await history.json()).forEach(show);
    // Resume right after the history we have; EventSource then keeps
    // Last-Event-ID itself across automatic reconnects.
    source = new EventSource(path("/events?last_event_id=" + lastId));
    source.addEventListener("message", (e) => show(JSON.parse(e.data)));
    source.onopen = () => { $("status").textContent = "Connected to #" + channel + "."; };
    source.onerror = () => { $("status").textContent = "Reconnecting…"; };
    $("send").hidden = false;
    $("text").focus();
  }

  async function send(event) {
    event.preventDefault();
    $("error").textContent = "";
    const response = await fetch(path("/messages"), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ user: $("user").value, text: $("text").value }),
    });
    if (!response.ok) {
      $("error").textContent = await errorText(response);
      return;
    }
    $("text").value = "";
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("join").addEventListener("submit", join);
    $("send").addEventListener("submit", send);
  });
})();

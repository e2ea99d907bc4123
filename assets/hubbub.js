// hubbub's shared page code (window.hubbub), loaded before each page's own script.
// Rules every page follows: URLs are paths on this origin; anything a user or the
// API wrote is inserted as text (textContent, Text nodes), never parsed as HTML;
// every failure is shown to the user, next to what caused it.
"use strict";

window.hubbub = (function () {
  const $ = (id) => document.getElementById(id);

  // Builds an element. `props.text` becomes its textContent; children that are
  // strings become Text nodes. Nothing here parses markup.
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") node.textContent = String(value);
      else if (key === "class") node.className = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  // localStorage / sessionStorage that never throws (private modes, full quota).
  const store = {
    get(kind, key) {
      try { return window[kind].getItem(key); } catch (_) { return null; }
    },
    set(kind, key, value) {
      try { window[kind].setItem(key, value); } catch (_) { /* not kept: fine */ }
    },
    remove(kind, key) {
      try { window[kind].removeItem(key); } catch (_) { /* nothing to remove */ }
    },
  };

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // The pause before retry number `attempt` (0 first): anywhere between 0.5 s and a
  // ceiling that doubles with each failure (4 s, 8 s, 16 s, then 30 s). Spread that
  // wide ("full jitter"), the pages one outage cut off at the same instant (every
  // viewer of a broadcast server that restarts) come back over seconds, not at once.
  function backoff(attempt) {
    const ceiling = Math.min(30000, 4000 * 2 ** Math.min(attempt, 3));
    return Math.round(500 + Math.random() * (ceiling - 500));
  }

  function retrySeconds(header) {
    if (!header) return null;
    const seconds = Number(header);
    if (Number.isFinite(seconds) && seconds >= 0) return Math.ceil(seconds);
    const date = Date.parse(header);
    return Number.isNaN(date) ? null : Math.max(0, Math.ceil((date - Date.now()) / 1000));
  }

  function fallbackMessage(status, retryAfter) {
    if (status === 413) return "That is larger than the server accepts.";
    if (status === 429) {
      return retryAfter === null
        ? "Too many requests; wait a moment and try again."
        : "Too many requests; try again in " + retryAfter + " s.";
    }
    if (status === 503) return "The service is busy or restarting; try again in a moment.";
    return "The server answered " + status + ".";
  }

  // The API's error shape is {"error": code, "message": text}; a 400 for a field
  // says "field: problem". HAProxy's own 429/503 answers are plain text.
  function describe(response, data) {
    const json = data !== null && typeof data === "object";
    const retryAfter = retrySeconds(response.headers.get("retry-after"));
    const code = json && typeof data.error === "string" ? data.error : "http_" + response.status;
    let message = json && typeof data.message === "string" ? data.message : "";
    let field = null;
    let problem = message;
    const named = code === "invalid_field" && /^([A-Za-z_][\w.[\]-]*): ([\s\S]*)$/.exec(message);
    if (named) {
      field = named[1].split(/[.[]/)[0];
      problem = named[2];
    }
    if (!message) message = problem = fallbackMessage(response.status, retryAfter);
    return { status: response.status, code, message, field, problem, retryAfter };
  }

  // One call to the JSON API. Never rejects: resolves to {ok, status, data} or
  // {ok: false, status, error: {status, code, message, field, problem, retryAfter}}
  // (status 0 when the server could not be reached).
  async function api(path, options) {
    let response;
    try {
      response = await fetch(path, Object.assign({ cache: "no-store", credentials: "same-origin" }, options));
    } catch (_) {
      const message = "Could not reach hubbub; check your connection and try again.";
      return { ok: false, status: 0, error: { status: 0, code: "network", message, field: null, problem: message, retryAfter: null } };
    }
    let data = null;
    try {
      const type = response.headers.get("content-type") || "";
      data = type.startsWith("application/json") ? await response.json() : (await response.text()).slice(0, 300);
    } catch (_) {
      data = null;
    }
    if (response.ok) return { ok: true, status: response.status, data };
    return { ok: false, status: response.status, data, error: describe(response, data) };
  }

  // "Message" + "must not be empty" -> "Message must not be empty."
  function fieldMessage(label, problem) {
    const text = /^(must|is) /.test(problem) ? label + " " + problem : label + ": " + problem;
    return /[.!?]$/.test(text) ? text : text + ".";
  }

  // Shows (or clears, with an empty message) the error under an input.
  function fieldError(input, output, message) {
    output.textContent = message || "";
    if (message) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
  }

  const STATES = {
    connecting: "Connecting…",
    live: "Live",
    reconnecting: "Reconnecting…",
    offline: "Offline",
  };

  // The connection indicators are status regions: unchanged words are not set
  // again, so a screen reader does not repeat "Reconnecting…" on every retry.
  function showState(node, state, text) {
    const words = text || STATES[state] || state;
    if (node.dataset.state === state && node.textContent === words) return;
    node.dataset.state = state;
    node.textContent = words;
  }

  // Says something to screen readers through the page's polite live region, at
  // most once every ANNOUNCE_GAP_MS: what comes in between is summed up in one
  // sentence ("5 new messages; the latest: …"), so a busy chat is not read out
  // line by line. `plural` names the things announced ("messages").
  const ANNOUNCE_GAP_MS = 3000;
  const waiting = { count: 0, latest: "", plural: "" };
  let announceTimer = null;
  let spokenAt = -Infinity;
  function speak() {
    announceTimer = null;
    const region = $("announcer");
    const { count, latest, plural } = waiting;
    const text = count === 1 ? latest : count + " new " + plural + "; the latest: " + latest;
    waiting.count = 0;
    spokenAt = Date.now();
    // Emptied first and filled a moment later, so the same words twice are announced twice.
    region.textContent = "";
    setTimeout(() => { region.textContent = text.slice(0, 300); }, 60);
  }
  function announce(text, plural) {
    if (!$("announcer")) return;
    waiting.count += 1;
    waiting.latest = text;
    waiting.plural = plural || "updates";
    if (announceTimer === null) {
      announceTimer = setTimeout(speak, Math.max(0, spokenAt + ANNOUNCE_GAP_MS - Date.now()));
    }
  }

  // Follows a Server-Sent-Events stream of JSON messages; the server replays what
  // was missed after `last_event_id`. Reconnecting is done here, not by the
  // browser: EventSource would come back after the server's fixed `retry`, at the
  // same instant on every page that one restart cut off, and again and again while
  // the server is away. Here every error closes the stream and a new one opens
  // after a jittered, growing pause (`backoff`), resuming after the last id seen;
  // the pauses start short again once a stream has stayed up for STEADY_MS.
  // `onState` gets connecting, live or reconnecting.
  const STEADY_MS = 10000;
  function follow(url, lastId, handlers) {
    let last = lastId;
    let source = null;
    let timer = null;
    let failures = 0;
    let openedAt = null;
    let stopped = false;
    const separator = url.includes("?") ? "&" : "?";

    function open() {
      timer = null;
      openedAt = null;
      handlers.onState(failures === 0 ? "connecting" : "reconnecting");
      source = new EventSource(url + separator + "last_event_id=" + encodeURIComponent(String(last)));
      source.onopen = () => {
        openedAt = Date.now();
        handlers.onState("live");
      };
      source.addEventListener("message", (event) => {
        let data;
        try {
          data = JSON.parse(event.data);
        } catch (_) {
          return;
        }
        const id = Number(event.lastEventId);
        if (Number.isSafeInteger(id) && id > last) last = id;
        handlers.onEvent(data);
      });
      source.onerror = () => {
        source.close();
        if (stopped || timer !== null) return;
        if (openedAt !== null && Date.now() - openedAt >= STEADY_MS) failures = 0;
        openedAt = null;
        timer = setTimeout(open, backoff(failures));
        failures += 1;
        handlers.onState("reconnecting");
      };
    }

    // Leaving the page must close the stream: a page kept in the back/forward cache
    // would otherwise hold its connection, and over HTTP/1.1 a browser has only six
    // per server, so a few clicks between the pages would stall the next one.
    const hide = () => {
      clearTimeout(timer);
      timer = null;
      if (source) source.close();
    };
    const show = (event) => {
      if (event.persisted && !stopped) {
        failures = 0;
        open();
      }
    };
    window.addEventListener("pagehide", hide);
    window.addEventListener("pageshow", show);

    open();
    return {
      stop() {
        stopped = true;
        window.removeEventListener("pagehide", hide);
        window.removeEventListener("pageshow", show);
        hide();
      },
    };
  }

  // Loads a JSON list (history), then follows its stream from the newest id in it,
  // so that nothing published in between is lost. While the list fails for want of
  // a server, it is asked again after growing pauses (`onListError(error, waitMs)`);
  // a refusal (400, 404 …) is not (`waitMs` null). Handlers: onList(items), onEvent(item), onState(state),
  // onListError(error, waitMs). Returns {stop()}.
  function loadAndFollow(listUrl, streamUrl, handlers) {
    let stopped = false;
    let stream = null;
    (async () => {
      for (let attempt = 0; ; attempt += 1) {
        const result = await api(listUrl);
        if (stopped) return;
        if (result.ok && Array.isArray(result.data)) {
          handlers.onList(result.data);
          const lastId = result.data.reduce((max, item) => (Number.isSafeInteger(item.id) ? Math.max(max, item.id) : max), 0);
          stream = follow(streamUrl, lastId, handlers);
          return;
        }
        const error = result.ok
          ? { status: result.status, code: "unexpected", message: "The server sent an unexpected answer.", field: null, problem: "", retryAfter: null }
          : result.error;
        // Asking again helps only when nothing answered, or the server was busy or down.
        if (error.status !== 0 && error.status !== 429 && error.status < 500) {
          handlers.onListError(error, null);
          return;
        }
        const wait = Math.max(backoff(attempt), (error.retryAfter || 0) * 1000);
        handlers.onListError(error, wait);
        handlers.onState("reconnecting");
        await sleep(wait);
        if (stopped) return;
      }
    })();
    return {
      stop() {
        stopped = true;
        if (stream) stream.stop();
      },
    };
  }

  // Puts an item (made by `make()`, carrying data-id) into `list`, kept in id order
  // (`newestFirst` or oldest first), once per id (`index`: id -> element), at most
  // `max` items: the oldest go. Returns the element, or null when the id is already
  // shown or older than everything kept in a full list.
  function placeById(list, index, id, make, newestFirst, max) {
    if (index.has(id)) return null;
    const oldest = newestFirst ? list.lastElementChild : list.firstElementChild;
    if (index.size >= max && oldest && id < Number(oldest.dataset.id)) return null;
    const item = make();
    if (newestFirst) {
      let next = list.firstElementChild;
      while (next && Number(next.dataset.id) > id) next = next.nextElementSibling;
      list.insertBefore(item, next);
    } else {
      // New items usually belong at the end: walk back from there.
      let next = null;
      for (let node = list.lastElementChild; node && Number(node.dataset.id) > id; node = node.previousElementSibling) next = node;
      list.insertBefore(item, next);
    }
    index.set(id, item);
    while (index.size > max) {
      const gone = newestFirst ? list.lastElementChild : list.firstElementChild;
      index.delete(Number(gone.dataset.id));
      gone.remove();
    }
    return item;
  }

  // "14:05", or "3 Mar, 14:05" when not today.
  function time(iso) {
    const date = new Date(iso);
    if (Number.isNaN(date.getTime())) return "";
    const clock = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    if (date.toDateString() === new Date().toDateString()) return clock;
    return date.toLocaleDateString([], { day: "numeric", month: "short" }) + ", " + clock;
  }

  function timeElement(iso) {
    return el("time", { datetime: iso, title: new Date(iso).toLocaleString(), text: time(iso) });
  }

  // Runs `start` once the document is parsed (scripts are deferred, so usually now).
  function ready(start) {
    if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
    else start();
  }

  return { $, el, store, sleep, backoff, api, fieldMessage, fieldError, showState, announce, follow, loadAndFollow, placeById, time, timeElement, ready };
})();

// The dashboard's core: the tab router, calls to /ui/api, and the one live event stream.
// Each tab is a module in ./tabs/<name>.js exporting `mount(root, ui)`; mount may return a
// function that undoes what it started (listeners, timers), called when another tab opens.
// No framework and no build: plain modules the daemon serves from its package.

import { checked, csrfHeaders } from "./http.js";

const API = "/ui/api";
const TABS = ["overview", "models", "activity", "logs", "playground"];

// Live events from /admin/events: one EventSource for the page, listeners by event name.
const listeners = new Map();
let source = null;

function openFeed() {
  const state = document.getElementById("feed-state");
  source = new EventSource(API + "/admin/events");
  // Live from the first event (the daemon sends a heartbeat once it has subscribed the
  // page), not from `open`, which fires on the headers a moment before.
  const live = () => {
    state.textContent = "live";
    state.className = "feed live";
  };
  source.addEventListener("error", () => {
    state.textContent = "reconnecting…";
    state.className = "feed down";
  });
  for (const name of ["pool", "request.started", "request.finished", "log", "heartbeat"]) {
    source.addEventListener(name, (event) => {
      live();
      const data = JSON.parse(event.data);
      for (const fn of listeners.get(name) ?? []) fn(data);
    });
  }
}

function element(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2).toLowerCase(), value);
    else if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key in el && typeof value !== "string") el[key] = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export const ui = {
  // GET a JSON answer from /ui/api<path>.
  async get(path) {
    const response = await checked(await fetch(API + path, { headers: { accept: "application/json" } }));
    return response.json();
  },

  // POST JSON to /ui/api<path>; the answer's JSON (null for an empty one).
  async post(path, body, { signal } = {}) {
    const response = await checked(
      await fetch(API + path, {
        method: "POST",
        headers: { "content-type": "application/json", ...csrfHeaders() },
        body: JSON.stringify(body),
        signal,
      }),
    );
    const text = await response.text();
    return text ? JSON.parse(text) : null;
  },

  // POST a streaming request (`stream: true` in body) and yield each SSE `data:` JSON until
  // [DONE]. Aborting `signal` closes the connection, which cancels the generation.
  async *stream(path, body, { signal } = {}) {
    const response = await checked(
      await fetch(API + path, {
        method: "POST",
        headers: { "content-type": "application/json", accept: "text/event-stream", ...csrfHeaders() },
        body: JSON.stringify(body),
        signal,
      }),
    );
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const frame = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of frame.split("\n")) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (data === "[DONE]") return;
          yield JSON.parse(data);
        }
      }
    }
  },

  // Listen to one live event (`pool`, `request.started`, `request.finished`, `log`,
  // `heartbeat`); returns the function that stops listening.
  on(name, fn) {
    if (!listeners.has(name)) listeners.set(name, new Set());
    listeners.get(name).add(fn);
    return () => listeners.get(name).delete(fn);
  },

  // element(tag, attrs, ...children): attrs `class`, `dataset`, `onclick`..., properties.
  h: element,

  // A short message at the bottom of the page (errors of actions).
  toast(message) {
    const box = document.getElementById("toast");
    box.textContent = message;
    box.hidden = false;
    clearTimeout(box.timer);
    box.timer = setTimeout(() => (box.hidden = true), 6000);
  },

  fmt: {
    bytes(n) {
      if (n === null || n === undefined) return "–";
      const units = ["B", "KB", "MB", "GB", "TB"];
      let i = 0;
      while (Math.abs(n) >= 1000 && i < units.length - 1) {
        n /= 1000;
        i += 1;
      }
      return `${n.toFixed(i && n < 10 ? 1 : 0)} ${units[i]}`;
    },
    seconds(s) {
      if (s === null || s === undefined) return "–";
      if (s < 1) return `${Math.round(s * 1000)} ms`;
      if (s < 120) return `${s.toFixed(1)} s`;
      if (s < 7200) return `${Math.round(s / 60)} min`;
      return `${(s / 3600).toFixed(1)} h`;
    },
    time(t) {
      return t ? new Date(t * 1000).toLocaleTimeString() : "–";
    },
    number(n, digits = 1) {
      return n === null || n === undefined ? "–" : Number(n).toFixed(digits);
    },
  },
};

let unmount = null;

let shown = 0; // which call of show() is the latest: a tab opened while another mounts wins

async function show() {
  const call = ++shown;
  const name = TABS.includes(location.hash.slice(1)) ? location.hash.slice(1) : "overview";
  for (const link of document.querySelectorAll("#tabs a")) {
    link.classList.toggle("active", link.dataset.tab === name);
  }
  if (typeof unmount === "function") unmount();
  unmount = null;
  const view = document.getElementById("view");
  view.replaceChildren();
  view.dataset.tab = name;
  const module = await import(`./tabs/${name}.js`);
  if (call !== shown) return; // another tab was chosen while this one loaded
  const cleanup = await module.mount(view, ui);
  if (call !== shown) {
    // another tab opened while this one mounted: undo this one at once
    if (typeof cleanup === "function") cleanup();
    return;
  }
  unmount = cleanup;
}

async function logout() {
  try {
    await checked(await fetch("/ui/logout", { method: "POST", headers: csrfHeaders() }));
    window.location.assign("/ui");
  } catch (error) {
    ui.toast(`Logging out failed: ${error.message}`);
  }
}

window.addEventListener("hashchange", show);
document.getElementById("logout").addEventListener("click", logout);
// The button shows only when the daemon has a key (a login to end).
fetch("/ui/session")
  .then((r) => r.json())
  .then((session) => (document.getElementById("logout").hidden = !session.login_required));
openFeed();
// Log lines are collected from page load, whichever tab is open (the daemon keeps none).
import("./tabs/logs.js").then((logs) => logs.collect(ui));
show();

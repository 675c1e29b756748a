// The logs tab: the daemon's log lines as they are logged (`log` events), newest at the
// bottom, filtered by level and by model. The daemon keeps no log history for the page, so
// lines are collected from the page's load (core.js calls `collect`), also while another tab
// is shown, at most LIMIT of them.

const LIMIT = 2000;
const LEVELS = ["debug", "info", "warning", "error", "critical"];

// Kept across tab switches: the lines so far, the filters, and who draws new lines.
const lines = [];
const filters = { level: "debug", model: "" };
let collecting = false;
let draw = null;

export function collect(ui) {
  if (collecting) return;
  collecting = true;
  ui.on("log", (line) => {
    lines.push(line);
    if (lines.length > LIMIT) lines.splice(0, lines.length - LIMIT);
    draw?.(line);
  });
}

export function mount(root, ui) {
  const { h } = ui;
  collect(ui);
  const level = h(
    "select",
    { id: "log-level", title: "show this level and above" },
    ...LEVELS.slice(0, 4).map((name) => h("option", { value: name }, `${name} and above`)),
  );
  level.value = filters.level;
  const model = h("input", {
    id: "log-model",
    type: "search",
    placeholder: "model",
    autocomplete: "off",
    spellcheck: false,
    title: "lines about this model (the ones that carry one)",
  });
  model.value = filters.model;
  const shownCount = h("span", { class: "muted" });
  const box = h("div", { id: "log-lines", class: "log-lines mono", tabindex: "0" });
  const jump = h("button", { class: "jump", hidden: true, onclick: () => scrollToEnd() }, "new lines below ↓");
  const clear = h("button", { onclick: () => ((lines.length = 0), redraw()) }, "Clear");
  root.append(
    h(
      "section",
      { class: "panel" },
      h("div", { class: "toolbar" }, h("h2", {}, "Logs"), level, model, clear, shownCount),
      h("div", { class: "log-frame" }, box, jump),
    ),
  );

  function element(line) {
    return h(
      "div",
      { class: "log-line", dataset: { level: line.level, model: line.model ?? "" } },
      h("span", { class: "log-time" }, new Date(line.time * 1000).toLocaleTimeString()),
      h("span", { class: "log-level" }, line.level.toUpperCase()),
      h("span", { class: "log-logger" }, line.logger),
      h("span", { class: "log-message" }, line.message),
    );
  }

  function visible(line) {
    const rank = LEVELS.indexOf(line.level); // a level of its own (-1) always shows
    if (rank >= 0 && rank < LEVELS.indexOf(filters.level)) return false;
    const wanted = filters.model.trim().toLowerCase();
    return !wanted || (line.model ?? "").toLowerCase().includes(wanted);
  }

  function atEnd() {
    return box.scrollHeight - box.scrollTop - box.clientHeight < 8;
  }

  function scrollToEnd() {
    box.scrollTop = box.scrollHeight;
    jump.hidden = true;
  }

  function counts() {
    const shown = [...box.children].filter((el) => !el.hidden).length;
    shownCount.textContent = `${shown} of ${lines.length} lines (the last ${LIMIT.toLocaleString()} kept)`;
  }

  function redraw() {
    box.replaceChildren(
      ...lines.map((line) => {
        const el = element(line);
        el.hidden = !visible(line);
        return el;
      }),
    );
    scrollToEnd();
    counts();
  }

  draw = (line) => {
    const follow = atEnd(); // scrolled up to read: stay there, and say that lines came
    const el = element(line);
    el.hidden = !visible(line);
    box.append(el);
    while (box.children.length > LIMIT) box.firstElementChild.remove();
    if (follow) scrollToEnd();
    else if (!el.hidden) jump.hidden = false;
    counts();
  };

  level.addEventListener("change", () => {
    filters.level = level.value;
    redraw();
  });
  model.addEventListener("input", () => {
    filters.model = model.value;
    redraw();
  });
  box.addEventListener("scroll", () => {
    if (atEnd()) jump.hidden = true;
  });
  redraw();
  return () => {
    draw = null;
  };
}

// The overview tab: the memory budget as a bar, the loaded entries and their states, and the
// pool's live figures. It re-reads /admin/pool when a live event says something changed
// (debounced), never on a timer; the one-second tick only ages the relative times shown.

//: seconds of finished requests the "tokens per second now" figure averages over
const WINDOW = 10;
//: events within this many ms share one re-read of /admin/pool
const DEBOUNCE_MS = 200;

export function mount(root, ui) {
  const { h, fmt } = ui;
  const bar = h("div", { id: "budget-bar", class: "budget-bar", role: "img" });
  const budgetText = h("span", { id: "budget-text", class: "budget-text" }, "–");
  const budgetNote = h("span", { id: "budget-note", class: "muted" });
  const legend = h("ul", { class: "legend" });
  const mlxText = h("p", { id: "mlx-memory", class: "muted small" });
  const figures = h("section", { class: "figures" });
  const figure = (id, label, hint) => {
    const value = h("div", { class: "figure-value", id }, "–");
    figures.append(h("div", { class: "figure", title: hint }, value, h("div", { class: "muted" }, label)));
    return value;
  };
  const loadedCount = figure("loaded-count", "loaded", "entries in the pool / pool.max_models");
  const queueDepth = figure("queue-depth", "waiting", "requests waiting for room in the pool");
  const inFlight = figure("in-flight", "in flight", "requests holding a loaded entry now");
  const tokensNow = figure("tokens-per-second", "tokens/s now", `completion tokens per second of the requests that finished in the last ${WINDOW} s`);
  const rows = h("tbody");
  const table = h(
    "table",
    { id: "loaded", class: "grid" },
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        h("th", {}, "model"),
        h("th", {}, "type"),
        h("th", {}, "state"),
        h("th", { class: "num" }, "memory"),
        h("th", { class: "num" }, "in flight"),
        h("th", {}, "idle since"),
        h("th", {}, "expires"),
        h("th", { class: "num" }, "load time"),
      ),
    ),
    rows,
  );
  const empty = h("p", { class: "muted empty" }, "Nothing is loaded. Load a model on the Models tab, or send it a request.");
  root.append(
    h(
      "section",
      { class: "panel" },
      h("h2", {}, "Memory"),
      h("div", { class: "budget-head" }, budgetText, budgetNote),
      bar,
      legend,
      mlxText,
    ),
    figures,
    h("section", { class: "panel" }, h("h2", {}, "Loaded"), table, empty),
  );

  let status = null;
  // (id, end time, completion tokens, seconds generating) of recently finished requests
  let finished = [];
  let closed = false;

  function render() {
    if (!status) return;
    const used = status.entries.reduce((sum, e) => sum + e.bytes, 0);
    const limit = status.max_bytes ?? status.machine_memory_bytes ?? used;
    budgetText.textContent = `${fmt.bytes(used)} of ${fmt.bytes(limit)}`;
    const machine = status.machine_memory_bytes;
    budgetNote.textContent = status.max_bytes
      ? `budget: pool.max_memory · machine: ${machine ? fmt.bytes(machine) : "unknown"}`
      : machine
        ? "of the machine's memory (no pool.max_memory set)"
        : "no pool.max_memory set, and the machine's memory is unknown";
    bar.setAttribute("aria-label", budgetText.textContent);
    const hue = hues(status.entries.map((entry) => entry.id));
    bar.replaceChildren(
      ...status.entries.map((entry) => {
        const segment = h("div", {
          class: `bar-segment ${hue(entry.id)}${entry.state === "loading" ? " loading" : ""}`,
          dataset: { model: entry.id },
          title: `${entry.id}: ${fmt.bytes(entry.bytes)}`,
        });
        segment.style.width = `${limit ? Math.min(100, (100 * entry.bytes) / limit) : 0}%`;
        return segment;
      }),
    );
    legend.replaceChildren(
      ...status.entries.map((entry) =>
        h("li", {}, h("span", { class: `swatch ${hue(entry.id)}` }), entry.id, " ", h("span", { class: "muted" }, fmt.bytes(entry.bytes))),
      ),
    );
    mlxText.textContent =
      `MLX: ${fmt.bytes(status.mlx_active_bytes)} active, ${fmt.bytes(status.mlx_cache_bytes)} cached` +
      ` (limit ${status.mlx_cache_limit === null ? "MLX's default" : fmt.bytes(status.mlx_cache_limit)}),` +
      ` ${fmt.bytes(status.mlx_peak_bytes)} peak · ${status.loads} loads, ${status.evictions} evictions`;
    loadedCount.textContent = `${status.entries.length} / ${status.max_models}`;
    queueDepth.textContent = String(status.queue_depth);
    inFlight.textContent = String(status.entries.reduce((sum, e) => sum + e.in_flight, 0));
    rows.replaceChildren(...status.entries.map(row));
    empty.hidden = status.entries.length > 0;
    renderTokens();
  }

  function row(entry) {
    const tr = h(
      "tr",
      { dataset: { model: entry.id } },
      h("td", {}, entry.id, entry.base ? h("span", { class: "muted" }, ` on ${entry.base}`) : null),
      h("td", {}, entry.kind === "adapter" ? "adapter" : entry.worker ? "distributed" : entry.type),
      h("td", { class: `state ${stateClass(entry)}` }, stateText(entry)),
      h("td", { class: "num" }, fmt.bytes(entry.bytes)),
      h("td", { class: "num" }, String(entry.in_flight)),
      h("td", { class: "idle-since" }),
      h("td", { class: "expires" }),
      h("td", { class: "num" }, fmt.seconds(entry.load_seconds)),
    );
    age(tr, entry);
    return tr;
  }

  // The cells that count time: rewritten each second in place, so a selection survives.
  function age(tr, entry) {
    const now = Date.now() / 1000;
    const idle = entry.state === "loaded" && entry.in_flight === 0;
    tr.querySelector(".idle-since").textContent = idle
      ? `${fmt.time(entry.last_used)} (${ago(now - entry.last_used)})`
      : "–";
    tr.querySelector(".expires").replaceChildren(
      entry.pinned
        ? h("span", { class: "badge ok" }, "pinned")
        : entry.expires_at !== null
          ? `in ${fmt.seconds(Math.max(0, entry.expires_at - now))}`
          : idle
            ? h("span", { class: "muted" }, "when evicted")
            : "–",
    );
  }

  function renderTokens() {
    const now = Date.now() / 1000;
    finished = finished.filter((r) => r.end > now - WINDOW);
    let tokens = 0;
    for (const r of finished) {
      // Only the part of each generation inside the window counts, so a long stream that just
      // ended does not show as a burst.
      const start = r.end - r.span;
      const overlap = Math.min(r.end, now) - Math.max(start, now - WINDOW);
      tokens += r.span > 0 ? (r.tokens * Math.max(0, overlap)) / r.span : r.tokens;
    }
    tokensNow.textContent = fmt.number(tokens / WINDOW, 1);
  }

  function remember(record, end) {
    // one seen live and then in the ring read at mount counts once
    if (!record.completion_tokens || finished.some((r) => r.id === record.id)) return;
    const span = record.tokens_per_second ? record.completion_tokens / record.tokens_per_second : record.latency;
    finished.push({ id: record.id, end, tokens: record.completion_tokens, span });
  }

  let timer = null;
  let fetching = false;
  let again = false;
  let failed = false;

  async function refresh() {
    if (fetching) {
      again = true; // one more read once this one ends, so the last change is never missed
      return;
    }
    fetching = true;
    try {
      status = await ui.get("/admin/pool");
      failed = false;
      if (!closed) render();
    } catch (error) {
      if (!failed) ui.toast(`Reading the pool failed: ${error.message}`);
      failed = true; // one toast per outage, not one per event
    } finally {
      fetching = false;
      if (again) {
        again = false;
        schedule();
      }
    }
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(refresh, DEBOUNCE_MS);
  }

  const offs = [
    ui.on("pool", schedule),
    ui.on("request.started", schedule),
    ui.on("request.finished", (record) => {
      remember(record, Date.now() / 1000);
      schedule();
    }),
  ];
  const tick = setInterval(() => {
    if (!status) return;
    status.entries.forEach((entry, index) => rows.children[index] && age(rows.children[index], entry));
    renderTokens();
  }, 1000);

  refresh();
  ui.get("/admin/activity")
    .then((answer) => {
      for (const record of answer.requests) remember(record, record.time + record.latency);
      renderTokens();
    })
    .catch((error) => ui.toast(`Reading the activity failed: ${error.message}`));

  return () => {
    closed = true;
    for (const off of offs) off();
    clearTimeout(timer);
    clearInterval(tick);
  };
}

function stateText(entry) {
  const group = entry.worker ? ` (group ${entry.worker.state})` : "";
  if (entry.state === "loading") return `loading${group}`;
  if (entry.in_flight > 0) return `serving ${entry.in_flight}${group}`;
  return `ready${group}`;
}

function stateClass(entry) {
  if (entry.state === "loading") return "is-loading";
  return entry.in_flight > 0 ? "is-serving" : "is-ready";
}

// A colour class per id: each id keeps its own (from a hash of it) across refreshes unless
// another loaded id has it, then the next free one, so no two segments of the bar look alike
// (up to the six colours there are).
const HUES = 6;

function hues(ids) {
  const taken = new Map();
  const used = new Set();
  for (const id of [...ids].sort()) {
    let sum = 0;
    for (const char of id) sum = (sum * 31 + char.codePointAt(0)) % 9973;
    let index = sum % HUES;
    for (let tries = 1; tries < HUES && used.has(index); tries += 1) index = (index + 1) % HUES;
    taken.set(id, index);
    used.add(index);
  }
  return (id) => `hue-${taken.get(id) ?? 0}`;
}

function ago(seconds) {
  if (seconds < 60) return `${Math.max(0, Math.round(seconds))} s ago`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min ago`;
  return `${(seconds / 3600).toFixed(1)} h ago`;
}

// The models tab: every id the registry serves (/v1/models) with what it is and where it came
// from, its details and effective settings on demand (/v1/models/{id}), and Load, Unload and
// Pin through the admin API. Pool events re-read the list (debounced), so loads started
// elsewhere show too.

const DEBOUNCE_MS = 200;
const SOURCES = { config: "config", model_dir: "folder", hf_cache: "HF cache", remote: "upstream" };

export function mount(root, ui) {
  const { h, fmt } = ui;
  const filter = h("input", {
    id: "models-filter",
    type: "search",
    placeholder: "Filter by id, type, source or capability",
    autocomplete: "off",
    spellcheck: false,
  });
  const count = h("span", { class: "muted" });
  const rows = h("tbody");
  const table = h(
    "table",
    { id: "models-table", class: "grid" },
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        h("th", {}, "model"),
        h("th", {}, "type"),
        h("th", {}, "source"),
        h("th", { class: "num" }, "on disk"),
        h("th", { class: "num" }, "in memory"),
        h("th", { class: "num" }, "context"),
        h("th", {}, "capabilities"),
        h("th", {}, "state"),
        h("th", {}, "pin"),
        h("th", {}, ""),
      ),
    ),
    rows,
  );
  root.append(h("section", { class: "panel" }, h("div", { class: "toolbar" }, h("h2", {}, "Models"), filter, count), table));

  let cards = [];
  let pool = { entries: [] };
  const expanded = new Set();
  const details = new Map(); // id -> GET /v1/models/{id} answer, read when first opened
  const busy = new Set(); // ids with an action under way

  let drawn = "";

  function render() {
    // Unchanged data is not drawn again, so focus and hover survive a refresh.
    const now = JSON.stringify([cards, pool.entries, [...busy], [...expanded], [...details.keys()]]);
    if (now === drawn) return;
    drawn = now;
    const entries = new Map(pool.entries.map((e) => [e.id, e]));
    // An alias's row shows the entry of the id it stands for (the pool lists canonical ids).
    rows.replaceChildren(...cards.flatMap((card) => rowsFor(card, entries.get(card.alias_of ?? card.id))));
    applyFilter();
  }

  function rowsFor(card, entry) {
    const id = card.id;
    const state = entry ? (entry.state === "loading" ? "loading" : "loaded") : card.loaded ? "loaded" : "not loaded";
    const remote = card.kind === "remote";
    const open = expanded.has(id);
    const action = (name, label, enabled, body) =>
      h("button", { dataset: { action: name }, disabled: !enabled || busy.has(id), onclick: () => act(id, name, body) }, label);
    const pinned = Boolean(entry?.pinned);
    const row = h(
      "tr",
      { dataset: { model: id, search: searchText(card).toLowerCase() }, class: card.available ? "" : "unavailable" },
      h(
        "td",
        {},
        h("button", { class: "link toggle", "aria-expanded": String(open), title: "details and settings", onclick: () => toggle(id) }, open ? "▾" : "▸"),
        " ",
        h("span", { class: "model-id" }, id),
        card.available ? null : h("span", { class: "badge bad", title: "an upstream down, an architecture this server cannot run, or a missing extra" }, "unavailable"),
      ),
      h("td", {}, typeOf(card)),
      h("td", {}, sourceOf(card)),
      h("td", { class: "num" }, remote ? "–" : fmt.bytes(card.size_bytes)),
      h("td", { class: "num" }, entry ? fmt.bytes(entry.bytes) : "–"),
      h("td", { class: "num" }, card.context_length ? card.context_length.toLocaleString() : "–"),
      h("td", { class: "caps" }, ...card.capabilities.map((c) => h("span", { class: "cap" }, c))),
      h("td", { class: `state ${state.replace(" ", "-")}` }, busy.has(id) ? `${state}…` : state),
      h("td", { class: "pin" }, pinned ? h("span", { class: "badge ok" }, "pinned") : ""),
      h(
        "td",
        {},
        h(
          "div",
          { class: "actions" },
          action("load", "Load", !remote && state === "not loaded", { model: id }),
          action("unload", "Unload", !remote && state === "loaded", { model: id }),
          action("pin", pinned ? "Unpin" : "Pin", !remote && card.available, { model: id, pin: !pinned }),
        ),
      ),
    );
    if (!open) return [row];
    return [row, h("tr", { class: "details", dataset: { detailFor: id } }, h("td", { colspan: 10 }, detailPane(id)))];
  }

  function detailPane(id) {
    const detail = details.get(id);
    if (!detail) return h("span", { class: "muted" }, "reading…");
    const facts = [
      ["kind", detail.kind],
      ["base", detail.base],
      ["upstream", detail.upstream],
      ["architecture", detail.architecture],
      ["quantization", detail.quantization_bits ? `${detail.quantization_bits}-bit` : "none"],
      ["context length", detail.context_length],
      ["dimensions", detail.dimensions],
      ["max input tokens", detail.max_input_tokens],
      ["matryoshka", detail.type === "embedding" ? String(detail.matryoshka) : null],
      ["owned by", detail.owned_by],
      ["created", detail.created ? new Date(detail.created * 1000).toLocaleString() : null],
    ];
    const settings = Object.entries(detail.settings ?? {}).filter(([, value]) => !unset(value));
    return h(
      "div",
      { class: "detail-grid" },
      h("div", {}, h("h3", {}, "Model"), definitions(facts.filter(([, value]) => value !== null && value !== undefined))),
      h(
        "div",
        {},
        h("h3", {}, "Settings in effect"),
        settings.length
          ? definitions(settings.map(([key, value]) => [key, typeof value === "object" ? JSON.stringify(value) : String(value)]))
          : h("p", { class: "muted" }, "none set: requests' own values, else the built-in defaults"),
      ),
    );
  }

  function definitions(pairs) {
    return h("dl", {}, ...pairs.flatMap(([key, value]) => [h("dt", {}, key), h("dd", { class: "mono" }, String(value))]));
  }

  async function toggle(id) {
    if (expanded.has(id)) expanded.delete(id);
    else expanded.add(id);
    render();
    if (!expanded.has(id) || details.has(id)) return;
    try {
      details.set(id, await ui.get(`/v1/models/${id.split("/").map(encodeURIComponent).join("/")}`));
      render();
    } catch (error) {
      expanded.delete(id);
      render();
      ui.toast(`Reading ${id} failed: ${error.message}`);
    }
  }

  async function act(id, name, body) {
    busy.add(id);
    render();
    try {
      const answer = await ui.post(name === "unload" ? "/admin/unload" : "/admin/load", body);
      pool = answer.pool;
    } catch (error) {
      ui.toast(`${name[0].toUpperCase()}${name.slice(1)} ${id}: ${error.message}`);
    } finally {
      busy.delete(id);
      await refresh();
    }
  }

  function applyFilter() {
    const words = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
    let shown = 0;
    let match = true;
    for (const tr of rows.children) {
      if (tr.dataset.model !== undefined) {
        match = words.every((word) => tr.dataset.search.includes(word));
        if (match) shown += 1;
      }
      tr.hidden = !match; // a details row follows its model's row
    }
    count.textContent = words.length ? `${shown} of ${cards.length}` : `${cards.length} ids`;
  }

  let timer = null;
  let failed = false;

  async function refresh() {
    try {
      const [list, status] = await Promise.all([ui.get("/v1/models"), ui.get("/admin/pool")]);
      cards = list.data;
      pool = status;
      failed = false;
      render();
    } catch (error) {
      if (!failed) ui.toast(`Reading the models failed: ${error.message}`);
      failed = true;
    }
  }

  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(refresh, DEBOUNCE_MS);
  }

  filter.addEventListener("input", applyFilter);
  const off = ui.on("pool", schedule);
  refresh();
  return () => {
    off();
    clearTimeout(timer);
  };
}

// null, or an empty mapping (`chat_template_kwargs: {}`): nothing set
function unset(value) {
  return value === null || (typeof value === "object" && Object.keys(value).length === 0);
}

function typeOf(card) {
  if (card.kind === "adapter") return "adapter";
  if (card.kind === "remote") return `remote ${card.type}`;
  if (card.distributed) return `distributed ${card.type}`;
  return card.type;
}

function sourceOf(card) {
  if (card.kind === "remote") return `upstream ${card.upstream}`;
  const found = SOURCES[card.source] ?? "–";
  return card.converted_from === "gguf" ? `GGUF, ${found}` : found;
}

function searchText(card) {
  return [card.id, typeOf(card), sourceOf(card), card.architecture ?? "", ...card.capabilities].join(" ");
}

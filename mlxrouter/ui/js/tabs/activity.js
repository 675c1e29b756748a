// The activity tab: the last requests (the daemon's ring, /admin/activity, then each
// `request.finished` event put on top as it comes, at most `ui.history` rows) and a chart of
// tokens per second and requests per minute over the last 30 minutes, drawn on a canvas.

const MINUTES = 30;
//: finished requests the chart remembers at most (it needs 30 minutes of them)
const CHART_CAP = 50_000;

export function mount(root, ui) {
  const { h, fmt } = ui;
  const canvas = h("canvas", { id: "activity-chart", height: 180 });
  const summary = h("span", { class: "muted" });
  const rows = h("tbody");
  const empty = h("p", { class: "muted empty" }, "No requests yet.");
  const table = h(
    "table",
    { id: "activity-table", class: "grid" },
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        h("th", {}, "time"),
        h("th", {}, "surface"),
        h("th", {}, "model"),
        h("th", { class: "num" }, "status"),
        h("th", { class: "num", title: "prompt tokens" }, "prompt"),
        h("th", { class: "num", title: "prompt tokens reused from the prompt cache" }, "cached"),
        h("th", { class: "num", title: "completion tokens" }, "completion"),
        h("th", { class: "num", title: "time to first token" }, "TTFT"),
        h("th", { class: "num", title: "completion tokens per second of generation" }, "tok/s"),
        h("th", { class: "num" }, "latency"),
        h("th", {}, "error / prompt"),
      ),
    ),
    rows,
  );
  root.append(
    h(
      "section",
      { class: "panel" },
      h("div", { class: "toolbar" }, h("h2", {}, `Last ${MINUTES} minutes`), summary),
      h(
        "div",
        { class: "chart-legend muted" },
        h("span", { class: "key line" }),
        "tokens/s (left axis) ",
        h("span", { class: "key bars" }),
        "requests/min (right axis)",
      ),
      canvas,
    ),
    h("section", { class: "panel" }, h("h2", {}, "Requests"), table, empty),
  );

  let history = 500;
  // (end time, completion tokens) of finished requests, for the chart
  let points = [];

  function row(record) {
    const status = record.status;
    const tone = status < 400 ? "ok" : status === 499 ? "warn" : "bad";
    const note = [];
    if (record.error) note.push(h("div", { class: "error" }, record.error));
    if (record.prompt) {
      note.push(h("details", {}, h("summary", {}, "prompt"), h("pre", { class: "prompt" }, record.prompt)));
    }
    return h(
      "tr",
      { dataset: { requestId: String(record.id) } },
      h("td", { title: new Date(record.time * 1000).toLocaleString() }, fmt.time(record.time)),
      h("td", { class: "surface", title: record.kind }, record.surface),
      h("td", { class: "model" }, record.model),
      h("td", { class: "status num" }, h("span", { class: `badge ${tone}` }, String(status))),
      h("td", { class: "num" }, count(record.prompt_tokens)),
      h("td", { class: "num" }, count(record.cached_tokens)),
      h("td", { class: "num" }, count(record.completion_tokens)),
      h("td", { class: "num" }, fmt.seconds(record.ttft)),
      h("td", { class: "num" }, fmt.number(record.tokens_per_second, 1)),
      h("td", { class: "num" }, fmt.seconds(record.latency)),
      h("td", { class: "note" }, ...note),
    );
  }

  function add(record, end) {
    rows.prepend(row(record));
    while (rows.children.length > history) rows.lastElementChild.remove();
    empty.hidden = true;
    points.push({ end, tokens: record.completion_tokens });
    if (points.length > CHART_CAP) points = points.slice(-CHART_CAP);
  }

  function draw() {
    const now = Date.now() / 1000;
    const start = now - MINUTES * 60;
    points = points.filter((p) => p.end >= start);
    const requests = new Array(MINUTES).fill(0);
    const tokens = new Array(MINUTES).fill(0);
    for (const p of points) {
      const i = Math.min(MINUTES - 1, Math.floor((p.end - start) / 60));
      requests[i] += 1;
      tokens[i] += p.tokens;
    }
    const perSecond = tokens.map((t) => t / 60);
    const total = requests.reduce((a, b) => a + b, 0);
    summary.textContent = `${total} requests, ${tokens.reduce((a, b) => a + b, 0).toLocaleString()} completion tokens`;
    chart(canvas, requests, perSecond);
  }

  // Redrawn each 5 s so the time axis moves (a local timer, nothing is fetched).
  const tick = setInterval(draw, 5000);
  const resized = () => draw();
  window.addEventListener("resize", resized);
  const off = ui.on("request.finished", (record) => {
    add(record, Date.now() / 1000);
    draw();
  });

  ui.get("/admin/activity")
    .then((answer) => {
      history = answer.history || history;
      const live = new Set([...rows.children].map((tr) => tr.dataset.requestId));
      // Events that arrived during the read are on top already; the ring's go below them.
      const older = answer.requests.filter((r) => !live.has(String(r.id)));
      rows.append(...older.reverse().map(row));
      while (rows.children.length > history) rows.lastElementChild.remove();
      for (const record of older) points.push({ end: record.time + record.latency, tokens: record.completion_tokens });
      empty.hidden = rows.children.length > 0;
      draw();
    })
    .catch((error) => ui.toast(`Reading the activity failed: ${error.message}`));
  draw();

  return () => {
    off();
    clearInterval(tick);
    window.removeEventListener("resize", resized);
  };
}

function count(n) {
  return n === null || n === undefined ? "–" : n.toLocaleString();
}

// Requests per minute as bars (right axis) and tokens per second as a line (left axis), one
// slot per minute, oldest on the left; colours from the page's CSS variables (light or dark).
function chart(canvas, requests, perSecond) {
  const style = getComputedStyle(document.documentElement);
  const color = (name) => style.getPropertyValue(name).trim();
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 600;
  const height = canvas.clientHeight || 180;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, width, height);
  const pad = { left: 44, right: 40, top: 10, bottom: 22 };
  const w = width - pad.left - pad.right;
  const hgt = height - pad.top - pad.bottom;
  const slot = w / requests.length;
  const maxRequests = niceMax(Math.max(...requests));
  const maxTokens = niceMax(Math.max(...perSecond));
  g.font = "11px ui-monospace, SFMono-Regular, Menlo, monospace";
  g.fillStyle = color("--muted");
  g.strokeStyle = color("--line");
  g.lineWidth = 1;
  for (const fraction of [0, 0.5, 1]) {
    const y = Math.round(pad.top + hgt * (1 - fraction)) + 0.5;
    g.beginPath();
    g.moveTo(pad.left, y);
    g.lineTo(pad.left + w, y);
    g.stroke();
    g.textAlign = "right";
    g.fillText(label(maxTokens * fraction), pad.left - 6, y + 4);
    g.textAlign = "left";
    g.fillText(label(maxRequests * fraction), pad.left + w + 6, y + 4);
  }
  g.textAlign = "left";
  g.fillText(`-${requests.length} min`, pad.left, height - 6);
  g.textAlign = "right";
  g.fillText("now", pad.left + w, height - 6);
  g.fillStyle = color("--line");
  requests.forEach((n, i) => {
    const barHeight = (hgt * n) / maxRequests;
    g.fillRect(pad.left + i * slot + 1, pad.top + hgt - barHeight, Math.max(1, slot - 2), barHeight);
  });
  g.strokeStyle = color("--accent");
  g.lineWidth = 2;
  g.beginPath();
  perSecond.forEach((v, i) => {
    const x = pad.left + (i + 0.5) * slot;
    const y = pad.top + hgt - (hgt * v) / maxTokens;
    if (i === 0) g.moveTo(x, y);
    else g.lineTo(x, y);
  });
  g.stroke();
}

// An axis maximum of 1, 2 or 5 times a power of ten, at least the value (1 for nothing).
function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) if (value <= step * power) return step * power;
  return 10 * power;
}

function label(value) {
  return String(Number(value.toPrecision(2))); // 0.25, 2.5, 50
}

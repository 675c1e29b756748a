// The playground: chat with a model through /v1/chat/completions, streamed, with the reasoning
// apart from the answer, a Stop button (aborting the fetch closes the connection, and the
// daemon cancels the generation and frees the model's lease), sampling settings and the last
// answer's figures; two texts' similarity with an embedding model; an image for a vision
// model. Model output and model ids are untrusted text: they reach the page as text nodes.

const IMAGE_TYPES = "image/png,image/jpeg,image/webp,image/gif";

// The conversation and the settings outlive the tab (the module stays loaded), so a look at
// Activity and back keeps them; a reload of the page starts afresh.
const state = {
  model: null,
  // {role: "user", text, image, kept} and {role: "assistant", model, text, reasoning, note, kept}
  turns: [],
  system: "",
  temperature: "",
  top_p: "",
  max_tokens: "",
  embedModel: null,
  textA: "",
  textB: "",
};

const isVision = (card) => card.type === "vision" || (card.capabilities ?? []).includes("vision");
const isEmbedding = (card) => card.type === "embedding";

// `org/name` ids keep their slash: the route takes the rest of the path as the id.
const modelPath = (id) => "/v1/models/" + id.split("/").map(encodeURIComponent).join("/");

// The numbers of a settings field, or undefined when it is empty (the model's defaults apply).
function numberOf(input) {
  return input.value.trim() === "" ? undefined : Number(input.value);
}

function cosine(a, b) {
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let i = 0; i < a.length; i += 1) {
    dot += a[i] * b[i];
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  return na && nb ? dot / Math.sqrt(na * nb) : null;
}

function readAsDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.addEventListener("load", () => resolve(reader.result));
    reader.addEventListener("error", () => reject(reader.error ?? new Error("the file could not be read")));
    reader.readAsDataURL(file);
  });
}

export function mount(root, ui) {
  const { h } = ui;
  let cards = [];
  let generation = null; // {controller} while an answer streams
  let attached = null; // {name, url}: the image the next message carries
  let closed = false;

  // ---- the chat pane ----
  const modelSelect = h("select", { id: "pg-model", "aria-label": "Model", disabled: true },
    h("option", { value: "" }, "loading models…"));
  const transcript = h("div", { id: "pg-transcript", class: "pg-transcript", "aria-live": "polite" });
  const input = h("textarea", {
    id: "pg-input",
    rows: 3,
    placeholder: "Message (Enter sends, Shift+Enter for a new line)",
    "aria-label": "Message",
  });
  const send = h("button", { id: "pg-send", class: "primary", type: "button", disabled: true }, "Send");
  const stop = h("button", { id: "pg-stop", type: "button", disabled: true }, "Stop");
  const clear = h("button", { id: "pg-clear", type: "button" }, "Clear");
  const stats = h("div", { id: "pg-stats", class: "pg-stats muted" }, "No answer yet.");
  const imageInput = h("input", { id: "pg-image", type: "file", accept: IMAGE_TYPES });
  const imageName = h("span", { class: "pg-image-name muted" });
  const imageDrop = h("button", { type: "button", class: "link", hidden: true }, "Remove");
  const imageRow = h("div", { class: "pg-image", hidden: true },
    h("label", { for: "pg-image" }, "Image"), imageInput, imageName, imageDrop);

  // ---- the settings ----
  const system = h("textarea", { id: "pg-system", rows: 3, placeholder: "none" });
  const temperature = h("input", { id: "pg-temperature", type: "number", min: "0", max: "2", step: "0.1", placeholder: "default" });
  const topP = h("input", { id: "pg-top-p", type: "number", min: "0", max: "1", step: "0.05", placeholder: "default" });
  const maxTokens = h("input", { id: "pg-max-tokens", type: "number", min: "1", step: "1", placeholder: "default" });
  system.value = state.system;
  temperature.value = state.temperature;
  topP.value = state.top_p;
  maxTokens.value = state.max_tokens;
  const field = (label, control) => h("label", { class: "pg-field" }, h("span", {}, label), control);
  const settings = h("section", { class: "panel pg-settings" },
    h("h2", {}, "Settings"),
    field("System prompt", system),
    h("div", { class: "pg-numbers" },
      field("Temperature", temperature),
      field("top_p", topP),
      field("Max tokens", maxTokens)),
    h("p", { class: "muted pg-hint" }, "Empty fields use the model's defaults (its ",
      h("code", {}, "models:"), " entry, then ", h("code", {}, "defaults:"), ")."));

  const side = h("div", { class: "pg-side" }, settings);
  const chat = h("section", { class: "panel pg-chat" },
    h("div", { class: "pg-bar" }, h("label", { for: "pg-model" }, "Model"), modelSelect, clear),
    transcript,
    imageRow,
    h("div", { class: "pg-compose" }, input, h("div", { class: "pg-actions" }, send, stop)),
    stats);
  root.append(h("div", { class: "pg" }, chat, side));

  // ---- the transcript ----
  function turnView(turn) {
    if (turn.role === "user") {
      const el = h("div", { class: "turn user" + (turn.kept === false ? " failed" : "") },
        h("div", { class: "who" }, "You"),
        turn.image ? h("img", { class: "pg-thumb", src: turn.image, alt: "the attached image" }) : null,
        turn.text ? h("div", { class: "text" }, turn.text) : null);
      return { el };
    }
    const reasoning = h("div", { class: "reasoning" }, turn.reasoning);
    const thinking = h("details", { class: "thinking", open: !turn.text, hidden: !turn.reasoning },
      h("summary", {}, "Reasoning"), reasoning);
    const answer = h("div", { class: "answer" }, turn.text);
    const note = h("div", { class: "note muted" }, turn.note ?? "");
    const el = h("div", { class: "turn assistant" + (turn.kept === false ? " failed" : "") },
      h("div", { class: "who" }, turn.model), thinking, answer, note);
    return { el, thinking, reasoning, answer, note };
  }

  function renderTranscript() {
    transcript.replaceChildren();
    if (!state.turns.length) {
      transcript.append(h("p", { class: "pg-empty muted" }, "Send a message to start a conversation."));
      return;
    }
    for (const turn of state.turns) transcript.append(turnView(turn).el);
    transcript.scrollTop = transcript.scrollHeight;
  }

  function appendTurn(turn) {
    transcript.querySelector(".pg-empty")?.remove();
    const view = turnView(turn);
    transcript.append(view.el);
    transcript.scrollTop = transcript.scrollHeight;
    return view;
  }

  // Follow the stream only when the reader is at the bottom already (not while scrolled up).
  function follow(write) {
    const atBottom = transcript.scrollHeight - transcript.scrollTop - transcript.clientHeight < 40;
    write();
    if (atBottom) transcript.scrollTop = transcript.scrollHeight;
  }

  // ---- sending ----
  const selected = () => cards.find((card) => card.id === modelSelect.value) ?? null;

  function setBusy(busy) {
    send.disabled = busy || !selected();
    stop.disabled = !busy;
    modelSelect.disabled = busy || !cards.some((card) => !isEmbedding(card));
  }

  // The turns sent with the next message: the exchanges that got an answer (a stopped one as
  // far as it went). One that failed, or was stopped before its first word, stays on screen
  // but is left out, so user and assistant turns keep alternating as templates expect.
  function history() {
    const messages = [];
    if (system.value.trim()) messages.push({ role: "system", content: system.value });
    for (const turn of state.turns) {
      if (turn.kept === false) continue;
      messages.push(turn.role === "user" ? userMessage(turn) : { role: "assistant", content: turn.text });
    }
    return messages;
  }

  function userMessage(turn) {
    if (!turn.image) return { role: "user", content: turn.text };
    const parts = [{ type: "image_url", image_url: { url: turn.image } }];
    if (turn.text) parts.push({ type: "text", text: turn.text });
    return { role: "user", content: parts };
  }

  function leaveOut(user, reply, userView, view) {
    user.kept = false;
    reply.kept = false;
    userView.el.classList.add("failed");
    view.el.classList.add("failed");
  }

  async function submit() {
    const card = selected();
    if (generation || !card) return;
    const text = input.value.trim();
    if (!text && !attached) {
      input.focus();
      return;
    }
    const user = { role: "user", text, image: attached?.url ?? null };
    const reply = { role: "assistant", model: card.id, text: "", reasoning: "", note: "" };
    state.turns.push(user);
    const messages = history();
    state.turns.push(reply);
    input.value = "";
    detachImage();
    const userView = appendTurn(user);
    const view = appendTurn(reply);
    view.note.textContent = "waiting for the first token…";
    stats.textContent = "Generating…";

    const body = {
      model: card.id,
      messages,
      stream: true,
      stream_options: { include_usage: true },
      temperature: numberOf(temperature),
      top_p: numberOf(topP),
      max_tokens: numberOf(maxTokens),
    };
    const controller = new AbortController();
    generation = { controller };
    setBusy(true);
    const started = performance.now();
    let first = null;
    let usage = null;
    let finish = null;
    let failed = false;
    try {
      for await (const chunk of ui.stream("/v1/chat/completions", body, { signal: controller.signal })) {
        // An engine failure after the answer began comes in-band, as OpenAI sends it.
        if (chunk.error) throw new Error(chunk.error.message);
        if (chunk.usage) usage = chunk.usage;
        const choice = chunk.choices?.[0];
        if (!choice) continue;
        const delta = choice.delta ?? {};
        // reasoning_content and reasoning carry the same text: read one
        const thought = delta.reasoning_content ?? delta.reasoning ?? "";
        if ((thought || delta.content) && first === null) {
          first = performance.now();
          view.note.textContent = "";
        }
        follow(() => {
          if (thought) {
            reply.reasoning += thought;
            view.reasoning.textContent = reply.reasoning;
            view.thinking.hidden = false;
          }
          if (delta.content) {
            reply.text += delta.content;
            view.answer.textContent = reply.text;
            view.thinking.open = false; // the answer began: fold the reasoning away
          }
        });
        if (choice.finish_reason) finish = choice.finish_reason;
      }
      reply.note = finish === "length" ? "cut at max tokens" : "";
    } catch (error) {
      if (controller.signal.aborted) {
        reply.note = reply.text ? "stopped" : "stopped before the answer (left out of the conversation)";
        if (!reply.text) leaveOut(user, reply, userView, view);
      } else {
        failed = true;
        reply.note = `failed: ${error.message} (left out of the conversation)`;
        leaveOut(user, reply, userView, view);
        ui.toast(`The model did not answer: ${error.message}`);
        if (!input.value) input.value = user.text; // ready to send again
      }
    } finally {
      generation = null;
      // Not after the tab closed, nor after Clear took the turn away.
      if (!closed && state.turns.includes(reply)) {
        view.note.textContent = reply.note;
        showStats({ started, first, ended: performance.now(), usage, finish, stopped: controller.signal.aborted, failed });
      }
      if (!closed) setBusy(false);
    }
  }

  // The last answer's figures: usage from the daemon, times measured here in the page.
  function showStats({ started, first, ended, usage, finish, stopped, failed }) {
    const parts = [];
    const data = {};
    if (failed) parts.push("failed");
    else if (stopped) parts.push("stopped");
    if (usage) {
      const cached = usage.prompt_tokens_details?.cached_tokens;
      const reasoning = usage.completion_tokens_details?.reasoning_tokens;
      parts.push(`prompt ${usage.prompt_tokens} tokens` + (cached ? ` (${cached} cached)` : ""));
      parts.push(`answer ${usage.completion_tokens} tokens` + (reasoning ? ` (${reasoning} reasoning)` : ""));
      data.promptTokens = usage.prompt_tokens;
      data.completionTokens = usage.completion_tokens;
    }
    if (first !== null) {
      const ttft = (first - started) / 1000;
      parts.push(`first token ${ui.fmt.seconds(ttft)}`);
      data.ttft = ttft.toFixed(3);
      // tokens after the first one, over the time after it
      const n = usage?.completion_tokens ?? 0;
      if (n > 1 && ended > first) {
        const rate = (n - 1) / ((ended - first) / 1000);
        parts.push(`${ui.fmt.number(rate)} tokens/s`);
        data.tokensPerSecond = rate.toFixed(2);
      }
    }
    if (finish) parts.push(`finish: ${finish}`);
    stats.textContent = parts.length ? parts.join(" · ") : "No figures (the answer ended early).";
    for (const key of Object.keys(stats.dataset)) delete stats.dataset[key];
    Object.assign(stats.dataset, data);
  }

  function onKey(event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      if (!send.disabled) submit();
    }
  }

  // ---- the image ----
  function detachImage() {
    attached = null;
    imageInput.value = "";
    imageName.textContent = "";
    imageDrop.hidden = true;
  }

  async function onImage() {
    const file = imageInput.files?.[0];
    if (!file) return detachImage();
    try {
      attached = { name: file.name, url: await readAsDataUrl(file) };
      imageName.textContent = `${file.name} (${ui.fmt.bytes(file.size)}), sent with the next message`;
      imageDrop.hidden = false;
    } catch (error) {
      detachImage();
      ui.toast(`Could not read the image: ${error.message}`);
    }
  }

  // ---- the model ----
  async function onModel() {
    const card = selected();
    state.model = card?.id ?? null;
    imageRow.hidden = !(card && isVision(card));
    if (imageRow.hidden) detachImage();
    setBusy(Boolean(generation));
    if (!card) return;
    // Show the defaults in effect for this id as the fields' placeholders.
    try {
      const detail = await ui.get(modelPath(card.id));
      if (closed || modelSelect.value !== card.id) return;
      const s = detail.settings ?? {};
      const shown = (value) => (value === null || value === undefined ? "default" : `default ${value}`);
      temperature.placeholder = shown(s.temperature);
      topP.placeholder = shown(s.top_p);
      maxTokens.placeholder = shown(s.max_tokens);
      system.placeholder = s.system_prompt ? `default: ${s.system_prompt}` : "none";
    } catch (error) {
      ui.toast(`Could not read ${card.id}'s settings: ${error.message}`);
    }
  }

  function fillModels() {
    const chatCards = cards.filter((card) => !isEmbedding(card));
    modelSelect.replaceChildren();
    if (!chatCards.length) {
      modelSelect.append(h("option", { value: "" }, "no chat model"));
      transcript.replaceChildren(h("p", { class: "pg-empty muted" },
        "No chat model is registered: add one to a model folder or the config's models:."));
      setBusy(false);
      return;
    }
    for (const card of chatCards) {
      const tags = [isVision(card) ? "vision" : null, card.kind === "adapter" ? "adapter" : null,
        card.kind === "remote" ? "remote" : null, card.available === false ? "unavailable" : null].filter(Boolean);
      modelSelect.append(h("option", { value: card.id, disabled: card.available === false },
        tags.length ? `${card.id} (${tags.join(", ")})` : card.id));
    }
    const usable = chatCards.filter((card) => card.available !== false);
    const choice = usable.find((card) => card.id === state.model) ?? usable.find((card) => card.loaded) ?? usable[0];
    modelSelect.value = choice ? choice.id : "";
    onModel();
  }

  // ---- similarity (with an embedding model) ----
  function similarityPanel(embedders) {
    const embedSelect = h("select", { id: "pg-embed-model", "aria-label": "Embedding model" },
      ...embedders.map((card) => h("option", { value: card.id }, card.id)));
    if (embedders.some((card) => card.id === state.embedModel)) embedSelect.value = state.embedModel;
    const textA = h("textarea", { id: "pg-text-a", rows: 3, placeholder: "first text" });
    const textB = h("textarea", { id: "pg-text-b", rows: 3, placeholder: "second text" });
    textA.value = state.textA;
    textB.value = state.textB;
    const compare = h("button", { id: "pg-compare", type: "button" }, "Compare");
    const score = h("output", { id: "pg-score", class: "pg-score" }, "–");
    const meter = h("div", { class: "pg-meter" }, h("div", { class: "pg-meter-fill" }));
    const caption = h("p", { class: "muted pg-hint" },
      "Cosine similarity of the two texts' embeddings: 1 is the same meaning, around 0 unrelated.");

    async function run() {
      const a = textA.value.trim();
      const b = textB.value.trim();
      if (!a || !b) {
        ui.toast("Type two texts to compare.");
        return;
      }
      compare.disabled = true;
      score.textContent = "…";
      try {
        const answer = await ui.post("/v1/embeddings", { model: embedSelect.value, input: [a, b], encoding_format: "float" });
        const [va, vb] = [...answer.data].sort((x, y) => x.index - y.index).map((item) => item.embedding);
        const value = cosine(va, vb);
        score.textContent = value === null ? "–" : value.toFixed(3);
        meter.firstChild.style.width = value === null ? "0" : `${Math.max(0, value) * 100}%`;
      } catch (error) {
        score.textContent = "–";
        ui.toast(`Could not embed the texts: ${error.message}`);
      } finally {
        compare.disabled = false;
      }
    }

    compare.addEventListener("click", run);
    embedSelect.addEventListener("change", () => (state.embedModel = embedSelect.value));
    textA.addEventListener("input", () => (state.textA = textA.value));
    textB.addEventListener("input", () => (state.textB = textB.value));
    return h("section", { id: "pg-similarity", class: "panel pg-similarity" },
      h("h2", {}, "Similarity"),
      field("Embedding model", embedSelect),
      field("Text A", textA),
      field("Text B", textB),
      h("div", { class: "pg-compare" }, compare, score),
      meter,
      caption);
  }

  async function loadModels() {
    try {
      cards = (await ui.get("/v1/models")).data ?? [];
    } catch (error) {
      if (closed) return;
      modelSelect.replaceChildren(h("option", { value: "" }, "models not listed"));
      ui.toast(`Could not list the models: ${error.message}`);
      return;
    }
    if (closed) return;
    fillModels();
    const embedders = cards.filter((card) => isEmbedding(card) && card.available !== false);
    if (embedders.length) side.append(similarityPanel(embedders));
  }

  // ---- wiring ----
  const keep = (key, el) => el.addEventListener("input", () => (state[key] = el.value));
  keep("system", system);
  keep("temperature", temperature);
  keep("top_p", topP);
  keep("max_tokens", maxTokens);
  modelSelect.addEventListener("change", onModel);
  send.addEventListener("click", submit);
  input.addEventListener("keydown", onKey);
  stop.addEventListener("click", () => generation?.controller.abort());
  clear.addEventListener("click", () => {
    generation?.controller.abort();
    state.turns = [];
    renderTranscript();
    stats.textContent = "No answer yet.";
    for (const key of Object.keys(stats.dataset)) delete stats.dataset[key];
  });
  imageInput.addEventListener("change", onImage);
  imageDrop.addEventListener("click", detachImage);

  renderTranscript();
  loadModels();

  // Leaving the tab stops an answer under way (its lease goes back at once).
  return () => {
    closed = true;
    generation?.controller.abort();
  };
}

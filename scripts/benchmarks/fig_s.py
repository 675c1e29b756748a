"""Figure s: the per-token cost of each API surface (Anthropic Messages, OpenAI Responses,
Ollama chat) against the chat path, the same request streamed through each in one run."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from .common import Figure, fmt_s, median, plural

if TYPE_CHECKING:
    from .suite import Bench

KEY = "s"
TITLE = "per-token cost of each API surface vs the chat path"
TARGET = "≤ 1.02x chat"
ASK = "Write a long story about a fox who lives in a forest."
MODEL = "smollm2"


@dataclass
class Stream:
    seconds: float  # request to last event
    ttft: float  # request to first text
    tokens: int  # completion tokens, as the surface reports them

    @property
    def per_token(self) -> float:
        """Seconds per token after the first, to the final event (usage included)."""
        return (self.seconds - self.ttft) / max(self.tokens - 1, 1)


# How each surface streams one answer: (path, body, is a line text, the token count in a line)
Surface = tuple[str, dict[str, Any], Callable[[dict[str, Any]], bool], Callable[[Any], int | None]]


def surfaces(tokens: int) -> dict[str, Surface]:
    messages = [{"role": "user", "content": ASK}]

    def chat_text(event: dict[str, Any]) -> bool:
        return any((c.get("delta") or {}).get("content") for c in event.get("choices") or [])

    def chat_tokens(event: dict[str, Any]) -> int | None:
        return (event.get("usage") or {}).get("completion_tokens")

    def anthropic_tokens(event: dict[str, Any]) -> int | None:
        return event["usage"]["output_tokens"] if event["type"] == "message_delta" else None

    def responses_tokens(event: dict[str, Any]) -> int | None:
        # `incomplete` when max_output_tokens cut the answer, as it does here
        done = event["type"] in ("response.completed", "response.incomplete")
        return event["response"]["usage"]["output_tokens"] if done else None

    return {
        "chat (baseline)": (
            "/v1/chat/completions",
            {
                "messages": messages,
                "max_tokens": tokens,
                "stream_options": {"include_usage": True},
            },
            chat_text,
            chat_tokens,
        ),
        "Anthropic /v1/messages": (
            "/v1/messages",
            {"messages": messages, "max_tokens": tokens},
            lambda e: e["type"] == "content_block_delta",
            anthropic_tokens,
        ),
        "Responses /v1/responses": (
            "/v1/responses",
            {"input": ASK, "max_output_tokens": tokens, "store": False},
            lambda e: e["type"] == "response.output_text.delta",
            responses_tokens,
        ),
        "Ollama /api/chat": (
            "/api/chat",
            {"messages": messages, "options": {"num_predict": tokens}},
            lambda e: not e["done"] and bool(e["message"]["content"]),
            lambda e: e.get("eval_count") if e["done"] else None,
        ),
    }


def stream(http: httpx.Client, surface: Surface) -> Stream:
    path, body, is_text, tokens_of = surface
    body = {"model": MODEL, "stream": True, "temperature": 0, **body}
    if path == "/api/chat":  # Ollama's sampling is in `options`
        body["options"] = {**body["options"], "temperature": body.pop("temperature")}
    started = time.perf_counter()
    first: float | None = None
    tokens = 0
    with http.stream("POST", path, json=body) as response:
        if response.status_code != 200:
            response.read()
            raise RuntimeError(f"{path} -> {response.status_code}: {response.text[:300]}")
        for line in response.iter_lines():
            data = line[6:] if line.startswith("data: ") else line
            if not data.startswith("{"):
                continue  # `event:` lines, blank lines, `[DONE]`
            event = json.loads(data)
            if first is None and is_text(event):
                first = time.perf_counter()
            tokens = tokens_of(event) or tokens
    ended = time.perf_counter()
    return Stream(ended - started, (first or ended) - started, tokens)


def measure(bench: Bench, fig: Figure) -> None:
    mode = bench.mode
    router = bench.mlxrouter(
        "mlxrouter-surfaces", {"hf_cache": False, "models": {MODEL: {"path": str(bench.smol)}}}
    )
    plan = surfaces(mode.surface_tokens)
    names = list(plan)
    runs: dict[str, list[Stream]] = {name: [] for name in names}
    try:
        with httpx.Client(base_url=router.url, timeout=600) as http:
            stream(http, plan[names[0]])  # warm-up: the load, the first prefill
            for rep in range(mode.surface_reps):
                # a different order each round, so drift over the run falls on every surface
                for name in names[rep % len(names) :] + names[: rep % len(names)]:
                    runs[name].append(stream(http, plan[name]))
    finally:
        router.stop()
    # The fastest round of each: other processes on the machine only ever add time
    fastest = {name: min(s.per_token for s in runs[name]) for name in names}
    base = fastest[names[0]]
    ratios = {name: fastest[name] / base for name in names[1:]}
    fig.details += [
        f"The same chat request (SmolLM2-135M-Instruct, one user message, greedy, "
        f"max_tokens={mode.surface_tokens}, streamed) through each API surface of one "
        f"mlxrouter, {plural(mode.surface_reps, 'round')} after a warm-up, the surfaces in a "
        "rotated order each round. Per token = (last event - first text) / (tokens - 1), as "
        "the client sees it, final usage event included. The ratio compares each surface's "
        "fastest round with the chat path's (load from other processes only ever adds time, "
        "so the fastest round is the closest to the surface's own cost); the median is shown "
        "beside it. Every surface renders the same prompt with the same template, so the "
        "tokens are the same.",
        "",
        "| surface | per token, fastest | median | ratio to chat | tokens | time to first text "
        "| every round |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in names:
        done = runs[name]
        per_token = median([s.per_token for s in done])
        ratio = "1 (baseline)" if name == names[0] else f"**{ratios[name]:.3f}x**"
        fig.details.append(
            f"| {name} | {fmt_s(fastest[name])} | {fmt_s(per_token)} | {ratio} | "
            f"{'/'.join(sorted({str(s.tokens) for s in done}))} | "
            f"{fmt_s(median([s.ttft for s in done]))} | "
            f"{', '.join(fmt_s(s.per_token) for s in done)} |"
        )
    fig.ours = " / ".join(f"{name.split()[0]} {ratio:.3f}x" for name, ratio in ratios.items())
    fig.theirs = f"chat {fmt_s(base)}/token"
    fig.ratio = max(ratios.values())
    fig.ratio_text = f"worst {fig.ratio:.3f}x"
    fig.met = fig.ratio <= 1.02
    chat = [s.per_token for s in runs[names[0]]]
    spread = max(chat) / min(chat) - 1
    for name, ratio in ratios.items():
        if ratio <= 1.02:
            continue
        text = f"{name}: {ratio:.3f}x the chat path's per-token time"
        if spread >= ratio - 1:
            text += (
                f"; the chat path's own rounds differ by {spread * 100:.1f}% here, so the gap "
                "is within this run's noise (rerun on a quiet machine, or with --full)."
            )
        else:
            text += f"; the chat path's own rounds agree within {spread * 100:.1f}%."
        fig.cause.append(text)

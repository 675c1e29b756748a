"""Figure f: 8 concurrent clients on one model (SmolLM2), aggregate tokens/s, mlxrouter against
mlx_lm.server, with distinct, shared-prefix and repeated (warm) prompts."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

import httpx

from .common import ANIMALS, WORDS, Figure, fmt_s, plural
from .measure import Burst, Timed, completion, streamed_completion

if TYPE_CHECKING:
    from .suite import Bench

KEY = "f"
TITLE = "8 concurrent clients on one model, aggregate tokens/s"
TARGET = "≥ 1.0x"


def conc_prompts(variant: str, rep: int, n: int, warm: str) -> list[str]:
    """Figure f's prompts, 7 tokens each (SmolLM2 tokenizer)."""
    if variant == "warm":
        return [warm] * n
    if variant == "shared prefix":
        return [f"{WORDS[-1 - rep % len(WORDS)]} upon a time, a {a}" for a in ANIMALS[:n]]
    # distinct: a different first token for each client, and new in every burst
    return [f"{WORDS[(rep * n + i) % len(WORDS)]} {rep} time, a {ANIMALS[i]}" for i in range(n)]


def measure(bench: Bench, fig: Figure) -> None:
    mode = bench.mode
    n = mode.conc_clients

    def burst(url: str, model: str, prompts: list[str]) -> Burst:
        barrier = threading.Barrier(n + 1)
        results: list[Timed | None] = [None] * n
        errors: list[BaseException] = []

        def client(i: int) -> None:
            with httpx.Client(base_url=url, timeout=600) as http:
                body = {
                    "model": model,
                    "prompt": prompts[i],
                    "max_tokens": mode.conc_tokens,
                    "temperature": 0,
                }
                barrier.wait()
                try:
                    results[i] = streamed_completion(http, body)
                except Exception as exc:
                    errors.append(exc)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
        for thread in threads:
            thread.start()
        barrier.wait()
        started = time.perf_counter()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
        if errors:
            raise errors[0]
        done = [r for r in results if r is not None]
        return Burst(
            wall,
            sum(r.tokens for r in done),
            sum(r.cached for r in done),
            max(r.seconds for r in done),
            max(r.ttft or 0.0 for r in done),
            min(r.ttft or 0.0 for r in done),
            sum(max(r.tokens - 1, 0) for r in done),
        )

    smol = str(bench.smol)
    rows: list[tuple[str, Burst, Burst]] = []
    with (
        httpx.Client(base_url=bench.router.url, timeout=600) as r,
        httpx.Client(base_url=bench.server.url, timeout=600) as s,
    ):
        warm_prompt = "Once upon a time, a fox"
        for client, model in ((r, "smollm2"), (s, smol)):
            completion(client, {"model": model, "prompt": warm_prompt, "max_tokens": 2})
        for variant in mode.conc_variants:
            ours, theirs = [], []
            for rep in range(mode.conc_reps):
                prompts = conc_prompts(variant, rep, n, warm_prompt)
                if variant == "warm":  # served just before: still in an LRU prompt cache
                    for client, model in ((r, "smollm2"), (s, smol)):
                        body = {"model": model, "prompt": warm_prompt, "max_tokens": 2}
                        completion(client, body)
                ours.append(burst(bench.router.url, "smollm2", prompts))
                theirs.append(burst(bench.server.url, smol, prompts))
            rows.append((variant, Burst.median(ours), Burst.median(theirs)))
    fig.details += [
        f"{n} clients (threads, one connection each) start together; each streams one text "
        f"completion (SmolLM2-135M-Instruct, 7-token prompt, max_tokens={mode.conc_tokens}, "
        f"greedy). {plural(mode.conc_reps, 'burst')} per row (the median one). "
        "Aggregate = all completion "
        "tokens / wall time until the last answer; `prefill` = time until every client "
        "had its first token, `decode` = the rest. Prompts: `distinct` share no prefix "
        "(and were never sent before); `shared prefix` share their first 6 tokens (like a "
        "common system prompt), not sent before; `warm` are all the prompt just served "
        "once. `cached`: prompt tokens reported as taken from the prompt cache, all "
        "clients together.",
        "",
        "| prompts | mlxrouter tok/s | mlx_lm.server tok/s | ratio | first tokens at, ours "
        "| first tokens at, theirs | decode (ours / theirs) | cached (ours / theirs) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ratios = {}
    for variant, ours, theirs in rows:
        ratios[variant] = ours.rate / theirs.rate
        fig.details.append(
            f"| {variant} | {ours.rate:.2f} | {theirs.rate:.2f} | "
            f"**{ratios[variant]:.3f}x** | {ours.first:.2f}-{ours.prefill:.2f} s | "
            f"{theirs.first:.2f}-{theirs.prefill:.2f} s | "
            f"{fmt_s(ours.wall - ours.prefill)} / {fmt_s(theirs.wall - theirs.prefill)} | "
            f"{ours.cached} / {theirs.cached} |"
        )
    single = bench.single_rate
    if single:
        fig.details += [
            "",
            f"For scale: one client alone decodes at {single:.2f} tok/s (figure a); once "
            f"every client had its first token, the {n} decoded together at "
            f"{rows[0][1].decode_rate:.2f} tok/s on mlxrouter "
            f"({rows[0][1].decode_rate / single:.2f}x), {rows[0][2].decode_rate:.2f} on "
            "mlx_lm.server (distinct prompts).",
        ]
    head = rows[0]
    fig.ours = f"{head[1].rate:.2f} tok/s"
    fig.theirs = f"{head[2].rate:.2f} tok/s"
    fig.ratio = min(ratios.values())
    fig.ratio_text = " / ".join(f"{v} {r:.3f}x" for v, r in ratios.items())
    fig.met = fig.ratio >= 1.0
    for variant, ours, theirs in rows:
        if variant == "shared prefix":
            bench.facts["f_shared_cached_ours"] = ours.cached
            bench.facts["f_shared_cached_theirs"] = theirs.cached
        if variant == "distinct":
            bench.facts["f_spread_s"] = ours.prefill - ours.first
            bench.facts["f_spread_theirs_s"] = theirs.prefill - theirs.first
    steps = mode.conc_tokens - 1
    for variant, ours, theirs in rows:
        if ratios[variant] >= 1.0:
            continue
        decode_gap = (ours.wall - ours.prefill) - (theirs.wall - theirs.prefill)
        text = (
            f"{variant} prompts ({ratios[variant]:.3f}x): prefill took {fmt_s(ours.prefill)}"
            f" on mlxrouter against {fmt_s(theirs.prefill)} on mlx_lm.server "
            f"({ours.cached} vs {theirs.cached} prompt tokens from the cache), decoding "
            f"{fmt_s(ours.wall - ours.prefill)} against {fmt_s(theirs.wall - theirs.prefill)}"
            + (f" ({decode_gap / steps * 1000:+.0f} ms per batched step)." if steps else ".")
        )
        if ours.prefill - theirs.prefill > decode_gap and theirs.cached > ours.cached:
            text += (
                " The gap is prefill that mlx_lm.server skipped: it reuses a prefix that "
                "one of the concurrent requests has just prefilled. mlxrouter keeps a "
                "prompt's KV cache when its prefill ends too, but a request that arrives in "
                "the same engine turn as the others only waits for their prefill when it "
                "shares at least `MIN_SHARED_TOKENS` (16) tokens with it "
                "(`engine/prefix.py`); these prompts share 6, so requests that land in one "
                "turn each prefill them, and the figure depends on how the arrivals fall "
                "into turns."
            )
        elif ours.prefill - theirs.prefill > decode_gap:
            text += (
                " Most of the gap is in prefill, with no difference in cache use: the "
                f"clients' first tokens arrived between {ours.first:.2f} and "
                f"{ours.prefill:.2f} s on mlxrouter, between {theirs.first:.2f} and "
                f"{theirs.prefill:.2f} s on mlx_lm.server"
                + (
                    ", so mlxrouter spread the prompts over more prefill rounds (it starts "
                    "a step as soon as the first request is in)."
                    if ours.prefill - ours.first > theirs.prefill - theirs.first + 0.2
                    else "."
                )
            )
        else:
            text += (
                " Most of the gap is in decoding, with no difference in cache use; the "
                "profile below lists mlxrouter's per-token work outside MLX."
            )
        fig.cause.append(text)

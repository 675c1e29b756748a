"""Figure a: steady single-model generation, tokens/s: mlxrouter (streamed over HTTP) against
in-process mlx_lm `stream_generate` on SmolLM2, and `BatchGenerator` (what mlxrouter's engine
runs) alone."""

from __future__ import annotations

import gc
import time
from typing import TYPE_CHECKING, Any

import httpx

from .common import A_WORDS, ANIMALS, Figure, fmt_s, median
from .measure import Timed, streamed_completion, timed

if TYPE_CHECKING:
    from .suite import Bench

KEY = "a"
TITLE = "steady single-model generation, tokens/s"
TARGET = "≥ 0.98x in-process"


def measure(bench: Bench, fig: Figure) -> None:
    import mlx.core as mx
    from mlx_lm import load, stream_generate
    from mlx_lm.generate import BatchGenerator
    from mlx_lm.sample_utils import make_sampler

    mode = bench.mode
    # Distinct: no two share a first token (nothing for a prompt cache to reuse); the last
    # one is the repeated, `warm` prompt.
    prompts = [f"{w} {a} time, a story" for w, a in zip(A_WORDS, ANIMALS, strict=True)]
    loaded: list[Any] = list(load(str(bench.smol)))
    sampler = make_sampler(temp=0.0)

    def in_process(prompt: str) -> Timed:
        started = time.perf_counter()
        first = None
        tokens = 0
        for response in stream_generate(
            loaded[0], loaded[1], prompt, max_tokens=mode.a_tokens, sampler=sampler
        ):
            first = first or time.perf_counter()
            tokens = response.generation_tokens
        return timed(started, first, tokens)

    def in_process_batch(prompt: str) -> Timed:
        """What mlxrouter's engine runs, without mlxrouter: a BatchGenerator (one made per
        model and reused, as the engine does) decoding a batch of one."""
        if len(loaded) < 3:
            loaded.append(BatchGenerator(loaded[0]))
        batch = loaded[2]
        started = time.perf_counter()
        first = None
        tokens = 0
        batch.insert([loaded[1].encode(prompt)], max_tokens=[mode.a_tokens], samplers=[sampler])
        done = False
        while not done:
            for response in batch.next()[1]:
                first = first or time.perf_counter()
                if response.finish_reason != "stop":
                    tokens += 1
                done = done or response.finish_reason is not None
        return timed(started, first, tokens)

    def body(prompt: str) -> dict[str, Any]:
        return {
            "model": "smollm2",
            "prompt": prompt,
            "max_tokens": mode.a_tokens,
            "temperature": 0,
        }

    ours: dict[str, list[Timed]] = {"distinct": [], "warm": []}
    theirs: dict[str, list[Timed]] = {"distinct": [], "warm": []}
    base: list[Timed] = []
    batch: list[Timed] = []
    their = {"model": str(bench.smol)}
    with (
        httpx.Client(base_url=bench.router.url, timeout=600) as router,
        httpx.Client(base_url=bench.server.url, timeout=600) as server,
    ):
        streamed_completion(router, body(prompts[-1]))  # load, warm up
        in_process(prompts[-1])
        in_process_batch(prompts[-1])
        if mode.a_server:
            streamed_completion(server, {**body(prompts[-1]), **their})
        # Interleaved, so a change in the machine's load hits every side alike.
        for i in range(mode.a_reps):
            base.append(in_process(prompts[i]))
            ours["distinct"].append(streamed_completion(router, body(prompts[i])))
            batch.append(in_process_batch(prompts[i]))
            ours["warm"].append(streamed_completion(router, body(prompts[-1])))
            if mode.a_server:
                theirs["distinct"].append(
                    streamed_completion(server, {**body(prompts[i]), **their})
                )
                theirs["warm"].append(streamed_completion(server, {**body(prompts[-1]), **their}))
    if len(loaded) > 2:
        loaded[2].close()
    loaded.clear()
    gc.collect()
    mx.clear_cache()

    def rate(xs: list[Timed]) -> float:
        return median([x.decode_rate for x in xs if x.decode_rate])

    def e2e(xs: list[Timed]) -> float:
        return median([x.tokens / x.seconds for x in xs])

    ratio = rate(ours["distinct"]) / rate(base)
    bench.single_rate = rate(ours["distinct"])
    fig.ours = f"{rate(ours['distinct']):.2f} tok/s"
    fig.theirs = f"{rate(base):.2f} tok/s"
    fig.ratio = ratio
    fig.ratio_text = f"{ratio:.3f}x"
    fig.met = ratio >= 0.98
    fig.details += [
        f"SmolLM2-135M-Instruct, text completions of {mode.a_tokens} tokens, greedy, "
        f"{mode.a_reps} timed runs per row (medians, rows interleaved), 6-token prompts "
        "(distinct: no shared first token; warm: one prompt repeated). "
        "mlxrouter is streamed over HTTP (SSE); the baselines run in the benchmark's own "
        "process. Decode rate = (tokens - 1) / (time after the first token). `cached` is "
        "the prompt tokens the server reported as served from its prompt cache "
        "(`usage.prompt_tokens_details.cached_tokens`).",
        "",
        "| | decode tok/s | end-to-end tok/s | time to first token | tokens | cached |",
        "|---|---|---|---|---|---|",
    ]
    rows = [
        ("in-process `stream_generate` (the baseline)", base),
        ("in-process `BatchGenerator`, batch of one", batch),
        ("mlxrouter, distinct prompts", ours["distinct"]),
        ("mlxrouter, same prompt (warm)", ours["warm"]),
    ]
    if mode.a_server:
        rows += [
            ("mlx_lm.server, distinct prompts", theirs["distinct"]),
            ("mlx_lm.server, same prompt (warm)", theirs["warm"]),
        ]
    for label, xs in rows:
        ttft = median([x.ttft or 0.0 for x in xs])
        fig.details.append(
            f"| {label} | {rate(xs):.2f} | {e2e(xs):.2f} | {fmt_s(ttft)} | "
            f"{median([float(x.tokens) for x in xs]):.0f} | "
            f"{median([float(x.cached) for x in xs]):.0f} |"
        )
    fig.details.append("")
    fig.details.append(
        f"Ratio (decode, distinct prompts): **{ratio:.3f}**; with the same prompt repeated: "
        f"{rate(ours['warm']) / rate(base):.3f}. Decode speed does not depend on the "
        "prompt cache; only the time to first token does."
    )
    rates = [x.decode_rate for x in base if x.decode_rate]
    if len(rates) > 1:
        spread = (max(rates) - min(rates)) / median(rates) * 100
        fig.details.append(
            f"Run-to-run spread of the baseline's own decode rate: {spread:.1f}% (max - min "
            "over median); differences smaller than that are noise."
        )
    if not fig.met:
        per_token = (1 / rate(ours["distinct"]) - 1 / rate(base)) * 1000
        engine = (1 / rate(batch) - 1 / rate(base)) * 1000
        text = (
            f"Decode through mlxrouter runs at {ratio:.3f}x the in-process rate, "
            f"{per_token:.1f} ms more per token. mlx_lm's `BatchGenerator` alone (the "
            "decoder mlxrouter's engine runs: batch of one, in-process, no mlxrouter) runs "
            f"at {rate(batch) / rate(base):.3f}x `stream_generate`, {engine:+.1f} ms per token"
        )
        if engine >= per_token:
            text += (
                ": that is all of the gap; mlxrouter's own path adds nothing measurable on "
                f"top ({rate(ours['distinct']):.2f} tok/s against {rate(batch):.2f} for "
                "`BatchGenerator` alone)."
            )
        else:
            text += (
                f"; the other {per_token - max(engine, 0.0):.1f} ms per token is spent on "
                "mlxrouter's own path (its engine loop, detokenising, handing each token "
                "to the event loop, SSE encoding, HTTP); the profile below itemises that "
                "path for a non-streamed request."
            )
        fig.cause.append(text)

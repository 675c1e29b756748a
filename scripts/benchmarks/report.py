"""The report: the summary table printed at the end of a run, and docs/BENCHMARKS.md (every
figure's details, the measured causes of each miss, the profile and recommendations)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import MB, Figure, fmt_s, median, verdict
from .machine import memory_total
from .models import BIG_SPEC, LORA, folder_bytes

if TYPE_CHECKING:
    from .suite import Bench


def table(figures: list[Figure]) -> list[str]:
    figures = sorted(figures, key=lambda f: f.key)
    lines = [
        "| figure | mlxrouter | baseline | ratio / result | target | |",
        "|---|---|---|---|---|---|",
    ]
    for f in figures:
        if f.error:
            lines.append(f"| {f.key}. {f.title} | error | | {f.error} | {f.target} | |")
            continue
        lines.append(
            f"| {f.key}. {f.title} | {f.ours} | {f.theirs} | {f.ratio_text} | {f.target} | "
            f"{verdict(f.met)} |"
        )
    return lines


def print_table(figures: list[Figure]) -> None:
    figures = sorted(figures, key=lambda f: f.key)
    rows = [("figure", "mlxrouter", "baseline", "ratio / result", "target", "")]
    for f in figures:
        rows.append(
            (
                f"{f.key}. {f.title}"[:52],
                f.ours if not f.error else "error",
                f.theirs,
                (f.error or f.ratio_text)[:70],
                f.target,
                "" if f.error else verdict(f.met),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


def write_doc(bench: Bench, meta: dict[str, Any], doc: Path) -> None:
    figures = bench.figures
    v = meta["versions"]
    lines = [
        "# Benchmarks",
        "",
        "Written by `scripts/bench` (source: [scripts/benchmarks/](../scripts/benchmarks/)); rerun "
        "it to refresh this file. Every ratio compares two measurements taken side by side in "
        "the same invocation, on the same machine and models. Values are medians.",
        "",
        "## Run",
        "",
        f"- Command: `{meta['command']}` ({meta['mode']} mode), {meta['date']}",
        f"- Total run time: {meta['wall'] / 60:.1f} min",
        f"- Machine: {meta['cpu']}, {os.cpu_count()} cores, {memory_total() / 2**30:.1f} GiB "
        f"memory, {platform.system()} {platform.release()}, no GPU (MLX CPU build)",
        f"- Versions: Python {v['python']}, mlx {v['mlx']}, mlx-lm {v['mlx-lm']}, mlxrouter "
        f"{v['mlxrouter']} (commit `{v['mlxrouter commit']}`), litestar {v['litestar']}, "
        f"uvicorn {v['uvicorn']}, transformers {v['transformers']}",
        f"- Load: load average {meta['load_before'][0]:.2f} before the run; other processes "
        f"used {meta['others'] * 100:.0f}% of one core on average during it"
        + (
            " — **the machine was shared; figures are noisier than usual**."
            if meta["others"] > 0.15
            else "."
        ),
        "- Page cache: "
        + (
            "dropped before each cold read (figure e)"
            if bench.cold_cache
            else "not dropped (figure e is warm-cache)"
        ),
        "",
        "## Models",
        "",
        f"- **SmolLM2-135M-Instruct** (the demo model: 4-bit, "
        f"{folder_bytes(bench.smol) / MB:.0f} MB) for a, f, s, h and the profile.",
        f"- **bench-1b-a/b/c**: random-weight llama models built by the suite (hidden "
        f"{BIG_SPEC['hidden_size']}, {BIG_SPEC['num_hidden_layers']} layers, MLP "
        f"{BIG_SPEC['intermediate_size']}, GQA 32/8 heads, vocab {BIG_SPEC['vocab_size']}: "
        f"1.07B parameters), 4-bit (group 64) with float32 scales, "
        f"{folder_bytes(bench.big[0]) / MB:.0f} MB each, SmolLM2's tokenizer; cached in "
        "`.cache/bench/`. Used for b, c, e and g, where loading matters. float32 scales because "
        "MLX's CPU quantized matmul runs float16 ones many times slower (emulated half "
        "precision)"
        + (
            f"; even so, one request of a 1-token prompt and max_tokens=1 takes "
            f"{fmt_s(median([t.seconds for t in bench.same_model['distinct']]))} on it here "
            "(figure b)."
            if bench.same_model.get("distinct")
            else "."
        ),
        f"- **bench-1b-a-lora**: a LoRA adapter on bench-1b-a (rank {LORA['rank']}, every "
        "linear layer).",
        "",
        "## Summary",
        "",
        *table(figures),
        "",
        "Memory over hours (a 60-minute soak with model churn; 1,000 load/unload cycles of the "
        "demo model) is measured by `scripts/soak` and `scripts/load_cycles.py`, not by this "
        "suite: their commands and results are in [MEMORY.md](MEMORY.md).",
        "",
    ]
    for f in sorted(figures, key=lambda f: f.key):
        lines += [
            f"## {f.key}. {f.title}",
            "",
            f"Target: {f.target}. Result: "
            f"**{f.ratio_text or '-'}** — {verdict(f.met) if not f.error else 'error'}.",
            "",
        ]
        if f.error:
            lines += [f"The figure failed: `{f.error}`", ""]
            continue
        lines += [*f.details, ""]
        if f.cause:
            lines += ["**Why the target is not met (measured):**", ""]
            lines += [f"- {c}" for c in f.cause]
            lines.append("")
        lines += [f"_({f.seconds:.0f} s)_", ""]
    if bench.profile_lines:
        lines += ["## Where one request's time goes", "", *bench.profile_lines]
    lines += ["## Recommendations", "", *recommendations(bench), ""]
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n".join(lines))


def recommendations(bench: Bench) -> list[str]:
    """Changes to mlxrouter the numbers point at (the benchmark changes no package code). Each
    is included only when this run measured the problem it addresses."""
    figures = {f.key: f for f in bench.figures if not f.error}
    facts = bench.facts
    out = []
    if figures.get("d") and figures["d"].met is False:
        in_app = facts.get("models_in_app_s")
        out.append(
            "- **`/v1/models`**: the answer is already encoded once per registry snapshot and "
            "loaded set; what is left grows with its size"
            + (f" ({fmt_s(in_app)} in the app at 1000 repos)" if in_app else "")
            + ": leave null fields out of the cards, or offer a compact listing for clients "
            "that only need the ids."
        )
    shared = facts.get("f_shared_cached_theirs", 0) - facts.get("f_shared_cached_ours", 0)
    if shared > 0:
        out.append(
            "- **Prompt cache for concurrent requests**: insert a sequence's prompt KV cache "
            "into the `LRUPromptCache` as soon as its prefill is done, not only when it "
            f"finishes; in figure f, mlx_lm.server reused {shared:.0f} more prompt tokens "
            "than mlxrouter for 8 requests sharing a 6-token prefix (a shared system prompt is "
            "the common case)."
        )
    if facts.get("f_spread_s", 0) > facts.get("f_spread_theirs_s", 0) + 0.2:
        out.append(
            "- **Prefill rounds**: when a burst of requests arrives, the engine starts a step "
            "with the ones already queued and prefills late arrivals in another round "
            f"(first tokens spread over {facts['f_spread_s']:.1f} s against "
            f"{facts.get('f_spread_theirs_s', 0.0):.1f} s for mlx_lm.server). Draining the "
            "command queue once more, or waiting a few milliseconds for more requests before "
            "the first prefill of an idle model, would batch them together."
        )
    wake = facts.get("wake_ms")
    # The engine hands over one batch of events per turn (plus each command's result), so a
    # 4-token request needs about 7 wake-ups; more means events go one by one again.
    if wake and facts.get("wakes", 0) > 8:
        wakes = facts["wakes"]
        alone = facts.get("send_alone_us", 0.0)
        out.append(
            f"- **Engine-to-event-loop hand-off**: {wakes:.0f} `call_soon_threadsafe` per "
            f"4-token request, where one per engine turn would be about 7; the engine thread "
            f"spent {wake:.1f} ms per request in the self-pipe `send` behind them, "
            f"{wake / wakes * 1000:.0f} µs a call, where a send and receive on an idle socket "
            f"pair take {alone:.0f} µs here (the rest is waiting for the GIL). Hand events over "
            "once per engine turn."
        )
    tok = facts.get("tokenizer_s")
    if figures.get("e") and figures["e"].met is False and tok:
        out.append(
            f"- **Cold loads**: the tokenizer alone took {fmt_s(tok)} here. mlxrouter already "
            "loads it on a side thread while the engine reads the weights; what remains is "
            "transformers' own construction of the tokenizer (a cached, pre-built tokenizer "
            "per model folder would skip it)."
        )
    if figures.get("g") and figures["g"].met is False:
        out.append(
            "- **`pool.max_memory`**: it bounds the pool's accounted bytes, not the process. "
            "Either say so in the README, or reserve the idle RSS and count KV caches so the "
            "budget bounds what the OS sees."
        )
    if any(figures.get(k) and figures[k].met is False for k in "bc"):
        out.append(
            "- **Switching between loaded entries**: figure b or c measured a switch that "
            "costs more than staying on one model, or no less than mlx_lm.server's reload; "
            "the figure's causes give the numbers to start from."
        )
    return out or ["- None: every figure met its target in this run."]

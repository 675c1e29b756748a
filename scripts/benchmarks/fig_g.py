"""Figure g: memory. mlxrouter's idle RSS, and its peak RSS against `pool.max_memory` while
requests cycle through three ~1B models with room for two."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import httpx

from .common import MB, WORDS, Figure, verdict
from .machine import RssSampler, proc_status
from .measure import completion
from .models import folder_bytes

if TYPE_CHECKING:
    from .suite import Bench

KEY = "g"
TITLE = "memory: idle RSS; peak RSS vs pool.max_memory"
TARGET = "≤ 150 MB; ≤ budget+5%"


def measure(bench: Bench, fig: Figure) -> None:
    idle = bench.idle_rss
    budget = bench.budget
    order = [bench.ids[x] for x in "abc"] * bench.mode.g_rounds
    pool_peak = 0
    evictions = 0
    with (
        httpx.Client(base_url=bench.router_g.url, timeout=600) as client,
        RssSampler(bench.router_g.pid) as sampler,
    ):
        started = time.perf_counter()
        for i, model_id in enumerate(order):
            body = {"model": model_id, "prompt": WORDS[i % len(WORDS)], "max_tokens": 1}
            completion(client, body)
            pool = client.get("/admin/pool").json()
            pool_peak = max(pool_peak, pool["used_bytes"])
            evictions = pool["evictions"]
        wall = time.perf_counter() - started
    hwm = proc_status(bench.router_g.pid, "VmHWM")
    peak = sampler.peak
    ratio = peak / budget
    idle_ok = idle <= 150 * MB
    fig.ours = f"idle {idle / MB:.0f} MB; peak {peak / MB:.0f} MB"
    fig.theirs = f"budget {budget / MB:.0f} MB"
    fig.ratio = ratio
    fig.ratio_text = f"idle {idle / MB:.0f} MB; peak/budget {ratio:.2f}"
    fig.met = idle_ok and ratio <= 1.05
    size = folder_bytes(bench.big[0])
    fig.details += [
        f"A fresh `mlxrouter serve` with three ~1B models ({size / MB:.0f} MB each) "
        f"configured, `pool.max_models: 3`, `pool.max_memory: {budget}` ({budget / MB:.0f} MB, "
        "room for two: 2 x "
        f"({size / MB:.0f} MB of weights + {bench.entry_overhead / MB:.0f} MB, the pool's "
        "per-entry prompt-cache allowance) + 100 MB). "
        f"Idle: VmRSS 2 s after start-up, nothing loaded. Switching: {len(order)} requests "
        f"cycling a → b → c ({wall:.0f} s, max_tokens=1), VmRSS sampled every 10 ms "
        f"({sampler.samples} samples).",
        "",
        "| | value | target |",
        "|---|---|---|",
        f"| idle RSS | **{idle / MB:.0f} MB** | ≤ 150 MB ({verdict(idle_ok)}) |",
        f"| peak RSS while switching (sampled) | **{peak / MB:.0f} MB** | ≤ "
        f"{budget * 1.05 / MB:.0f} MB ({verdict(ratio <= 1.05)}) |",
        f"| VmHWM at the end (whole life, includes figure e's loads) | {hwm / MB:.0f} MB | |",
        f"| peak `used_bytes` the pool accounted (`/admin/pool`) | {pool_peak / MB:.0f} MB "
        f"| ≤ {budget / MB:.0f} MB |",
        f"| evictions during the run | {evictions} | |",
    ]
    if not idle_ok:
        fig.cause.append(
            f"Idle RSS is {idle / MB:.0f} MB with nothing loaded: the imports (mlx, mlx_lm, "
            "transformers, litestar, uvicorn, prometheus_client, huggingface_hub) are made at "
            "start-up. The profile below lists the import times."
        )
    if ratio > 1.05:
        beyond = peak - pool_peak
        fig.cause.append(
            f"Peak RSS {peak / MB:.0f} MB exceeds the budget by "
            f"{(peak - budget) / MB:.0f} MB. The pool's own accounting peaked at "
            f"{pool_peak / MB:.0f} MB ("
            + ("within" if pool_peak <= budget else "above")
            + f" the budget); RSS is {beyond / MB:.0f} MB above that figure, of which "
            f"{idle / MB:.0f} MB is the idle process (Python, libraries) the budget does "
            f"not count, and {(beyond - idle) / MB:.0f} MB is memory held beyond the "
            "accounted bytes (KV caches, MLX's buffer cache, tokenizers, transient "
            "buffers while loading)."
        )

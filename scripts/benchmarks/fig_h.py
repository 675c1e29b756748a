"""Figure h: forwarding overhead per token through one upstream hop (mlxrouter B forwarding to
mlxrouter A, `upstreams:`) against asking A directly, the same streamed request in one run."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

from .common import Figure, fmt_s, median, plural
from .fig_s import MODEL, Stream, stream, surfaces

if TYPE_CHECKING:
    from .suite import Bench

KEY = "h"
TITLE = "per-token cost through one upstream hop vs direct"
TARGET = "≤ 1.05x direct"


def measure(bench: Bench, fig: Figure) -> None:
    mode = bench.mode
    direct = bench.mlxrouter(
        "mlxrouter-upstream", {"hf_cache": False, "models": {MODEL: {"path": str(bench.smol)}}}
    )
    hop = bench.mlxrouter(
        "mlxrouter-hop",
        {"hf_cache": False, "upstreams": [{"name": "a", "url": direct.url + "/v1"}]},
    )
    chat = surfaces(mode.surface_tokens)["chat (baseline)"]
    runs: dict[str, list[Stream]] = {"direct": [], "one hop": []}
    try:
        with (
            httpx.Client(base_url=direct.url, timeout=600) as to_direct,
            httpx.Client(base_url=hop.url, timeout=600) as to_hop,
        ):
            stream(to_direct, chat)  # warm-up: the load, the first prefill
            clients = {"direct": to_direct, "one hop": to_hop}
            for rep in range(mode.surface_reps):
                # alternate which goes first, so drift over the run falls on both
                for name in ("direct", "one hop") if rep % 2 == 0 else ("one hop", "direct"):
                    runs[name].append(stream(clients[name], chat))
    finally:
        hop.stop()
        direct.stop()
    base = median([s.per_token for s in runs["direct"]])
    through = median([s.per_token for s in runs["one hop"]])
    ratio = through / base
    fig.details += [
        f"The same chat request (SmolLM2-135M-Instruct, greedy, max_tokens="
        f"{mode.surface_tokens}, streamed) to mlxrouter A directly, and to mlxrouter B, which "
        f"lists A under `upstreams:` and forwards it (httpx, chunk by chunk), "
        f"{plural(mode.surface_reps, 'round')} each after a warm-up, alternating which goes "
        "first. Per token = (last event - first text) / (tokens - 1) as the client sees it; "
        "the median of the rounds.",
        "",
        "| path | per token | ratio to direct | time to first text | every round |",
        "|---|---|---|---|---|",
    ]
    for name, done in runs.items():
        shown = "1 (baseline)" if name == "direct" else f"**{ratio:.3f}x**"
        fig.details.append(
            f"| {name} | {fmt_s(median([s.per_token for s in done]))} | {shown} | "
            f"{fmt_s(median([s.ttft for s in done]))} | "
            f"{', '.join(fmt_s(s.per_token) for s in done)} |"
        )
    fig.ours = f"one hop {fmt_s(through)}/token"
    fig.theirs = f"direct {fmt_s(base)}/token"
    fig.ratio = ratio
    fig.ratio_text = f"{ratio:.3f}x"
    fig.met = ratio <= 1.05
    if not fig.met:
        own = [s.per_token for s in runs["direct"]]
        spread = max(own) / min(own) - 1
        fig.cause.append(
            f"One hop costs {ratio:.3f}x the direct per-token time; the direct rounds differ by "
            f"{spread * 100:.1f}% among themselves"
            + (" (within this run's noise)." if spread >= ratio - 1 else ".")
        )

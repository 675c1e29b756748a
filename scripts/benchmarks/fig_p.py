"""Figure p: time to the first token of a ~500-token conversation's next turn after its model
was unloaded (what an eviction does) and after a daemon restart: mlxrouter with its prompt
caches on disk (`pool.disk_cache_bytes`), mlxrouter without them, and mlx_lm.server restarted
(its prompt cache lives in memory only)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

from .common import ANIMALS, WORDS, Figure, fmt_s, median
from .measure import completion, streamed_completion

if TYPE_CHECKING:
    from .harness import Server
    from .suite import Bench

KEY = "p"
TITLE = "time to first token of a 500-token conversation after eviction and after a restart"
TARGET = "≥ 5x without the disk cache, ≥ 5x mlx_lm.server"


def conversation(rep: int) -> str:
    """About 500 SmolLM2 tokens, a different start for each rep (no shared prefix)."""
    words = [f"{WORDS[(rep + i) % len(WORDS)]} {ANIMALS[i % len(ANIMALS)]}" for i in range(165)]
    return f"Turn {rep}: " + ", ".join(words) + "."


def follow_up(prompt: str, model: str) -> dict[str, object]:
    return {"model": model, "prompt": prompt + " And next?", "max_tokens": 4, "temperature": 0}


def after_unload(server: Server, rep: int) -> float:
    """TTFT of a conversation's next turn after its model was unloaded and loaded again."""
    prompt = conversation(rep)
    with httpx.Client(base_url=server.url, timeout=600) as client:
        completion(client, {"model": "smollm2", "prompt": prompt, "max_tokens": 1})
        client.post("/admin/unload", json={"model": "smollm2"}).raise_for_status()
        timed = streamed_completion(client, follow_up(prompt, "smollm2"))
    return timed.ttft or timed.seconds


def after_restart(server: Server, rep: int, model: str = "smollm2") -> tuple[float, int]:
    """TTFT (and cached tokens) of a conversation's next turn after the server restarted;
    `model`: the name the server knows it by (mlx_lm.server: its path)."""
    prompt = conversation(rep)
    with httpx.Client(base_url=server.url, timeout=600) as client:
        completion(client, {"model": model, "prompt": prompt, "max_tokens": 1})
    server.stop()
    server.start()
    with httpx.Client(base_url=server.url, timeout=600) as client:
        timed = streamed_completion(client, follow_up(prompt, model))
    return timed.ttft or timed.seconds, timed.cached


def measure(bench: Bench, fig: Figure) -> None:
    reps = 1 if bench.mode.name == "quick" else 3
    models = {"smollm2": {"path": str(bench.smol)}}
    results: dict[str, dict[str, float]] = {}
    for name, disk in (("with the disk cache", "1GB"), ("without", 0)):
        server = bench.mlxrouter(
            f"mlxrouter-p-{'disk' if disk else 'plain'}",
            {"hf_cache": False, "models": models, "pool": {"disk_cache_bytes": disk}},
        )
        evicted = median([after_unload(server, rep) for rep in range(reps)])
        restarted, cached = after_restart(server, 100)
        server.stop()
        results[name] = {"evicted": evicted, "restarted": restarted, "cached": cached}
    smol = str(bench.smol)
    server_ttft = median([after_restart(bench.server, 200 + r, smol)[0] for r in range(reps)])
    ours, plain = results["with the disk cache"], results["without"]
    fig.ours, fig.theirs = fmt_s(ours["evicted"]), fmt_s(plain["evicted"])
    fig.ratio = plain["evicted"] / ours["evicted"]
    vs_server = server_ttft / ours["restarted"]
    fig.ratio_text = f"{fig.ratio:.2f}x without the cache, {vs_server:.2f}x mlx_lm.server"
    fig.met = fig.ratio >= 5.0 and vs_server >= 5.0
    fig.details += [
        "| | after unload + reload | after a restart | cached tokens after the restart |",
        "|---|---|---|---|",
        *(
            f"| mlxrouter {name} | {fmt_s(r['evicted'])} | {fmt_s(r['restarted'])} | "
            f"{int(r['cached'])} |"
            for name, r in results.items()
        ),
        f"| mlx_lm.server (restarted) | - | {fmt_s(server_ttft)} | - |",
        "",
        f"Prompt: about 500 tokens (SmolLM2), the next turn adds 3; {reps} rep(s), medians. "
        "Time to first token includes loading the model again (mlxrouter after an unload and "
        "a restart; mlx_lm.server loads it at start, before the request). Restart ratio: "
        f"mlx_lm.server {fmt_s(server_ttft)} / mlxrouter {fmt_s(ours['restarted'])}.",
    ]

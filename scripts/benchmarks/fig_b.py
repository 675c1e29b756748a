"""Figure b: requests alternating between two ~1B models, mlxrouter (both stay loaded) against
mlx_lm.server (reloads on every switch). The sequences and the explanation of a miss are shared
with figure c."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import httpx

from .common import WORDS, Figure, fmt_s, median
from .measure import Timed, completion

if TYPE_CHECKING:
    from .suite import Bench

KEY = "b"
TITLE = "requests alternating between two ~1B models"
TARGET = "≥ 2.5x mlx_lm.server"


def _sequence(
    bench: Bench, client: httpx.Client, models: list[dict[str, Any]], words: list[str]
) -> tuple[float, list[Timed]]:
    timed = []
    started = time.perf_counter()
    for fields, word in zip(models, words, strict=True):
        body = {"prompt": word, "max_tokens": bench.mode.switch_tokens, "temperature": 0}
        timed.append(completion(client, {**body, **fields}))
    return time.perf_counter() - started, timed


def switching(
    bench: Bench, fig: Figure, ours_pair: list[dict[str, Any]], theirs_pair: list[dict[str, Any]]
) -> dict[str, dict[str, tuple[float, list[Timed]]]]:
    n = bench.mode.switch_reps
    words = {"warm": [WORDS[0]] * n, "distinct": WORDS[1 : n + 1]}
    runs: dict[str, dict[str, tuple[float, list[Timed]]]] = {"mlxrouter": {}, "server": {}}
    with (
        httpx.Client(base_url=bench.router.url, timeout=600) as router,
        httpx.Client(base_url=bench.server.url, timeout=600) as server,
    ):
        # Warm-up: mlxrouter loads both entries once; mlx_lm.server ends on the second, so
        # the first timed request (for the first) is a switch too.
        for fields in ours_pair:
            completion(router, {"prompt": "Hi", "max_tokens": 1, **fields})
        for fields in theirs_pair:
            completion(server, {"prompt": "Hi", "max_tokens": 1, **fields})
        if not bench.same_model:
            bench.same_model["mlxrouter"] = _sequence(
                bench, router, [ours_pair[0]] * n, words["warm"]
            )[1]
            completion(server, {"prompt": "Hi", "max_tokens": 1, **theirs_pair[0]})
            bench.same_model["server"] = _sequence(
                bench, server, [theirs_pair[0]] * n, words["warm"]
            )[1]
            completion(server, {"prompt": "Hi", "max_tokens": 1, **theirs_pair[1]})
        for variant in bench.mode.switch_variants:
            alternating = [ours_pair[i % 2] for i in range(n)]
            runs["mlxrouter"][variant] = _sequence(bench, router, alternating, words[variant])
            alternating = [theirs_pair[i % 2] for i in range(n)]
            runs["server"][variant] = _sequence(bench, server, alternating, words[variant])
        pool = router.get("/admin/pool").json()
    load_seconds = {e["id"]: e.get("load_seconds") for e in pool["entries"]}
    fig.details.append(
        f"{n} sequential requests per sequence (one client), text completions of a 1-token "
        f"prompt, max_tokens={bench.mode.switch_tokens}, greedy; throughput = requests / "
        "wall time of the sequence. Prompt caching: `warm` repeats one prompt, `distinct` "
        "uses a new one each time (a 1-token prompt leaves a prompt cache nothing to save)."
    )
    fig.details.append("")
    fig.details.append(
        "| sequence | mlxrouter req/s | mlx_lm.server req/s | ratio | mlxrouter median "
        "latency | mlx_lm.server median latency |"
    )
    fig.details.append("|---|---|---|---|---|---|")
    same_ours = bench.same_model["mlxrouter"]
    same_theirs = bench.same_model["server"]
    fig.details.append(
        f"| same model, no switching | {len(same_ours) / sum(x.seconds for x in same_ours):.3f}"
        f" | {len(same_theirs) / sum(x.seconds for x in same_theirs):.3f} | "
        f"{sum(x.seconds for x in same_theirs) / sum(x.seconds for x in same_ours):.2f}x | "
        f"{fmt_s(median([x.seconds for x in same_ours]))} | "
        f"{fmt_s(median([x.seconds for x in same_theirs]))} |"
    )
    ratios = {}
    for variant in bench.mode.switch_variants:
        ours_s, ours_t = runs["mlxrouter"][variant]
        theirs_s, theirs_t = runs["server"][variant]
        ratios[variant] = theirs_s / ours_s
        fig.details.append(
            f"| alternating, {variant} prompts | {n / ours_s:.3f} | {n / theirs_s:.3f} | "
            f"**{ratios[variant]:.2f}x** | {fmt_s(median([x.seconds for x in ours_t]))} | "
            f"{fmt_s(median([x.seconds for x in theirs_t]))} |"
        )
    fig.details.append("")
    pair = [fields["model"] for fields in ours_pair]
    loads = ", ".join(
        f"`{k}` {v:.2f} s" for k, v in load_seconds.items() if v is not None and k in pair
    )
    fig.details.append(f"mlxrouter loaded each entry once (`/admin/pool` `load_seconds`): {loads}.")
    ours_s, _ = runs["mlxrouter"]["distinct"]
    theirs_s, _ = runs["server"]["distinct"]
    fig.ours = f"{n / ours_s:.3f} req/s"
    fig.theirs = f"{n / theirs_s:.3f} req/s"
    fig.ratio = min(ratios.values())
    fig.ratio_text = f"{ratios['distinct']:.2f}x" + (
        f" (warm {ratios['warm']:.2f}x)" if "warm" in ratios else ""
    )
    bench.switch_loads = {k: v for k, v in load_seconds.items() if k in pair and v}
    return runs


def switch_cause(bench: Bench, fig: Figure, runs: dict[str, Any], target: float) -> None:
    generation = median([x.seconds for x in bench.same_model["server"]])
    switched = median([x.seconds for x in runs["server"]["distinct"][1]])
    ours = median([x.seconds for x in runs["mlxrouter"]["distinct"][1]])
    overhead = switched - generation
    bound = switched / generation if generation > 0 else float("nan")
    loads = bench.switch_loads
    load_text = (
        " (mlxrouter's own loads: " + ", ".join(f"`{k}` {fmt_s(v)}" for k, v in loads.items()) + ")"
        if loads
        else ""
    )
    fig.cause.append(
        f"Generation, not loading, dominates each request on this CPU. A request without a "
        f"switch costs {fmt_s(generation)} on mlx_lm.server ({fmt_s(ours)} on mlxrouter "
        f"alternating, where nothing reloads); with a switch, mlx_lm.server takes "
        f"{fmt_s(switched)}, so each reload adds {fmt_s(overhead)}{load_text}. Even a router "
        f"with zero overhead can be at most {bound:.2f}x faster here (target {target}x). "
        "The target assumes a load that costs several times a request's generation, as "
        "for 4-8B models on Apple silicon (seconds to load, tens of tokens/s); here a "
        "1-token request on the ~1B model costs more than its reload."
    )


def measure(bench: Bench, fig: Figure) -> None:
    a, b = bench.ids["a"], bench.ids["b"]
    runs = switching(
        bench,
        fig,
        [{"model": a}, {"model": b}],
        [{"model": str(bench.big[0])}, {"model": str(bench.big[1])}],
    )
    fig.met = (fig.ratio or 0) >= 2.5
    if not fig.met:
        switch_cause(bench, fig, runs, 2.5)

"""Figure b: switch time to the first token. One client alternates between two ~1B models
(mlxrouter keeps both loaded) and sends the same requests to one model; the ratio is what
switching costs a user over staying on one model. mlx_lm.server, which reloads on every switch,
runs the same alternating sequence for reference. The sequences and the explanation of a miss
are shared with figure c (base ↔ LoRA adapter)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx

from .common import WORDS, Figure, fmt_s, median
from .measure import Timed, completion, streamed_completion

if TYPE_CHECKING:
    from .suite import Bench

KEY = "b"
TITLE = "switch time to first token: alternating two ~1B models"
TARGET = "≤ 1.05x one model's, below mlx_lm.server's"
BOUND = 1.05


def _ttfts(timed: list[Timed]) -> list[float]:
    return [t.ttft if t.ttft is not None else t.seconds for t in timed]


def ttft(timed: list[Timed]) -> float:
    return median(_ttfts(timed))


def _sequence(
    bench: Bench, client: httpx.Client, models: list[dict[str, Any]], words: list[str]
) -> list[Timed]:
    """Streamed completions, one after another: each one's time to its first token."""
    return [
        streamed_completion(
            client,
            {"prompt": word, "max_tokens": bench.mode.switch_tokens, "temperature": 0, **fields},
        )
        for fields, word in zip(models, words, strict=True)
    ]


def switching(
    bench: Bench, fig: Figure, ours_pair: list[dict[str, Any]], theirs_pair: list[dict[str, Any]]
) -> dict[str, dict[str, list[Timed]]]:
    """For each prompt variant: mlxrouter on each model of the pair alone (the baseline: the
    two sequences together, as alternating sends half its requests to each), mlxrouter
    alternating, and mlx_lm.server alternating (its one-model sequence once, as a reference).
    Each figure measures its own baseline right beside its alternating run, so a change in the
    machine's load between figures does not land in one side only."""
    n = bench.mode.switch_reps
    words = {"warm": [WORDS[0]] * n, "distinct": WORDS[1 : n + 1]}
    runs: dict[str, dict[str, list[Timed]]] = {"one": {}, "mlxrouter": {}, "server": {}}
    with (
        httpx.Client(base_url=bench.router.url, timeout=600) as router,
        httpx.Client(base_url=bench.server.url, timeout=600) as server,
    ):
        # Warm-up: mlxrouter loads both entries once; mlx_lm.server ends on the second, so
        # its first timed request (for the first) is a switch too.
        for fields in ours_pair:
            completion(router, {"prompt": "Hi", "max_tokens": 1, **fields})
        if "server" not in bench.same_model:
            completion(server, {"prompt": "Hi", "max_tokens": 1, **theirs_pair[0]})
            bench.same_model["server"] = _sequence(
                bench, server, [theirs_pair[0]] * n, words["distinct"]
            )
        for fields in theirs_pair:
            completion(server, {"prompt": "Hi", "max_tokens": 1, **fields})
        for variant in bench.mode.switch_variants:
            first = _sequence(bench, router, [ours_pair[0]] * n, words[variant])
            alternating = [ours_pair[i % 2] for i in range(n)]
            runs["mlxrouter"][variant] = _sequence(bench, router, alternating, words[variant])
            second = _sequence(bench, router, [ours_pair[1]] * n, words[variant])
            runs["one"][variant] = first + second
            bench.same_model.setdefault(variant, first)
            alternating = [theirs_pair[i % 2] for i in range(n)]
            runs["server"][variant] = _sequence(bench, server, alternating, words[variant])
        pool = router.get("/admin/pool").json()
    fig.details.append(
        f"{n} sequential streamed text completions per sequence (one client), a 1-token "
        f"prompt, max_tokens={bench.mode.switch_tokens}, greedy; time to first token (TTFT) "
        "is from sending the request to the first text, medians per sequence. `distinct` "
        "prompts use a new word each time, `warm` repeats one (what a prompt cache could "
        "reuse). The ratio is mlxrouter alternating over mlxrouter staying on one model (each "
        "of the two in turn, the same prompts, measured right before and after): what a "
        "switch costs."
    )
    fig.details.append("")
    fig.details.append(
        "| prompts | mlxrouter, staying on one model | mlxrouter, alternating | switch cost | "
        "mlx_lm.server, alternating (reloads) |"
    )
    fig.details.append("|---|---|---|---|---|")
    ratios: dict[str, float] = {}
    for variant in bench.mode.switch_variants:
        one = ttft(runs["one"][variant])
        ours = ttft(runs["mlxrouter"][variant])
        theirs = ttft(runs["server"][variant])
        ratios[variant] = ours / one
        fig.details.append(
            f"| {variant} | {fmt_s(one)} | {fmt_s(ours)} | **{ratios[variant]:.2f}x** | "
            f"{fmt_s(theirs)} ({theirs / ours:.2f}x mlxrouter's) |"
        )
    fig.details.append("")
    pair = [fields["model"] for fields in ours_pair]
    loaded = {e["id"]: e for e in pool["entries"]}
    loads = ", ".join(
        f"`{k}` {loaded[k]['load_seconds']:.2f} s"
        for k in pair
        if k in loaded and loaded[k].get("load_seconds") is not None
    )
    fig.details.append(
        f"mlx_lm.server on its one model: TTFT {fmt_s(ttft(bench.same_model['server']))}. "
        f"mlxrouter loaded each entry once, before the timed requests (`/admin/pool` "
        f"`load_seconds`): {loads}; both were still loaded at the end: "
        f"{'yes' if all(k in loaded for k in pair) else 'no'}."
    )
    distinct = "distinct" if "distinct" in ratios else next(iter(ratios))
    ours_alt = ttft(runs["mlxrouter"][distinct])
    theirs_alt = ttft(runs["server"][distinct])
    fig.ours = f"TTFT {fmt_s(ours_alt)}"
    one = ttft(runs["one"][distinct])
    fig.theirs = f"one model {fmt_s(one)}; mlx_lm.server {fmt_s(theirs_alt)}"
    fig.ratio = max(ratios.values())
    fig.ratio_text = f"{fig.ratio:.2f}x one model's; mlx_lm.server {theirs_alt / ours_alt:.2f}x"
    fig.met = fig.ratio <= BOUND and all(
        ttft(runs["server"][v]) > ttft(runs["mlxrouter"][v]) for v in ratios
    )
    bench.switch_loads = {
        k: loaded[k]["load_seconds"] for k in pair if k in loaded and loaded[k].get("load_seconds")
    }
    return runs


def switch_cause(bench: Bench, fig: Figure, runs: dict[str, dict[str, list[Timed]]]) -> None:
    """What the measurements say about a miss: which side of the target failed and by how much."""
    for variant in bench.mode.switch_variants:
        one = ttft(runs["one"][variant])
        ours = ttft(runs["mlxrouter"][variant])
        theirs = ttft(runs["server"][variant])
        if ours / one > BOUND:
            fig.cause.append(
                f"{variant} prompts: alternating took {fmt_s(ours - one)} more to the first "
                f"token than staying on one model ({fmt_s(ours)} against {fmt_s(one)}), "
                f"with both entries loaded throughout. The spread within the sequences: "
                f"one model {fmt_s(min(_ttfts(runs['one'][variant])))}-"
                f"{fmt_s(max(_ttfts(runs['one'][variant])))}, alternating "
                f"{fmt_s(min(_ttfts(runs['mlxrouter'][variant])))}-"
                f"{fmt_s(max(_ttfts(runs['mlxrouter'][variant])))}."
            )
        if theirs <= ours:
            fig.cause.append(
                f"{variant} prompts: mlx_lm.server reloading on each switch reached the first "
                f"token in {fmt_s(theirs)}, no later than mlxrouter's {fmt_s(ours)}: a reload "
                "cost less than the request here."
            )


def measure(bench: Bench, fig: Figure) -> None:
    a, b = bench.ids["a"], bench.ids["b"]
    runs = switching(
        bench,
        fig,
        [{"model": a}, {"model": b}],
        [{"model": str(bench.big[0])}, {"model": str(bench.big[1])}],
    )
    if not fig.met:
        switch_cause(bench, fig, runs)

"""Figure x: speculative decoding. The demo model drafts for a model four times its depth (its
own layers and three copies; models.deep_model): decode tokens/s through mlxrouter with
`draft_model` against mlx_lm's own speculative decoding in process on the same pair (what
mlxrouter adds), and against the same model without a draft (what drafting gains). The gain
twice: for a big model the draft always agrees with (the copies' output projections zeroed,
so it predicts what the demo model does) and for one it seldom agrees with (the copies left
whole), which is what drafting costs when it does not pay."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from .common import Figure, fmt_s, median
from .measure import Timed, streamed_completion, timed
from .models import deep_model

if TYPE_CHECKING:
    from .suite import Bench

KEY = "x"
TITLE = "speculative decoding: decode tokens/s with the demo model drafting"
TARGET = "≥ 0.95x mlx_lm's own in process, and a gain over no draft"
BOUND = 0.95
EXTRA_LAYERS = 90  # 30 + 90: four times the demo model's compute per token
PROMPT = "Here is a short story about a fox who learns to read. Once upon a time,"


def _decode(client: httpx.Client, model: str, draft: str | None, tokens: int) -> Timed:
    body: dict[str, object] = {
        "model": model,
        "prompt": PROMPT,
        "max_tokens": tokens,
        "temperature": 0,
    }
    if draft:
        body["draft_model"] = draft
    return streamed_completion(client, body)


def _in_process(bench: Bench, big: Path, tokens: int) -> Callable[[bool], Timed]:
    """mlx_lm's own speculative decoding in this process (`stream_generate` with a
    `draft_model`), the baseline for mlxrouter's: one decode of PROMPT, drafted or not."""
    from mlx_lm import load, stream_generate
    from mlx_lm.sample_utils import make_sampler

    model, tokenizer = load(str(big))[:2]
    draft = load(str(bench.smol))[0]
    sampler = make_sampler(temp=0.0)

    def run(drafted: bool) -> Timed:
        extra: dict[str, Any] = {"draft_model": draft, "num_draft_tokens": 3} if drafted else {}
        started = time.perf_counter()
        first = None
        count = 0
        for response in stream_generate(
            model, tokenizer, PROMPT, max_tokens=tokens, sampler=sampler, **extra
        ):
            first = first or time.perf_counter()
            count = response.generation_tokens
        return timed(started, first, count)

    return run


def measure(bench: Bench, fig: Figure) -> None:
    reps = 1 if bench.mode.name == "quick" else 3
    tokens = bench.mode.a_tokens
    deep = {agree: deep_model(bench.smol, EXTRA_LAYERS, agree) for agree in (True, False)}
    names = {True: "deep-agree", False: "deep-differ"}
    server = bench.mlxrouter(
        "mlxrouter-spec",
        {
            "hf_cache": False,
            "models": {
                "smollm2": {"path": str(bench.smol)},
                **{names[agree]: {"path": str(path)} for agree, path in deep.items()},
            },
            "pool": {"max_models": 3},
        },
    )
    rates: dict[tuple[bool, bool], list[float]] = {}
    local: dict[bool, list[float]] = {}  # mlx_lm in process, the agreeing pair
    texts: dict[tuple[bool, bool], str] = {}
    demo: list[float] = []  # the draft model's own rate, for scale
    try:
        in_process = _in_process(bench, deep[True], tokens)
        with httpx.Client(base_url=server.url, timeout=900) as client:
            for agree in (True, False):  # warm-up: loads all three, fills nothing timed
                _decode(client, names[agree], "smollm2", 2)
            in_process(True)
            for _ in range(reps):  # interleaved, so drift hits every row alike
                alone = _decode(client, "smollm2", None, tokens)
                if alone.decode_rate:
                    demo.append(alone.decode_rate)
                for drafted in (False, True):
                    timed_here = in_process(drafted)
                    if timed_here.decode_rate:
                        local.setdefault(drafted, []).append(timed_here.decode_rate)
                for agree in (True, False):
                    for drafted in (False, True):
                        timed_there = _decode(
                            client, names[agree], "smollm2" if drafted else None, tokens
                        )
                        if timed_there.decode_rate:
                            rates.setdefault((agree, drafted), []).append(timed_there.decode_rate)
            for agree in (True, False):
                for drafted in (False, True):
                    body = {
                        "model": names[agree],
                        "prompt": PROMPT,
                        "max_tokens": 8,
                        "temperature": 0,
                        **({"draft_model": "smollm2"} if drafted else {}),
                    }
                    answer = client.post("/v1/completions", json=body).json()
                    texts[(agree, drafted)] = answer["choices"][0]["text"]
    finally:
        server.stop()
        bench.servers.remove(server)
        gc.collect()
    med = {k: median(v) for k, v in rates.items()}
    here = {k: median(v) for k, v in local.items()}
    fig.details.append(
        f"One mlxrouter daemon with the demo model (SmolLM2-135M, 4-bit, 30 layers) and two "
        f"models of {30 + EXTRA_LAYERS} layers built from it; the baseline is mlx_lm's own "
        f"speculative decoding in the benchmark's process (`stream_generate` with "
        f"`draft_model`) on the same pair. Streamed text completions of up to {tokens} "
        f"tokens, greedy, {reps} interleaved rounds; decode rate = tokens after the first / "
        "time after the first. `draft_model: smollm2` with the default 3 draft tokens per "
        "step."
    )
    fig.details.append("")
    fig.details.append("| big model | without a draft | drafted by the demo model | gain |")
    fig.details.append("|---|---|---|---|")
    fig.details.append(
        f"| draft agrees, mlx_lm in process (the baseline) | {here[False]:.2f} tok/s | "
        f"{here[True]:.2f} tok/s | {here[True] / here[False]:.2f}x |"
    )
    label = {True: "draft agrees (copies silenced)", False: "draft seldom agrees (copies whole)"}
    for agree in (True, False):
        plain, with_draft = med[(agree, False)], med[(agree, True)]
        fig.details.append(
            f"| {label[agree]}, mlxrouter | {plain:.2f} tok/s | {with_draft:.2f} tok/s | "
            f"**{with_draft / plain:.2f}x** |"
        )
    fig.details.append("")
    same = all(texts[(a, False)] == texts[(a, True)] for a in (True, False))
    fig.details.append(
        "The first 8 greedy tokens with and without the draft are "
        + ("the same for both models" if same else "NOT the same")
        + " (the model checks every drafted token). The demo model alone decodes at "
        f"{median(demo):.2f} tok/s here ({fmt_s(1 / median(demo))} a token)."
    )
    ratio = med[(True, True)] / here[True]
    gain = med[(True, True)] / med[(True, False)]
    fig.ours = f"{med[(True, True)]:.2f} tok/s drafted"
    fig.theirs = f"{here[True]:.2f} tok/s mlx_lm drafted"
    fig.ratio = ratio
    fig.ratio_text = (
        f"{ratio:.3f}x mlx_lm's; drafting gains {gain:.2f}x (a draft that seldom agrees: "
        f"{med[(False, True)] / med[(False, False)]:.2f}x)"
    )
    fig.met = ratio >= BOUND and gain > 1.0 and same
    if not same:
        fig.cause.append("A drafted answer differed from the undrafted one at temperature 0.")
    if ratio < BOUND:
        fig.cause.append(
            f"Drafted decoding through mlxrouter ran at {ratio:.3f}x mlx_lm's in process "
            f"({fmt_s(1 / med[(True, True)] - 1 / here[True])} more per token): mlxrouter runs "
            "mlx_lm's `speculative_generate_step` one token per engine turn, handing each to "
            "the event loop and the HTTP stream."
        )
    if gain <= 1.0:
        # One step with full agreement: 3 draft tokens one by one, then one pass of the big
        # model over 4 tokens, for 4 tokens. Solve the measured rate for that pass's cost.
        draft_s, big_s = 1 / median(demo), 1 / med[(True, False)]
        verify = (4 / med[(True, True)] - 3 * draft_s) / big_s
        fig.cause.append(
            f"Drafting did not pay with a draft that always agrees ({gain:.2f}x): a step "
            f"yields 4 tokens for 3 draft tokens ({fmt_s(draft_s)} each) and one pass of the "
            f"big model over 4 tokens, which the measured rate puts at {verify:.1f}x a "
            f"1-token pass ({fmt_s(big_s)})."
        )

"""Figure v: vision. Time to first token for a 512 x 512 image prompt through mlxrouter (an
OpenAI chat request with a data URL, to a served daemon) against mlx-vlm in this process, and
a second turn about the same image with the prompt cache and without it."""

from __future__ import annotations

import base64
import io
import time
from typing import TYPE_CHECKING, Any

import httpx

from .common import Figure, fmt_s, plural
from .models import VLM_SPEC, vision_model

if TYPE_CHECKING:
    from pathlib import Path

    from .suite import Bench

KEY = "v"
TITLE = "vision: time to first token for a 512 x 512 image vs mlx-vlm in process"
TARGET = "≤ 1.1x mlx-vlm"
QUESTION = "Describe this picture."
SIDE = 512


def picture(variant: int = 0) -> bytes:
    """A 512 x 512 PNG of smooth colour gradients; each `variant` another file (a pixel of
    another colour), so the prompt cache never knows it."""
    import numpy as np
    from PIL import Image

    ramp = np.linspace(0, 255, SIDE, dtype=np.uint8)
    pixels = np.stack(
        [np.tile(ramp, (SIDE, 1)), np.tile(ramp[:, None], (1, SIDE)), np.full((SIDE, SIDE), 90)],
        axis=-1,
    ).astype(np.uint8)
    pixels[0, 0] = (variant % 256, variant // 256 % 256, 7)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def first_turn(png: bytes) -> dict[str, Any]:
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    return {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": QUESTION},
        ],
    }


def ask(http: httpx.Client, messages: list[dict[str, Any]]) -> tuple[float, dict[str, Any]]:
    """One greedy token: the request's time is its time to first token (prefill + one step)."""
    body = {"model": "vlm", "messages": messages, "max_tokens": 1, "temperature": 0}
    started = time.perf_counter()
    reply = http.post("/v1/chat/completions", json=body)
    seconds = time.perf_counter() - started
    if reply.status_code != 200:
        raise RuntimeError(f"chat -> {reply.status_code}: {reply.text[:300]}")
    return seconds, reply.json()


def in_process(folder: Path, png: bytes, reps: int) -> tuple[list[float], int]:
    """mlx-vlm's own time to its first token (one greedy token, as asked of mlxrouter), the
    model loaded once; and the prompt's length in tokens."""
    from mlx_vlm import generate, load
    from mlx_vlm.utils import load_image

    model, processor = load(str(folder))
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}
    ]
    prompt = processor.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False
    )
    times, tokens = [], 0
    for _ in range(reps + 1):  # the first warms up
        started = time.perf_counter()
        image = load_image(io.BytesIO(png))  # the daemon decodes each request's image too
        result = generate(model, processor, prompt, [image], max_tokens=1, temperature=0.0)
        times.append(time.perf_counter() - started)
        tokens = int(result.prompt_tokens)
    del model, processor
    return times[1:], tokens


def measure(bench: Bench, fig: Figure) -> None:
    reps = 2 if bench.mode.name == "quick" else 3 if bench.mode.name == "default" else 5
    folder = vision_model()
    png = picture()
    theirs, prompt_tokens = in_process(folder, png, reps)
    models = {"vlm": {"path": str(folder)}}
    cached = bench.mlxrouter("mlxrouter-vision", {"hf_cache": False, "models": models})
    plain = bench.mlxrouter(
        "mlxrouter-vision-nocache",
        {"hf_cache": False, "models": models, "pool": {"prompt_cache_bytes": 0}},
    )
    ours: list[float] = []
    turns: dict[str, list[float]] = {"with the cache": [], "without": []}
    cached_tokens = 0
    try:
        with (
            httpx.Client(base_url=cached.url, timeout=600) as http,
            httpx.Client(base_url=plain.url, timeout=600) as http_plain,
        ):
            turn = first_turn(png)
            ask(http, [turn])  # warm-up: the load, the first prefill
            ask(http_plain, [turn])
            for rep in range(reps):
                # a new picture each time, so the cache never serves the first turn
                fresh = first_turn(picture(rep + 1))
                seconds, answer = ask(http, [fresh])
                ours.append(seconds)
                reply = answer["choices"][0]["message"]["content"] or "."
                follow = [
                    fresh,
                    {"role": "assistant", "content": reply},
                    {"role": "user", "content": "And the colours?"},
                ]
                seconds, again = ask(http, follow)
                turns["with the cache"].append(seconds)
                details = again["usage"].get("prompt_tokens_details") or {}
                cached_tokens = details.get("cached_tokens", 0)
                turns["without"].append(ask(http_plain, follow)[0])
    finally:
        plain.stop()
        cached.stop()
    best_ours, best_theirs = min(ours), min(theirs)
    ratio = best_ours / best_theirs
    with_cache, without = min(turns["with the cache"]), min(turns["without"])
    fig.details += [
        f"A random-weight Qwen2-VL ({VLM_SPEC['layers']} layers of {VLM_SPEC['hidden']}, a "
        f"vision tower of {VLM_SPEC['vision_depth']} blocks of {VLM_SPEC['vision_width']}), a "
        f"{SIDE} x {SIDE} PNG and one question: {prompt_tokens} prompt tokens, the image's "
        "included. Time to first token = one greedy token asked for: mlx-vlm's `generate` in "
        "this process (the image decoded, the processor run, prefill, one step), against a "
        "served mlxrouter answering an OpenAI chat request with the image as a data URL (the "
        "HTTP round trip and the image's checks included). Each side's fastest of "
        f"{plural(reps, 'round')} after a warm-up; every round is a new picture, so nothing "
        "comes from a cache.",
        "",
        "| | time to first token | every round |",
        "|---|---|---|",
        f"| mlx-vlm in process | {fmt_s(best_theirs)} | {', '.join(map(fmt_s, theirs))} |",
        f"| mlxrouter | {fmt_s(best_ours)} (**{ratio:.2f}x**) | {', '.join(map(fmt_s, ours))} |",
        "",
        "A second turn about the same picture (the first turn, the answer, one more question), "
        "to mlxrouter with its prompt cache and to one with `pool.prompt_cache_bytes: 0`: with "
        f"the cache, {cached_tokens} of its prompt tokens, the image's included, are not run "
        "again.",
        "",
        "| second turn | time to first token | every round |",
        "|---|---|---|",
    ]
    for name, done in turns.items():
        fig.details.append(f"| {name} | {fmt_s(min(done))} | {', '.join(map(fmt_s, done))} |")
    fig.ours = f"{fmt_s(best_ours)}; second turn {fmt_s(with_cache)} (cache) / {fmt_s(without)}"
    fig.theirs = f"mlx-vlm {fmt_s(best_theirs)}"
    fig.ratio = ratio
    fig.ratio_text = f"{ratio:.2f}x; cache {without / with_cache:.1f}x faster"
    fig.met = ratio <= 1.1
    if not fig.met:
        spread = max(ours) / min(ours) - 1
        fig.cause.append(
            f"mlxrouter's time to first token is {ratio:.2f}x mlx-vlm's in process; its own "
            f"rounds differ by {spread * 100:.0f}%. Beyond mlx-vlm's work it pays the HTTP round "
            "trip, the data URL's decoding and the image's checks (Pillow opens it once at the "
            "boundary, once more for the processor)."
        )

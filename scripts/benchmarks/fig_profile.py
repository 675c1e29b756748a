"""The profile: where one request's time goes outside MLX, measured with cProfile on an
in-process daemon's event-loop thread and, separately, on its engine thread."""

from __future__ import annotations

import cProfile
import json
import pstats
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from .common import WORDS, fmt_s, median

if TYPE_CHECKING:
    from .suite import Bench


def profile(bench: Bench) -> None:
    """Non-streaming chat requests through an in-process daemon (httpx's ASGI transport on
    the same event loop, no socket), profiled with cProfile on the event-loop thread and,
    separately, on the engine thread."""
    import asyncio
    import logging

    from mlxrouter.api import create_app
    from mlxrouter.config import parse_config

    config = parse_config(
        json.dumps(
            {
                "hf_cache": False,
                "models": {"smollm2": {"path": str(bench.smol)}},
                "log_file": False,
            }
        )
    )
    n = bench.mode.profile_requests
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Hi"}],  # made distinct per request
        "max_tokens": 4,
        "temperature": 0,
    }
    loop_prof, engine_prof = cProfile.Profile(), cProfile.Profile()
    plain: list[float] = []
    profiled: list[float] = []

    async def requests(client: httpx.AsyncClient, into: list[float], offset: int) -> None:
        for i in range(offset, offset + n):  # never the same prompt twice
            message = {"role": "user", "content": f"Hi, {WORDS[i % len(WORDS)]} {i}!"}
            started = time.perf_counter()
            response = await client.post(
                "/v1/chat/completions", json={**body, "messages": [message]}
            )
            into.append(time.perf_counter() - started)
            response.raise_for_status()

    async def drive() -> None:
        app = create_app(config, watch=False)
        daemon = app.state.daemon
        await daemon.start()
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(
                transport=transport, base_url="http://127.0.0.1:8080", timeout=600
            ) as client:
                (await client.post("/v1/chat/completions", json=body)).raise_for_status()
                await requests(client, plain, 0)
                await daemon.engine.call(engine_prof.enable)
                loop_prof.enable()
                await requests(client, profiled, n)
                loop_prof.disable()
                await daemon.engine.call(engine_prof.disable)
        finally:
            await daemon.stop()

    # The access log line is formatted as when served; it goes nowhere here.
    logger = logging.getLogger("mlxrouter")
    logger.setLevel(logging.INFO)
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    asyncio.run(drive())
    bench.profile_lines = summarise_profile(loop_prof, engine_prof, plain, profiled, bench.facts)
    bench.facts["send_alone_us"] = socket_send_cost() * 1e6


def socket_send_cost(n: int = 2000) -> float:
    """Seconds for one 1-byte send plus its receive on an idle socket pair (no contention)."""
    left, right = socket.socketpair()
    try:
        started = time.perf_counter()
        for _ in range(n):
            left.send(b"\0")
            right.recv(1)
        return (time.perf_counter() - started) / n
    finally:
        left.close()
        right.close()


def _category(filename: str, name: str) -> str:
    path = filename.replace("\\", "/")
    if filename == "~":
        return "MLX" if "mlx" in name else "builtins"
    if "/mlxrouter/" in path:
        return "mlxrouter"
    if "/mlx_lm/" in path:
        return "mlx_lm (text)" if "tokenizer_utils" in path or "sample_utils" in path else "MLX"
    if "/mlx/" in path:
        return "MLX"
    for package in (
        "litestar", "httpx", "httpcore", "msgspec", "transformers", "tokenizers", "jinja2",
        "prometheus_client", "anyio", "asyncio", "logging", "uvicorn", "json", "copy",
    ):  # fmt: skip
        if f"/{package}/" in path or path.endswith(f"/{package}.py"):
            return package
    return "other"


def _label(filename: str, line: int, name: str) -> str:
    if filename == "~":
        return name
    parts = Path(filename).parts
    return f"{'/'.join(parts[-2:])}:{line} {name}"


def _main_caller(callers: dict[Any, Any]) -> str:
    """The caller through which most of a function's time came, skipping the stdlib's own
    recursion (deepcopy calling deepcopy)."""
    ranked = sorted(callers.items(), key=lambda kv: -kv[1][3])
    for (filename, line, name), _ in ranked:
        if "/copy.py" not in filename:
            return _label(filename, line, name)
    return _label(*ranked[0][0]) if ranked else ""


_WAITS = ("select", "poll", "acquire", "SimpleQueue", "sleep", "wait")


def summarise_profile(
    loop_prof: cProfile.Profile,
    engine_prof: cProfile.Profile,
    plain: list[float],
    profiled: list[float],
    facts: dict[str, float],
) -> list[str]:
    n = len(profiled)
    lines = [
        f"{n} non-streaming chat requests (SmolLM2-135M-Instruct, one short user message, a "
        "different one each time after the same system prompt, max_tokens=4, greedy) "
        "through an in-process app (`create_app`, driven by "
        "`httpx.AsyncClient` over `httpx.ASGITransport` on the same event loop, no socket), "
        "after one warm-up request. cProfile ran on the event-loop thread (server and client "
        "code together: httpx is the client) and, separately, on the engine thread. Median "
        f"latency per request: **{fmt_s(median(plain))}** unprofiled, {fmt_s(median(profiled))}"
        " under the profiler. `MLX` below is model compute: mlx and mlx_lm's model, cache and "
        "generation code (MLX's C++ work is counted in the Python function that waits for "
        "it); everything else is outside MLX.",
        "",
    ]
    outside_total = 0.0
    for title, prof in (("Event-loop thread", loop_prof), ("Engine thread", engine_prof)):
        raw: dict[Any, Any] = pstats.Stats(prof).stats  # type: ignore[attr-defined]
        by_category: dict[str, float] = {}
        rows = []
        idle = 0.0
        for (filename, line, name), (_cc, calls, tottime, cumtime, callers) in raw.items():
            if filename == "~" and any(w in name for w in _WAITS):
                idle += tottime
                continue
            category = _category(filename, name)
            by_category[category] = by_category.get(category, 0.0) + tottime
            if category != "MLX":
                rows.append(
                    (tottime, cumtime, calls, category, _label(filename, line, name),
                     _main_caller(callers))
                )  # fmt: skip
        if prof is engine_prof:  # the self-pipe writes behind call_soon_threadsafe
            for (filename, _line, name), stat in raw.items():
                if filename == "~" and "send" in name and "socket" in name:
                    facts["wake_ms"] = stat[2] / n * 1000
                    facts["wakes"] = stat[1] / n
        mlx = by_category.pop("MLX", 0.0)
        outside = sum(by_category.values())
        outside_total += outside
        rows.sort(reverse=True)
        parts = ", ".join(
            f"{k} {fmt_s(v / n)}"
            for k, v in sorted(by_category.items(), key=lambda kv: -kv[1])
            if v / n >= 0.00005
        )
        lines += [
            f"**{title}**: {fmt_s((mlx + outside) / n)} of CPU per request: MLX "
            f"{fmt_s(mlx / n)}, outside MLX **{fmt_s(outside / n)}** ({parts}); "
            f"{fmt_s(idle / n)} blocked waiting.",
            "",
            "| own time / request | with callees | calls / request | package | function | "
            "mostly called from |",
            "|---|---|---|---|---|---|",
        ]
        for tottime, cumtime, calls, category, label, caller in rows[:10]:
            lines.append(
                f"| {fmt_s(tottime / n)} | {fmt_s(cumtime / n)} | {calls / n:.0f} | "
                f"{category} | `{label}` | {f'`{caller}`' if caller else '-'} |"
            )
        lines.append("")
    lines.append(
        f"Outside MLX, one request costs about {fmt_s(outside_total / n)} of CPU in all (under "
        "the profiler, which inflates Python-heavy code), "
        f"{outside_total / n / median(profiled) * 100:.1f}% of its profiled latency."
    )
    lines.append("")
    return lines

"""Figure d: GET /v1/models latency as a synthetic HF cache grows from 10 to 100 to 1,000
repos, mlxrouter against mlx_lm.server (which rescans the cache on every request); a miss is
broken down on an in-process app."""

from __future__ import annotations

import json
import statistics
import time
from typing import TYPE_CHECKING, Any

import httpx

from .common import Figure, fmt_s, median
from .measure import asgi_get
from .models import add_hf_repos

if TYPE_CHECKING:
    from .suite import Bench

KEY = "d"
TITLE = "GET /v1/models p50 with 10/100/1000 HF cache repos"
TARGET = "≤ 2 ms, flat"


def measure(bench: Bench, fig: Figure) -> None:
    mode = bench.mode
    router = bench.mlxrouter("mlxrouter-hf", {"hf_cache": True}, hf_cache=bench.hf)
    rows = []
    have = mode.hf_sizes[0]
    try:
        with (
            httpx.Client(base_url=router.url, timeout=600) as ours,
            httpx.Client(base_url=bench.server.url, timeout=600) as theirs,
        ):
            for size in mode.hf_sizes:
                added = time.perf_counter()
                add_hf_repos(bench.hf, bench.blobs, have, size)
                have = size
                visible = _wait_listed(ours, size) - added
                listed_theirs = len(theirs.get("/v1/models").json()["data"])
                ours_t = _get_times(ours, "/v1/models", mode.models_reps)
                theirs_t = _get_times(theirs, "/v1/models", mode.models_reps_server)
                listed_ours = len(ours.get("/v1/models").json()["data"])
                rows.append((size, ours_t, theirs_t, listed_ours, listed_theirs, visible))
    finally:
        router.stop()
    fig.details += [
        "A synthetic hub cache (`models--bench--model-NNNN/{blobs,refs/main,snapshots/<40 "
        "hex>}`, blobs hard-linked to one tiny model, snapshot files symlinked to the blobs), "
        "grown in place from one size to the next while both servers run; `HF_HUB_CACHE` "
        "points both at it (mlxrouter: `hf_cache: true`). Client: httpx, one keep-alive "
        f"connection where the server allows it; {mode.models_reps} requests per size to "
        f"mlxrouter, {mode.models_reps_server} to mlx_lm.server (it rescans the cache on "
        "every request).",
        "",
        "| repos | mlxrouter p50 | mlxrouter p90 | mlx_lm.server p50 | ratio | listed "
        "(ours/theirs) | mlxrouter: new repos listed after |",
        "|---|---|---|---|---|---|---|",
    ]
    for size, ours_t, theirs_t, n_ours, n_theirs, visible in rows:
        p90 = statistics.quantiles(ours_t, n=10)[-1] if len(ours_t) >= 10 else max(ours_t)
        fig.details.append(
            f"| {size} | {fmt_s(median(ours_t))} | {fmt_s(p90)} | "
            f"{fmt_s(median(theirs_t))} | {median(theirs_t) / median(ours_t):.1f}x | "
            f"{n_ours}/{n_theirs} | {fmt_s(visible)} |"
        )
    worst = max(median(r[1]) for r in rows)
    first, last = median(rows[0][1]), median(rows[-1][1])
    fig.ours = f"{fmt_s(first)} → {fmt_s(last)}"
    fig.theirs = f"{fmt_s(median(rows[0][2]))} → {fmt_s(median(rows[-1][2]))}"
    fig.ratio = median(rows[-1][2]) / last
    fig.ratio_text = (
        f"{last * 1000:.2f} ms at {rows[-1][0]} repos ({last / first:.1f}x the "
        f"{rows[0][0]}-repo p50; mlx_lm.server {fig.ratio:.0f}x slower)"
    )
    fig.met = worst <= 0.002 and last <= 2 * first
    if not fig.met:
        _models_cause(bench, fig, rows)


def _wait_listed(client: httpx.Client, size: int, timeout: float = 300) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = client.get("/v1/models").json()["data"]
        if sum(1 for m in data if m["id"].startswith("bench/")) >= size:
            return time.perf_counter()
        time.sleep(0.05)
    raise RuntimeError(f"mlxrouter did not list {size} HF cache repos within {timeout}s")


def _get_times(client: httpx.Client, path: str, n: int) -> list[float]:
    client.get(path)  # warm the connection
    times = []
    for _ in range(n):
        started = time.perf_counter()
        response = client.get(path)
        times.append(time.perf_counter() - started)
        response.raise_for_status()
    return times


def _models_cause(bench: Bench, fig: Figure, rows: list[Any]) -> None:
    """Where a large /v1/models answer's time goes, measured on an in-process app over the
    same cache: the whole ASGI app without a socket or client, and within it the cards."""
    import asyncio

    from mlxrouter.api import create_app, routes
    from mlxrouter.config import parse_config

    size = rows[-1][0]
    total = median(rows[-1][1])
    app = create_app(parse_config(f"hf_cache: {json.dumps(str(bench.hf))}"), watch=False)
    daemon = app.state.daemon
    n = 30
    try:
        asgi = [asyncio.run(asgi_get(app, "/v1/models")) for _ in range(n)]
        in_app, body_bytes = median([a[0] for a in asgi]), asgi[0][1]
        card = getattr(routes, "_model_card", None)  # private: may change; then skipped
        build = None
        if card is not None:
            started = time.perf_counter()
            for _ in range(n):
                sorted((card(daemon, e.id, e) for e in daemon.registry), key=lambda c: c["id"])
            build = (time.perf_counter() - started) / n
    finally:
        daemon.engine.close()
    text = (
        f"At {size} repos one answer is {body_bytes / 1000:.0f} kB, and its cost grows with "
        "it. Measured in-process on the same registry, the app alone (Litestar, the "
        f"handler, JSON encoding; no socket, no client) takes {fmt_s(in_app)} per request"
    )
    if build is not None:
        text += f", of which building and sorting the cards is {fmt_s(build)}"
    text += (
        f"; the rest of the {fmt_s(total)} p50 is uvicorn, the socket and the client "
        "parsing the body. The handler encodes the list once per registry snapshot and "
        "loaded set (`ModelsAnswer`) and sends those bytes again. Nothing scans the disk: "
        "new repos appear once the watcher's rebuild is done."
    )
    bench.facts["models_in_app_s"] = in_app
    fig.cause.append(text)

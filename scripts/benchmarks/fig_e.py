"""Figure e: cold load of a ~1B 4-bit model through mlxrouter's `POST /admin/load`, against a
raw read of the same files and in-process `mlx_lm.load`, the page cache dropped before each
(where the kernel allows it)."""

from __future__ import annotations

import gc
import time
from typing import TYPE_CHECKING

import httpx

from .common import MB, Figure, fmt_s, median, plural
from .machine import drop_page_cache

if TYPE_CHECKING:
    from .suite import Bench

KEY = "e"
TITLE = "cold load of a ~1B 4-bit model"
TARGET = "≤ 1.2x raw read"


def measure(bench: Bench, fig: Figure) -> None:
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    folder = bench.big[0]
    model_id = bench.ids["a"]
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    total = sum(p.stat().st_size for p in files)
    can_drop = drop_page_cache()
    bench.cold_cache = can_drop

    def raw_read(cold: bool) -> float:
        if cold:
            drop_page_cache()
        started = time.perf_counter()
        for path in files:
            with path.open("rb", buffering=0) as handle:
                while handle.read(16 << 20):
                    pass
        return time.perf_counter() - started

    def router_load(client: httpx.Client, cold: bool) -> float:
        client.post("/admin/unload", json={"model": model_id}).raise_for_status()
        if cold:
            drop_page_cache()
        started = time.perf_counter()
        response = client.post("/admin/load", json={"model": model_id})
        seconds = time.perf_counter() - started
        response.raise_for_status()
        return seconds

    def library_load(cold: bool) -> float:
        if cold:
            drop_page_cache()
        started = time.perf_counter()
        model, tokenizer = load(str(folder))
        seconds = time.perf_counter() - started
        del model, tokenizer
        gc.collect()
        mx.clear_cache()
        return seconds

    def tokenizer_load() -> float:
        started = time.perf_counter()
        load_tokenizer(folder)
        return time.perf_counter() - started

    cold: dict[str, list[float]] = {"raw": [], "router": [], "library": []}
    warm: dict[str, list[float]] = {"raw": [], "router": [], "library": []}
    tokenizer: list[float] = []
    with httpx.Client(base_url=bench.router_g.url, timeout=600) as client:
        for _ in range(bench.mode.load_reps):  # interleaved
            cold["raw"].append(raw_read(can_drop))
            cold["router"].append(router_load(client, can_drop))
            cold["library"].append(library_load(can_drop))
        raw_read(cold=False)  # every file in the page cache from here on
        warm["raw"].append(raw_read(cold=False))
        warm["router"].append(router_load(client, cold=False))
        warm["library"].append(library_load(cold=False))
        tokenizer += [tokenizer_load(), tokenizer_load()]
        client.post("/admin/unload", json={"model": model_id})
    raw, ours, lib = median(cold["raw"]), median(cold["router"]), median(cold["library"])
    tok = median(tokenizer)
    ratio = ours / raw
    fig.ours = fmt_s(ours)
    fig.theirs = fmt_s(raw)
    fig.ratio = ratio
    fig.ratio_text = f"{ratio:.2f}x"
    fig.met = ratio <= 1.2
    state = (
        "cold: the page cache was dropped (`echo 1 > /proc/sys/vm/drop_caches`) before each"
        if can_drop
        else "**warm**: dropping the page cache was refused here, so every read is from memory"
    )
    fig.details += [
        f"`{model_id}`: {len(files)} files, {total / MB:.0f} MB; "
        f"{plural(bench.mode.load_reps, 'run')} of each, interleaved, {state}. "
        "mlxrouter: `POST /admin/load` (after "
        "`/admin/unload`), timed by the client. Warm: one run with every file in the page "
        "cache.",
        "",
        "| | cold | warm (page cache) |",
        "|---|---|---|",
        f"| raw read of every file (16 MB `read`s) | {fmt_s(raw)} ({total / raw / MB:.0f} "
        f"MB/s) | {fmt_s(warm['raw'][0])} |",
        f"| mlxrouter `POST /admin/load` | **{fmt_s(ours)}** | {fmt_s(warm['router'][0])} |",
        f"| in-process `mlx_lm.load` (what both servers call) | {fmt_s(lib)} | "
        f"{fmt_s(warm['library'][0])} |",
        f"| `mlx_lm` tokenizer alone (`load_tokenizer`) | | {fmt_s(tok)} |",
        "",
        "Every cold run, in order: raw read "
        + ", ".join(fmt_s(x) for x in cold["raw"])
        + "; mlxrouter "
        + ", ".join(fmt_s(x) for x in cold["router"])
        + "; `mlx_lm.load` "
        + ", ".join(fmt_s(x) for x in cold["library"])
        + ".",
    ]
    bench.facts["tokenizer_s"] = tok
    bench.facts["load_gap_s"] = lib - raw
    if can_drop and raw < 1.5 * warm["raw"][0]:
        fig.details += [
            "",
            "Note: cold reads were barely slower than warm ones; dropping the page cache "
            "may not have taken effect (a virtual disk with its own cache?).",
        ]
    if not fig.met:
        warm_ours, warm_lib, warm_raw = warm["router"][0], warm["library"][0], warm["raw"][0]
        text = (
            f"mlxrouter's load takes {fmt_s(ours)} cold against {fmt_s(raw)} to read the "
            f"bytes. With every file already in the page cache it still takes "
            f"{fmt_s(warm_ours)} ({fmt_s(warm_lib)} for `mlx_lm.load` in-process), against "
            f"{fmt_s(warm_raw)} to read them: the load is CPU work on top of the read, not "
            f"slow I/O, and loading the tokenizer alone takes {fmt_s(tok)} of it "
            "(transformers' AutoTokenizer on SmolLM2's 3.5 MB tokenizer.json). "
        )
        extra = ours - lib
        text += (
            f"Cold, mlxrouter's load took {fmt_s(extra)} more than `mlx_lm.load` in-process "
            "(timed through HTTP: the request, the engine thread's queue, and run-to-run "
            "noise)."
            if extra > 0.05 * lib
            else "Cold, mlxrouter's load costs no more than `mlx_lm.load` in-process "
            f"({extra * 1000:+.0f} ms)."
        )
        rate = total / raw
        big_read = 4500 * MB / rate
        text += (
            " That CPU work does not grow with the file size as the read does: at this "
            f"disk's {rate / MB:.0f} MB/s a 4.5 GB model takes {big_read:.1f} s to read, and "
            f"the {fmt_s(tok)} tokenizer would add {tok / big_read * 100:.0f}% (computed, "
            "not measured)."
        )
        fig.cause.append(text)

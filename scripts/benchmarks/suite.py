"""The run: prepares the models, starts the servers each figure needs, runs the figures in
order and keeps what they share (the servers, the models, facts the report refers to)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from _harness import DAEMON_DIRS, daemon_env

from . import (
    fig_a,
    fig_b,
    fig_c,
    fig_d,
    fig_e,
    fig_f,
    fig_g,
    fig_h,
    fig_i,
    fig_p,
    fig_profile,
    fig_s,
    fig_v,
    fig_x,
)
from .common import MB, REPO, Figure, Mode, verdict
from .harness import MlxLmServer, MlxRouter, Server
from .machine import proc_status
from .measure import Timed
from .models import (
    add_hf_repos,
    big_adapter,
    big_model,
    entry_overhead,
    folder_bytes,
    smollm,
    tiny_blob_set,
)


class Bench:
    # Set by run() before the figures that use them.
    smol: Path  # SmolLM2-135M-Instruct
    big: list[Path]  # the three ~1B models
    adapter: Path  # the LoRA adapter on big[0]
    ids: dict[str, str]  # "a", "b", "c" -> their ids in mlxrouter's config
    hf: Path  # the synthetic HF cache (figure d)
    blobs: dict[str, Path]  # the files every synthetic repo links to
    server: Server  # mlx_lm.server on SmolLM2
    router: Server  # mlxrouter with SmolLM2, two ~1B models and the adapter (a, b, c, f)
    router_g: Server  # mlxrouter with a pool budget for two of the three ~1B models (e, g)
    entry_overhead: int
    budget: int
    idle_rss: int

    def __init__(self, mode: Mode, only: set[str], tmp: Path) -> None:
        self.mode = mode
        self.only = only
        self.tmp = tmp
        self.figures: list[Figure] = []
        self.servers: list[Server] = []
        self.profile_lines: list[str] = []
        self.notes: list[str] = []
        self.cold_cache = False
        # figure b's one-model sequences per prompt variant ("server": mlx_lm.server's), for c too
        self.same_model: dict[str, list[Timed]] = {}
        self.facts: dict[str, float] = {}  # measured numbers the recommendations refer to
        self.single_rate: float | None = None  # figure a's decode rate, for scale in f
        self.switch_loads: dict[str, float] = {}  # mlxrouter's load seconds in b, then c
        # In-process daemons (figure d's breakdown, the profile) see only the suite's folders.
        for var, value in self.env("in-process").items():
            if var.startswith(("MLXROUTER_", "HF_HUB_")):
                os.environ[var] = value

    # -- plumbing --

    def wanted(self, key: str) -> bool:
        return not self.only or key in self.only

    def env(self, name: str, hf_cache: Path | None = None) -> dict[str, str]:
        root = self.tmp / name
        env = daemon_env(root)
        for sub in DAEMON_DIRS.values():
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "data" / "models").mkdir(exist_ok=True)
        empty = self.tmp / "hf-empty"
        empty.mkdir(exist_ok=True)
        env["HF_HUB_CACHE"] = str(hf_cache or empty)
        env["HF_HUB_OFFLINE"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        env.pop("MLXROUTER_API_KEY", None)
        return env

    def mlxrouter(self, name: str, config: dict[str, Any], hf_cache: Path | None = None) -> Server:
        root = self.tmp / name
        root.mkdir(parents=True, exist_ok=True)
        path = root / "config.yaml"
        path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        server = MlxRouter(name, ["--config", str(path)], self.env(name, hf_cache), root / "log")
        self.servers.append(server)
        server.start()
        return server

    def mlx_lm_server(self, model: Path, hf_cache: Path) -> Server:
        root = self.tmp / "mlx_lm.server"
        root.mkdir(parents=True, exist_ok=True)
        server = MlxLmServer(
            "mlx_lm.server", ["--model", str(model)], self.env("mlx_lm", hf_cache), root / "log"
        )
        self.servers.append(server)
        server.start()
        return server

    def stop_all(self) -> None:
        for server in reversed(self.servers):
            server.stop()
        self.servers.clear()

    def run_figure(self, module: ModuleType) -> None:
        """One figure: `module` has KEY, TITLE, TARGET and measure(bench, figure)."""
        figure = Figure(module.KEY, module.TITLE, module.TARGET)
        if not self.wanted(figure.key):
            return
        print(f"== {figure.key}. {figure.title}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        try:
            module.measure(self, figure)
        except Exception as exc:
            figure.error = f"{type(exc).__name__}: {exc}"
            print(f"   failed: {figure.error}", file=sys.stderr)
        figure.seconds = time.perf_counter() - started
        self.figures.append(figure)
        summary = figure.error or f"{figure.ratio_text} ({verdict(figure.met)})"
        print(f"   {summary}  [{figure.seconds:.0f}s]", file=sys.stderr, flush=True)

    # -- the run --

    def run(self) -> None:
        mode = self.mode
        print("== preparing models", file=sys.stderr, flush=True)
        self.smol = smollm()
        self.big = [
            big_model(f"llama-1b-q4-{x}", seed, self.smol) for seed, x in enumerate("abc", 1)
        ]
        self.adapter = big_adapter("llama-1b-q4-a-lora", self.big[0], seed=4)
        self.ids = {"a": "bench-1b-a", "b": "bench-1b-b", "c": "bench-1b-c"}
        self.hf = self.tmp / "hf-cache"
        self.hf.mkdir()
        self.blobs = tiny_blob_set(self.tmp / "tiny-blobs")
        add_hf_repos(self.hf, self.blobs, 0, mode.hf_sizes[0])

        needs_server = any(self.wanted(k) for k in "abcdfp")  # figure s compares surfaces only
        if needs_server:
            self.server = self.mlx_lm_server(self.smol, self.hf)
        needs_main = any(self.wanted(k) for k in "abcf")
        if needs_main:
            models: dict[str, Any] = {
                "smollm2": {"path": str(self.smol)},
                self.ids["a"]: {"path": str(self.big[0])},
                self.ids["b"]: {"path": str(self.big[1])},
                "bench-1b-a-lora": {"path": str(self.adapter), "base": self.ids["a"]},
            }
            self.router = self.mlxrouter(
                "mlxrouter-main",
                {"hf_cache": False, "models": models, "pool": {"max_models": 4}},
            )
        for module in (fig_a, fig_b, fig_c, fig_f, fig_p):
            self.run_figure(module)
        if needs_main:
            self.router.stop()
        self.run_figure(fig_d)
        if needs_server:
            self.server.stop()
        if self.wanted("e") or self.wanted("g"):
            # Room for two of the three models: each costs its weights plus the per-entry
            # prompt-cache allowance the pool adds to every entry (where there is one).
            self.entry_overhead = entry_overhead()
            per_entry = folder_bytes(self.big[0]) + self.entry_overhead
            budget = 2 * per_entry + 100 * MB
            self.budget = budget
            self.router_g = self.mlxrouter(
                "mlxrouter-pool",
                {
                    "hf_cache": False,
                    "models": {
                        self.ids[x]: {"path": str(p)} for x, p in zip("abc", self.big, strict=True)
                    },
                    "pool": {"max_models": 3, "max_memory": budget},
                },
            )
            time.sleep(2.0)  # let start-up settle (watcher, first reaper tick)
            self.idle_rss = proc_status(self.router_g.pid, "VmRSS")
        self.run_figure(fig_e)
        self.run_figure(fig_g)
        self.stop_all()
        self.run_figure(fig_s)
        self.run_figure(fig_h)
        self.run_figure(fig_i)
        self.run_figure(fig_v)
        self.run_figure(fig_x)
        if self.wanted("profile"):
            print("== profile of one request's path", file=sys.stderr, flush=True)
            try:
                fig_profile.profile(self)
            except Exception as exc:
                self.profile_lines = [f"The profile failed: `{type(exc).__name__}: {exc}`."]

#!/usr/bin/env python3
"""mlxrouter benchmarks, side by side with mlx_lm.server and in-process mlx_lm.

    scripts/bench [--quick | --full] [--only a,b,...] [--no-write] [--doc PATH]

The default run takes about 6-7 minutes on 2 CPU cores, --quick about 2-3, --full about 20.

One invocation starts `python -m mlx_lm.server` and `python -m mlxrouter serve` (a temporary
config, data, log and HF cache folder each) on loopback, drives both with the same requests
and prints every figure with its ratio and target; the default and --full modes also write
docs/BENCHMARKS.md. Timings are reported, never asserted.

  a  steady single-model tokens/s: mlxrouter vs in-process mlx_lm.stream_generate
  b  requests alternating between two models: mlxrouter vs mlx_lm.server
  c  requests alternating base <-> LoRA adapter: mlxrouter vs mlx_lm.server
  d  GET /v1/models p50 with 10, 100, 1000 repos in the HF cache
  e  cold load (POST /admin/load) vs a raw read of the same files
  f  8 concurrent clients on one model, aggregate tokens/s
  g  idle RSS, and peak RSS against pool.max_memory under a switching workload
  +  "where one request's time goes": a profile of the daemon's request path outside MLX

Models: the real SmolLM2-135M-Instruct (a, f, profile) and random-weight llama models of about
1B parameters, 4-bit (b, c, e, g: load cost matters there, as it does for 4-8B models), built
once into .cache/bench/.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime as dt
import gc
import hashlib
import json
import os
import platform
import pstats
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
BENCH_CACHE = REPO / ".cache" / "bench"
DOC = REPO / "docs" / "BENCHMARKS.md"
HOST = "127.0.0.1"
MB = 1_000_000

# The ~1B model: llama layout of a 1B-class model, 4-bit weights. Scales and biases are float32:
# MLX's CPU kernels run quantized matmuls with float16 scales ~40x (bfloat16 ~8x) slower than
# with float32 ones (emulated half precision; measured on the 2-core dev machine), which would
# make a 1B model unusable on a CPU; on Apple silicon they would be float16/bfloat16. The spec
# and BIG_VERSION are part of the cache stamp: change either to rebuild.
BIG_SPEC: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 2048,
    "num_hidden_layers": 16,
    "intermediate_size": 8192,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-5,
    "vocab_size": 49152,  # SmolLM2's tokenizer, copied in
    "max_position_embeddings": 8192,
    "tie_word_embeddings": True,
    "rope_theta": 100000.0,
    "quantization": {"group_size": 64, "bits": 4},
}
BIG_VERSION = 1
LORA = {"rank": 8, "scale": 20.0, "dropout": 0.0}

# One-token words (SmolLM2 tokenizer): prompts for the 1B models, where one prompt token costs
# about a second of CPU time. `distinct` uses a new one per request; `warm` repeats the first.
WORDS = [
    "Hello", "Paris", "Once", "Today", "Water", "Music", "House", "River", "Apple", "Green",
    "Night", "Light", "Stone", "Cloud", "Table", "Window", "Summer", "Winter", "Ocean", "Forest",
]  # fmt: skip
# Figure a's first words: one token each, none shared with WORDS (so no cached prefix).
A_WORDS = [
    "Blue", "Red", "Gold", "Silver", "Iron", "Wood",
    "Paper", "Snow", "Rain", "Wind", "Fire", "Sand",
]  # fmt: skip
ANIMALS = [
    "fox", "bear", "wolf", "cat", "dog", "bird", "fish", "owl", "lion", "mouse", "frog", "deer",
]  # fmt: skip


# ---- modes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mode:
    name: str
    a_reps: int  # timed streams per side (figure a)
    a_tokens: int
    switch_reps: int  # requests per sequence (b, c)
    switch_tokens: int
    hf_sizes: tuple[int, ...]
    models_reps: int  # GET /v1/models per size, mlxrouter
    models_reps_server: int  # the same for mlx_lm.server (it rescans the cache every time)
    load_reps: int
    conc_tokens: int
    conc_variants: tuple[str, ...]
    g_rounds: int
    profile_requests: int
    a_server: bool  # also time mlx_lm.server in figure a (reference only)
    conc_reps: int = 1
    conc_clients: int = 8
    switch_variants: tuple[str, ...] = ("distinct", "warm")


MODES = {
    "quick": Mode(
        name="quick",
        a_reps=1,
        a_tokens=16,
        switch_reps=2,
        switch_tokens=1,
        hf_sizes=(10, 100, 1000),
        models_reps=20,
        models_reps_server=2,
        load_reps=1,
        conc_tokens=4,
        conc_variants=("distinct",),
        g_rounds=1,
        profile_requests=3,
        a_server=False,
        switch_variants=("distinct",),
    ),
    "default": Mode(
        name="default",
        a_reps=3,
        a_tokens=32,
        switch_reps=4,
        switch_tokens=1,
        hf_sizes=(10, 100, 1000),
        models_reps=50,
        models_reps_server=5,
        load_reps=3,
        conc_tokens=8,
        conc_variants=("distinct", "shared prefix", "warm"),
        conc_reps=1,
        g_rounds=2,
        profile_requests=10,
        a_server=False,
    ),
    "full": Mode(
        name="full",
        a_reps=5,
        a_tokens=64,
        switch_reps=8,
        switch_tokens=1,
        hf_sizes=(10, 100, 1000),
        models_reps=200,
        models_reps_server=10,
        load_reps=5,
        conc_tokens=16,
        conc_variants=("distinct", "shared prefix", "warm"),
        conc_reps=2,
        g_rounds=3,
        profile_requests=30,
        a_server=True,
    ),
}


# ---- results ----------------------------------------------------------------------------------


@dataclass
class Figure:
    key: str
    title: str
    target: str
    ours: str = "-"  # headline mlxrouter value
    theirs: str = "-"  # headline baseline value
    ratio: float | None = None
    ratio_text: str = ""
    met: bool | None = None
    details: list[str] = field(default_factory=list)  # markdown lines
    cause: list[str] = field(default_factory=list)  # measured reasons for a miss
    error: str | None = None
    seconds: float = 0.0


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt_s(seconds: float) -> str:
    if seconds < 0.01:
        return f"{seconds * 1000:.2f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.2f} s"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def verdict(met: bool | None) -> str:
    return {True: "met", False: "NOT met", None: "n/a"}[met]


# ---- machine ----------------------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def memory_total() -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def busy_jiffies() -> int:
    """CPU time (all cores, clock ticks) the whole machine has spent busy since boot."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values[:8]) - idle


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def versions() -> dict[str, str]:
    import importlib.metadata as md

    found = {"python": platform.python_version()}
    for name in ("mlx", "mlx-lm", "mlxrouter", "litestar", "uvicorn", "transformers"):
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            found[name] = "not installed"
    found["mlxrouter commit"] = git_commit()
    return found


class Disturbance:
    """How much CPU other processes used while the suite ran (the machine may be shared)."""

    def __init__(self) -> None:
        self.start_wall = time.monotonic()
        self.start_busy = busy_jiffies()
        self.start_ours = self._ours()
        self.load_before = os.getloadavg()

    @staticmethod
    def _ours() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def others_share(self) -> float:
        """Average share of one core used by processes not started by the suite."""
        ticks = os.sysconf("SC_CLK_TCK")
        busy = (busy_jiffies() - self.start_busy) / ticks
        ours = self._ours() - self.start_ours
        wall = time.monotonic() - self.start_wall
        return max(0.0, busy - ours) / wall if wall > 0 else 0.0


# ---- page cache and memory --------------------------------------------------------------------


def drop_page_cache() -> bool:
    """Drop the page cache (needs root). False when the kernel refuses."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
    except OSError:
        return False
    return True


def proc_status(pid: int, key: str) -> int:
    """A `kB` line of /proc/<pid>/status, in bytes (0 when the process is gone)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


class RssSampler:
    """Samples a process's VmRSS every `interval` seconds on a thread; `peak` is the max."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, proc_status(self.pid, "VmRSS"))
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


# ---- models -----------------------------------------------------------------------------------


def entry_overhead() -> int:
    """The bytes the pool counts per entry beyond its weights (`pool.prompt_cache_bytes`
    at its default), or 0 for a version without it."""
    from mlxrouter import config

    default = getattr(config.PoolConfig(), "prompt_cache_bytes", None)
    return config.parse_bytes(default) if default is not None else 0


def smollm() -> Path:
    from mlxrouter.demo import ensure_demo_model

    return ensure_demo_model(REPO / ".cache" / "models")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def _stamp_ok(folder: Path, stamp: dict[str, Any]) -> bool:
    with contextlib.suppress(OSError, ValueError):
        return json.loads((folder / ".bench-stamp.json").read_text()) == stamp
    return False


def _publish(scratch: Path, folder: Path, stamp: dict[str, Any]) -> None:
    (scratch / ".bench-stamp.json").write_text(json.dumps(stamp))
    if folder.exists():
        shutil.rmtree(folder)
    scratch.rename(folder)


def big_model(name: str, seed: int, tokenizer_from: Path) -> Path:
    """A random-weight ~1B llama, 4-bit, that mlx_lm.load opens; built once, then reused.

    Only the shapes of mlx_lm's own module tree are used (its random initialisation is never
    evaluated): packed 4-bit weights are random bits, scales and biases give weights uniform
    in about [-0.02, 0.02], norms are ones. Seconds, not minutes."""
    folder = BENCH_CACHE / name
    stamp = {"version": BIG_VERSION, "seed": seed, "spec": BIG_SPEC}
    if _stamp_ok(folder, stamp):
        return folder
    import mlx.core as mx
    from mlx import nn
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    print(f"  building {name} (~1B parameters, 4-bit) into {folder}", file=sys.stderr)
    BENCH_CACHE.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=BENCH_CACHE))
    config = {k: v for k, v in BIG_SPEC.items() if k != "quantization"}
    quant = BIG_SPEC["quantization"]
    model = llama.Model(llama.ModelArgs.from_dict(config))
    nn.quantize(model, group_size=quant["group_size"], bits=quant["bits"])
    mx.random.seed(seed)
    weights: dict[str, Any] = {}
    step = 0.04 / (2 ** quant["bits"] - 1)
    for key, value in tree_flatten(model.parameters()):
        if value.dtype == mx.uint32:
            bits = mx.random.randint(0, 2**31, value.shape, dtype=mx.int32)
            array = bits.view(mx.uint32) * 2 + (bits & 1).view(mx.uint32)
        elif key.endswith(".scales"):
            array = mx.random.uniform(0.5, 1.5, value.shape) * step
        elif key.endswith(".biases"):
            array = mx.full(value.shape, -0.02)
        else:
            array = mx.ones(value.shape)
        mx.eval(array)
        weights[key] = array
    del model
    mx.save_safetensors(str(scratch / "model.safetensors"), weights, metadata={"format": "mlx"})
    del weights
    (scratch / "config.json").write_text(json.dumps(BIG_SPEC, indent=2))
    for file in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tokenizer_from / file).is_file():
            shutil.copy(tokenizer_from / file, scratch / file)
    _publish(scratch, folder, stamp)
    gc.collect()
    mx.clear_cache()
    return folder


def big_adapter(name: str, base: Path, seed: int) -> Path:
    """A LoRA adapter for `base` in mlx_lm.lora's format (rank 8 on every linear of all 16
    layers), with small random `lora_b` so it really changes the answers."""
    folder = BENCH_CACHE / name
    stamp = {"version": BIG_VERSION, "seed": seed, "base": base.name, "lora": LORA}
    if _stamp_ok(folder, stamp):
        return folder
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import load_model

    print(f"  building LoRA adapter {name} into {folder}", file=sys.stderr)
    scratch = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=BENCH_CACHE))
    layers = int(BIG_SPEC["num_hidden_layers"])
    mx.random.seed(seed)
    model, _ = load_model(base, lazy=True)
    model.freeze()
    linear_to_lora_layers(model, layers, LORA)
    adapters = {}
    for key, value in tree_flatten(model.trainable_parameters()):
        adapters[key] = mx.random.normal(value.shape) * 0.01 if key.endswith("lora_b") else value
    mx.eval(adapters)
    mx.save_safetensors(str(scratch / "adapters.safetensors"), adapters)
    config = {
        "model": str(base),
        "fine_tune_type": "lora",
        "num_layers": layers,
        "lora_parameters": LORA,
    }
    (scratch / "adapter_config.json").write_text(json.dumps(config, indent=2))
    del model, adapters
    _publish(scratch, folder, stamp)
    gc.collect()
    mx.clear_cache()
    return folder


def tiny_blob_set(folder: Path) -> dict[str, Path]:
    """One tiny servable model (config, sharded safetensors index, weights, tokenizer) whose
    files every synthetic HF cache repo links to."""
    sys.path.insert(0, str(REPO / "tests"))
    try:
        from tinymodel import make_tiny_model
    finally:
        sys.path.remove(str(REPO / "tests"))
    make_tiny_model(folder, seed=7)
    raw = (folder / "model.safetensors").read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    names = [name for name in header if name != "__metadata__"]
    index = {"metadata": {}, "weight_map": dict.fromkeys(names, "model.safetensors")}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_file()}


def add_hf_repos(cache: Path, blobs: dict[str, Path], start: int, stop: int) -> None:
    """Repos `models--bench--model-NNNN` in the hub layout: blobs/<sha256> (hard links to one
    shared set of files), snapshots/<40 hex>/<name> -> ../../blobs/<sha256>, refs/main."""
    digests = {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in blobs.items()}
    for i in range(start, stop):
        repo = cache / f"models--bench--model-{i:04d}"
        commit = hashlib.sha1(f"bench-{i}".encode(), usedforsecurity=False).hexdigest()
        (repo / "blobs").mkdir(parents=True, exist_ok=True)
        (repo / "refs").mkdir(exist_ok=True)
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir(parents=True, exist_ok=True)
        for name, path in blobs.items():
            blob = repo / "blobs" / digests[name]
            if not blob.exists():
                try:
                    blob.hardlink_to(path)
                except OSError:
                    shutil.copy(path, blob)
            link = snapshot / name
            if not link.is_symlink():
                link.symlink_to(Path("..") / ".." / "blobs" / digests[name])
        (repo / "refs" / "main").write_text(commit)


# ---- servers ----------------------------------------------------------------------------------


async def asgi_get(app: Any, path: str) -> tuple[float, int]:
    """One GET straight through an ASGI app (no server, no socket): seconds and body bytes."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1:8080")],
        "client": (HOST, 50000),
        "server": (HOST, 8080),
    }
    body = bytearray()
    status = 0
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))

    started = time.perf_counter()
    await app(scope, receive, send)
    seconds = time.perf_counter() - started
    if status != 200:
        raise RuntimeError(f"in-process GET {path} -> {status}: {bytes(body[:200])!r}")
    return seconds, len(body)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """One server process on loopback, its output in a log file; `stop()` terminates it
    (SIGTERM, then SIGKILL after a timeout) and waits for it."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.port = free_port()
        self.argv = [a.replace("{port}", str(self.port)) for a in argv]
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 180.0) -> float:
        """Start and wait until /health answers 200; returns the seconds it took."""
        started = time.perf_counter()
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=self.log.parent
            )
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=5) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited at start-up:\n{self.tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(self.url + "/health").status_code == 200:
                        return time.perf_counter() - started
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not start within {timeout:.0f}s:\n{self.tail()}")

    def tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@dataclass
class Timed:
    seconds: float
    tokens: int
    ttft: float | None = None
    decode_rate: float | None = None  # tokens/s after the first token
    cached: int = 0  # prompt tokens the server took from its prompt cache


@dataclass
class Burst:
    """Concurrent clients' results: wall time to the last answer, tokens, cached tokens, the
    slowest client's time, and the time until every client had its first token."""

    wall: float
    tokens: int
    cached: int
    slowest: float
    prefill: float  # until the last client's first token
    first: float  # until the first client's first token
    tokens_after_first: int = 0

    @property
    def rate(self) -> float:
        return self.tokens / self.wall

    @property
    def decode_rate(self) -> float:
        """Tokens/s once every client had its first token (each client's first excluded)."""
        return self.tokens_after_first / max(self.wall - self.prefill, 1e-9)

    @staticmethod
    def median(bursts: list[Burst]) -> Burst:
        """The burst with the median aggregate rate."""
        return sorted(bursts, key=lambda b: b.rate)[len(bursts) // 2]


def conc_prompts(variant: str, rep: int, n: int, warm: str) -> list[str]:
    """Figure f's prompts, 7 tokens each (SmolLM2 tokenizer)."""
    if variant == "warm":
        return [warm] * n
    if variant == "shared prefix":
        return [f"{WORDS[-1 - rep % len(WORDS)]} upon a time, a {a}" for a in ANIMALS[:n]]
    # distinct: a different first token for each client, and new in every burst
    return [f"{WORDS[(rep * n + i) % len(WORDS)]} {rep} time, a {ANIMALS[i]}" for i in range(n)]


def _timed(started: float, first: float | None, tokens: int) -> Timed:
    ended = time.perf_counter()
    first = first or ended
    rate = (tokens - 1) / (ended - first) if tokens > 1 and ended > first else None
    return Timed(ended - started, tokens, first - started, rate)


def _cached(usage: dict[str, Any]) -> int:
    details = usage.get("prompt_tokens_details") or {}
    return int(details.get("cached_tokens") or 0)


def completion(client: httpx.Client, body: dict[str, Any], path: str = "/v1/completions") -> Timed:
    started = time.perf_counter()
    response = client.post(path, json=body)
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"{path} -> {response.status_code}: {response.text[:300]}")
    usage = response.json().get("usage") or {}
    return Timed(seconds, int(usage.get("completion_tokens", 0)), cached=_cached(usage))


def streamed_completion(client: httpx.Client, body: dict[str, Any]) -> Timed:
    """A streamed text completion: time to the first text, and the decode rate after it."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    first: float | None = None
    usage: dict[str, Any] = {}
    with client.stream("POST", "/v1/completions", json=body) as response:
        if response.status_code != 200:
            response.read()
            raise RuntimeError(f"stream -> {response.status_code}: {response.text[:300]}")
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            usage = event.get("usage") or usage
            if first is None and any(c.get("text") for c in event.get("choices") or []):
                first = time.perf_counter()
    ended = time.perf_counter()
    tokens = int(usage.get("completion_tokens", 0))
    first = ended if first is None else first
    rate = (tokens - 1) / (ended - first) if tokens > 1 and ended > first else None
    return Timed(ended - started, tokens, first - started, rate, _cached(usage))


# ---- the suite --------------------------------------------------------------------------------


class Bench:
    def __init__(self, mode: Mode, only: set[str], tmp: Path) -> None:
        self.mode = mode
        self.only = only
        self.tmp = tmp
        self.figures: list[Figure] = []
        self.servers: list[Server] = []
        self.profile_lines: list[str] = []
        self.notes: list[str] = []
        self.cold_cache = False
        self.same_model: dict[str, list[Timed]] = {}  # figure b's no-switch baseline, reused in c
        self.facts: dict[str, float] = {}  # measured numbers the recommendations refer to
        # In-process daemons (figure d's breakdown, the profile) see only the suite's folders.
        for var, value in self.env("in-process").items():
            if var.startswith(("MLXROUTER_", "HF_HUB_")):
                os.environ[var] = value

    # -- plumbing --

    def wanted(self, key: str) -> bool:
        return not self.only or key in self.only

    def env(self, name: str, hf_cache: Path | None = None) -> dict[str, str]:
        root = self.tmp / name
        env = dict(os.environ)
        for var, sub in (
            ("MLXROUTER_CONFIG_DIR", "config"),
            ("MLXROUTER_DATA_DIR", "data"),
            ("MLXROUTER_LOG_DIR", "logs"),
            ("MLXROUTER_CACHE_DIR", "cache"),
        ):
            (root / sub).mkdir(parents=True, exist_ok=True)
            env[var] = str(root / sub)
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
        argv = [sys.executable, "-m", "mlxrouter", "serve", "--config", str(path)]
        server = Server(name, [*argv, "--port", "{port}"], self.env(name, hf_cache), root / "log")
        self.servers.append(server)
        server.start()
        return server

    def mlx_lm_server(self, model: Path, hf_cache: Path) -> Server:
        root = self.tmp / "mlx_lm.server"
        root.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "mlx_lm.server", "--model", str(model), "--host", HOST]
        server = Server(
            "mlx_lm.server", [*argv, "--port", "{port}"], self.env("mlx_lm", hf_cache), root / "log"
        )
        self.servers.append(server)
        server.start()
        return server

    def stop_all(self) -> None:
        for server in reversed(self.servers):
            server.stop()
        self.servers.clear()

    def run_figure(self, figure: Figure, body: Callable[[Figure], None]) -> None:
        if not self.wanted(figure.key):
            return
        print(f"== {figure.key}. {figure.title}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        try:
            body(figure)
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
        self.run_figure(
            Figure("a", "steady single-model generation, tokens/s", "≥ 0.98x in-process"),
            self.figure_a,
        )
        self.run_figure(
            Figure("b", "requests alternating between two ~1B models", "≥ 2.5x mlx_lm.server"),
            self.figure_b,
        )
        self.run_figure(
            Figure("c", "requests alternating base ↔ LoRA adapter (~1B)", "≥ 3x mlx_lm.server"),
            self.figure_c,
        )
        self.run_figure(
            Figure("f", "8 concurrent clients on one model, aggregate tokens/s", "≥ 1.0x"),
            self.figure_f,
        )
        if needs_main:
            self.router.stop()
        self.run_figure(
            Figure("d", "GET /v1/models p50 with 10/100/1000 HF cache repos", "≤ 2 ms, flat"),
            self.figure_d,
        )
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
        self.run_figure(
            Figure("e", "cold load of a ~1B 4-bit model", "≤ 1.2x raw read"), self.figure_e
        )
        self.run_figure(
            Figure("g", "memory: idle RSS; peak RSS vs pool.max_memory", "≤ 150 MB; ≤ budget+5%"),
            self.figure_g,
        )
        self.stop_all()
        if self.wanted("profile"):
            print("== profile of one request's path", file=sys.stderr, flush=True)
            try:
                self.profile()
            except Exception as exc:
                self.profile_lines = [f"The profile failed: `{type(exc).__name__}: {exc}`."]

    # -- a --

    def figure_a(self, fig: Figure) -> None:
        import mlx.core as mx
        from mlx_lm import load, stream_generate
        from mlx_lm.generate import BatchGenerator
        from mlx_lm.sample_utils import make_sampler

        mode = self.mode
        # Distinct: no two share a first token (nothing for a prompt cache to reuse); the last
        # one is the repeated, `warm` prompt.
        prompts = [f"{w} {a} time, a story" for w, a in zip(A_WORDS, ANIMALS, strict=True)]
        loaded: list[Any] = list(load(str(self.smol)))
        sampler = make_sampler(temp=0.0)

        def in_process(prompt: str) -> Timed:
            started = time.perf_counter()
            first = None
            tokens = 0
            for response in stream_generate(
                loaded[0], loaded[1], prompt, max_tokens=mode.a_tokens, sampler=sampler
            ):
                first = first or time.perf_counter()
                tokens = response.generation_tokens
            return _timed(started, first, tokens)

        def in_process_batch(prompt: str) -> Timed:
            """What mlxrouter's engine runs, without mlxrouter: a BatchGenerator (one made per
            model and reused, as the engine does) decoding a batch of one."""
            if len(loaded) < 3:
                loaded.append(BatchGenerator(loaded[0]))
            batch = loaded[2]
            started = time.perf_counter()
            first = None
            tokens = 0
            batch.insert([loaded[1].encode(prompt)], max_tokens=[mode.a_tokens], samplers=[sampler])
            done = False
            while not done:
                for response in batch.next()[1]:
                    first = first or time.perf_counter()
                    if response.finish_reason != "stop":
                        tokens += 1
                    done = done or response.finish_reason is not None
            return _timed(started, first, tokens)

        def body(prompt: str) -> dict[str, Any]:
            return {
                "model": "smollm2",
                "prompt": prompt,
                "max_tokens": mode.a_tokens,
                "temperature": 0,
            }

        ours: dict[str, list[Timed]] = {"distinct": [], "warm": []}
        theirs: dict[str, list[Timed]] = {"distinct": [], "warm": []}
        base: list[Timed] = []
        batch: list[Timed] = []
        their = {"model": str(self.smol)}
        with (
            httpx.Client(base_url=self.router.url, timeout=600) as router,
            httpx.Client(base_url=self.server.url, timeout=600) as server,
        ):
            streamed_completion(router, body(prompts[-1]))  # load, warm up
            in_process(prompts[-1])
            in_process_batch(prompts[-1])
            if mode.a_server:
                streamed_completion(server, {**body(prompts[-1]), **their})
            # Interleaved, so a change in the machine's load hits every side alike.
            for i in range(mode.a_reps):
                base.append(in_process(prompts[i]))
                ours["distinct"].append(streamed_completion(router, body(prompts[i])))
                batch.append(in_process_batch(prompts[i]))
                ours["warm"].append(streamed_completion(router, body(prompts[-1])))
                if mode.a_server:
                    theirs["distinct"].append(
                        streamed_completion(server, {**body(prompts[i]), **their})
                    )
                    theirs["warm"].append(
                        streamed_completion(server, {**body(prompts[-1]), **their})
                    )
        if len(loaded) > 2:
            loaded[2].close()
        loaded.clear()
        gc.collect()
        mx.clear_cache()

        def rate(xs: list[Timed]) -> float:
            return median([x.decode_rate for x in xs if x.decode_rate])

        def e2e(xs: list[Timed]) -> float:
            return median([x.tokens / x.seconds for x in xs])

        ratio = rate(ours["distinct"]) / rate(base)
        self.single_rate = rate(ours["distinct"])
        fig.ours = f"{rate(ours['distinct']):.2f} tok/s"
        fig.theirs = f"{rate(base):.2f} tok/s"
        fig.ratio = ratio
        fig.ratio_text = f"{ratio:.3f}x"
        fig.met = ratio >= 0.98
        fig.details += [
            f"SmolLM2-135M-Instruct, text completions of {mode.a_tokens} tokens, greedy, "
            f"{mode.a_reps} timed runs per row (medians, rows interleaved), 6-token prompts "
            "(distinct: no shared first token; warm: one prompt repeated). "
            "mlxrouter is streamed over HTTP (SSE); the baselines run in the benchmark's own "
            "process. Decode rate = (tokens - 1) / (time after the first token). `cached` is "
            "the prompt tokens the server reported as served from its prompt cache "
            "(`usage.prompt_tokens_details.cached_tokens`).",
            "",
            "| | decode tok/s | end-to-end tok/s | time to first token | tokens | cached |",
            "|---|---|---|---|---|---|",
        ]
        rows = [
            ("in-process `stream_generate` (the baseline)", base),
            ("in-process `BatchGenerator`, batch of one", batch),
            ("mlxrouter, distinct prompts", ours["distinct"]),
            ("mlxrouter, same prompt (warm)", ours["warm"]),
        ]
        if mode.a_server:
            rows += [
                ("mlx_lm.server, distinct prompts", theirs["distinct"]),
                ("mlx_lm.server, same prompt (warm)", theirs["warm"]),
            ]
        for label, xs in rows:
            ttft = median([x.ttft or 0.0 for x in xs])
            fig.details.append(
                f"| {label} | {rate(xs):.2f} | {e2e(xs):.2f} | {fmt_s(ttft)} | "
                f"{median([float(x.tokens) for x in xs]):.0f} | "
                f"{median([float(x.cached) for x in xs]):.0f} |"
            )
        fig.details.append("")
        fig.details.append(
            f"Ratio (decode, distinct prompts): **{ratio:.3f}**; with the same prompt repeated: "
            f"{rate(ours['warm']) / rate(base):.3f}. Decode speed does not depend on the "
            "prompt cache; only the time to first token does."
        )
        rates = [x.decode_rate for x in base if x.decode_rate]
        if len(rates) > 1:
            spread = (max(rates) - min(rates)) / median(rates) * 100
            fig.details.append(
                f"Run-to-run spread of the baseline's own decode rate: {spread:.1f}% (max - min "
                "over median); differences smaller than that are noise."
            )
        if not fig.met:
            per_token = (1 / rate(ours["distinct"]) - 1 / rate(base)) * 1000
            engine = (1 / rate(batch) - 1 / rate(base)) * 1000
            text = (
                f"Decode through mlxrouter runs at {ratio:.3f}x the in-process rate, "
                f"{per_token:.1f} ms more per token. mlx_lm's `BatchGenerator` alone (the "
                "decoder mlxrouter's engine runs: batch of one, in-process, no mlxrouter) runs "
                f"at {rate(batch) / rate(base):.3f}x `stream_generate`, {engine:+.1f} ms per token"
            )
            if engine >= per_token:
                text += (
                    ": that is all of the gap; mlxrouter's own path adds nothing measurable on "
                    f"top ({rate(ours['distinct']):.2f} tok/s against {rate(batch):.2f} for "
                    "`BatchGenerator` alone)."
                )
            else:
                text += (
                    f"; the other {per_token - max(engine, 0.0):.1f} ms per token is spent on "
                    "mlxrouter's own path (its engine loop, detokenising, handing each token "
                    "to the event loop, SSE encoding, HTTP); the profile below itemises that "
                    "path for a non-streamed request."
                )
            fig.cause.append(text)

    # -- b and c --

    def _sequence(
        self, client: httpx.Client, models: list[dict[str, Any]], words: list[str]
    ) -> tuple[float, list[Timed]]:
        timed = []
        started = time.perf_counter()
        for fields, word in zip(models, words, strict=True):
            body = {"prompt": word, "max_tokens": self.mode.switch_tokens, "temperature": 0}
            timed.append(completion(client, {**body, **fields}))
        return time.perf_counter() - started, timed

    def _switching(
        self, fig: Figure, ours_pair: list[dict[str, Any]], theirs_pair: list[dict[str, Any]]
    ) -> dict[str, dict[str, tuple[float, list[Timed]]]]:
        n = self.mode.switch_reps
        words = {"warm": [WORDS[0]] * n, "distinct": WORDS[1 : n + 1]}
        runs: dict[str, dict[str, tuple[float, list[Timed]]]] = {"mlxrouter": {}, "server": {}}
        with (
            httpx.Client(base_url=self.router.url, timeout=600) as router,
            httpx.Client(base_url=self.server.url, timeout=600) as server,
        ):
            # Warm-up: mlxrouter loads both entries once; mlx_lm.server ends on the second, so
            # the first timed request (for the first) is a switch too.
            for fields in ours_pair:
                completion(router, {"prompt": "Hi", "max_tokens": 1, **fields})
            for fields in theirs_pair:
                completion(server, {"prompt": "Hi", "max_tokens": 1, **fields})
            if not self.same_model:
                self.same_model["mlxrouter"] = self._sequence(
                    router, [ours_pair[0]] * n, words["warm"]
                )[1]
                completion(server, {"prompt": "Hi", "max_tokens": 1, **theirs_pair[0]})
                self.same_model["server"] = self._sequence(
                    server, [theirs_pair[0]] * n, words["warm"]
                )[1]
                completion(server, {"prompt": "Hi", "max_tokens": 1, **theirs_pair[1]})
            for variant in self.mode.switch_variants:
                alternating = [ours_pair[i % 2] for i in range(n)]
                runs["mlxrouter"][variant] = self._sequence(router, alternating, words[variant])
                alternating = [theirs_pair[i % 2] for i in range(n)]
                runs["server"][variant] = self._sequence(server, alternating, words[variant])
            pool = router.get("/admin/pool").json()
        load_seconds = {e["id"]: e.get("load_seconds") for e in pool["entries"]}
        fig.details.append(
            f"{n} sequential requests per sequence (one client), text completions of a 1-token "
            f"prompt, max_tokens={self.mode.switch_tokens}, greedy; throughput = requests / "
            "wall time of the sequence. Prompt caching: `warm` repeats one prompt, `distinct` "
            "uses a new one each time (a 1-token prompt leaves a prompt cache nothing to save)."
        )
        fig.details.append("")
        fig.details.append(
            "| sequence | mlxrouter req/s | mlx_lm.server req/s | ratio | mlxrouter median "
            "latency | mlx_lm.server median latency |"
        )
        fig.details.append("|---|---|---|---|---|---|")
        same_ours = self.same_model["mlxrouter"]
        same_theirs = self.same_model["server"]
        fig.details.append(
            f"| same model, no switching | {len(same_ours) / sum(x.seconds for x in same_ours):.3f}"
            f" | {len(same_theirs) / sum(x.seconds for x in same_theirs):.3f} | "
            f"{sum(x.seconds for x in same_theirs) / sum(x.seconds for x in same_ours):.2f}x | "
            f"{fmt_s(median([x.seconds for x in same_ours]))} | "
            f"{fmt_s(median([x.seconds for x in same_theirs]))} |"
        )
        ratios = {}
        for variant in self.mode.switch_variants:
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
        fig.details.append(
            f"mlxrouter loaded each entry once (`/admin/pool` `load_seconds`): {loads}."
        )
        ours_s, _ = runs["mlxrouter"]["distinct"]
        theirs_s, _ = runs["server"]["distinct"]
        fig.ours = f"{n / ours_s:.3f} req/s"
        fig.theirs = f"{n / theirs_s:.3f} req/s"
        fig.ratio = min(ratios.values())
        fig.ratio_text = f"{ratios['distinct']:.2f}x" + (
            f" (warm {ratios['warm']:.2f}x)" if "warm" in ratios else ""
        )
        self.switch_loads = {k: v for k, v in load_seconds.items() if k in pair and v}
        return runs

    def _switch_cause(self, fig: Figure, runs: dict[str, Any], target: float) -> None:
        generation = median([x.seconds for x in self.same_model["server"]])
        switched = median([x.seconds for x in runs["server"]["distinct"][1]])
        ours = median([x.seconds for x in runs["mlxrouter"]["distinct"][1]])
        overhead = switched - generation
        bound = switched / generation if generation > 0 else float("nan")
        loads = getattr(self, "switch_loads", {})
        load_text = (
            " (mlxrouter's own loads: "
            + ", ".join(f"`{k}` {fmt_s(v)}" for k, v in loads.items())
            + ")"
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

    def figure_b(self, fig: Figure) -> None:
        a, b = self.ids["a"], self.ids["b"]
        runs = self._switching(
            fig,
            [{"model": a}, {"model": b}],
            [{"model": str(self.big[0])}, {"model": str(self.big[1])}],
        )
        fig.met = (fig.ratio or 0) >= 2.5
        if not fig.met:
            self._switch_cause(fig, runs, 2.5)

    def figure_c(self, fig: Figure) -> None:
        a = self.ids["a"]
        runs = self._switching(
            fig,
            [{"model": a}, {"model": "bench-1b-a-lora"}],
            [
                {"model": str(self.big[0])},
                {"model": str(self.big[0]), "adapters": str(self.adapter)},
            ],
        )
        fig.met = (fig.ratio or 0) >= 3.0
        size = (self.adapter / "adapters.safetensors").stat().st_size
        fig.details.append(
            f"The adapter: LoRA rank {LORA['rank']} on every linear layer of all "
            f"{BIG_SPEC['num_hidden_layers']} layers, {size / MB:.0f} MB. mlx_lm.server reloads "
            "base + adapter on every switch; mlxrouter keeps both loaded, sharing the base's "
            "arrays."
        )
        if not fig.met:
            self._switch_cause(fig, runs, 3.0)

    # -- d --

    def figure_d(self, fig: Figure) -> None:
        mode = self.mode
        router = self.mlxrouter("mlxrouter-hf", {"hf_cache": True}, hf_cache=self.hf)
        rows = []
        have = mode.hf_sizes[0]
        try:
            with (
                httpx.Client(base_url=router.url, timeout=600) as ours,
                httpx.Client(base_url=self.server.url, timeout=600) as theirs,
            ):
                for size in mode.hf_sizes:
                    added = time.perf_counter()
                    add_hf_repos(self.hf, self.blobs, have, size)
                    have = size
                    visible = self._wait_listed(ours, size) - added
                    listed_theirs = len(theirs.get("/v1/models").json()["data"])
                    ours_t = self._get_times(ours, "/v1/models", mode.models_reps)
                    theirs_t = self._get_times(theirs, "/v1/models", mode.models_reps_server)
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
            self._models_cause(fig, rows)

    def _wait_listed(self, client: httpx.Client, size: int, timeout: float = 300) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = client.get("/v1/models").json()["data"]
            if sum(1 for m in data if m["id"].startswith("bench/")) >= size:
                return time.perf_counter()
            time.sleep(0.05)
        raise RuntimeError(f"mlxrouter did not list {size} HF cache repos within {timeout}s")

    @staticmethod
    def _get_times(client: httpx.Client, path: str, n: int) -> list[float]:
        client.get(path)  # warm the connection
        times = []
        for _ in range(n):
            started = time.perf_counter()
            response = client.get(path)
            times.append(time.perf_counter() - started)
            response.raise_for_status()
        return times

    def _models_cause(self, fig: Figure, rows: list[Any]) -> None:
        """Where a large /v1/models answer's time goes, measured on an in-process app over the
        same cache: the whole ASGI app without a socket or client, and within it the cards."""
        import asyncio

        from mlxrouter.api import create_app, routes
        from mlxrouter.config import parse_config

        size = rows[-1][0]
        total = median(rows[-1][1])
        app = create_app(parse_config(f"hf_cache: {json.dumps(str(self.hf))}"), watch=False)
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
            "parsing the body. The handler rebuilds every card on every request. Nothing scans "
            "the disk: new repos appear once the watcher's rebuild is done."
        )
        self.facts["models_in_app_s"] = in_app
        fig.cause.append(text)

    # -- e --

    def figure_e(self, fig: Figure) -> None:
        import mlx.core as mx
        from mlx_lm import load
        from mlx_lm.tokenizer_utils import load as load_tokenizer

        folder = self.big[0]
        model_id = self.ids["a"]
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        total = sum(p.stat().st_size for p in files)
        can_drop = drop_page_cache()
        self.cold_cache = can_drop

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
        with httpx.Client(base_url=self.router_g.url, timeout=600) as client:
            for _ in range(self.mode.load_reps):  # interleaved
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
            f"{plural(self.mode.load_reps, 'run')} of each, interleaved, {state}. "
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
        self.facts["tokenizer_s"] = tok
        self.facts["load_gap_s"] = lib - raw
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

    # -- f --

    def figure_f(self, fig: Figure) -> None:
        mode = self.mode
        n = mode.conc_clients

        def burst(url: str, model: str, prompts: list[str]) -> Burst:
            barrier = threading.Barrier(n + 1)
            results: list[Timed | None] = [None] * n
            errors: list[BaseException] = []

            def client(i: int) -> None:
                with httpx.Client(base_url=url, timeout=600) as http:
                    body = {
                        "model": model,
                        "prompt": prompts[i],
                        "max_tokens": mode.conc_tokens,
                        "temperature": 0,
                    }
                    barrier.wait()
                    try:
                        results[i] = streamed_completion(http, body)
                    except Exception as exc:
                        errors.append(exc)

            threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
            for thread in threads:
                thread.start()
            barrier.wait()
            started = time.perf_counter()
            for thread in threads:
                thread.join()
            wall = time.perf_counter() - started
            if errors:
                raise errors[0]
            done = [r for r in results if r is not None]
            return Burst(
                wall,
                sum(r.tokens for r in done),
                sum(r.cached for r in done),
                max(r.seconds for r in done),
                max(r.ttft or 0.0 for r in done),
                min(r.ttft or 0.0 for r in done),
                sum(max(r.tokens - 1, 0) for r in done),
            )

        smol = str(self.smol)
        rows: list[tuple[str, Burst, Burst]] = []
        with (
            httpx.Client(base_url=self.router.url, timeout=600) as r,
            httpx.Client(base_url=self.server.url, timeout=600) as s,
        ):
            warm_prompt = "Once upon a time, a fox"
            for client, model in ((r, "smollm2"), (s, smol)):
                completion(client, {"model": model, "prompt": warm_prompt, "max_tokens": 2})
            for variant in mode.conc_variants:
                ours, theirs = [], []
                for rep in range(mode.conc_reps):
                    prompts = conc_prompts(variant, rep, n, warm_prompt)
                    if variant == "warm":  # served just before: still in an LRU prompt cache
                        for client, model in ((r, "smollm2"), (s, smol)):
                            body = {"model": model, "prompt": warm_prompt, "max_tokens": 2}
                            completion(client, body)
                    ours.append(burst(self.router.url, "smollm2", prompts))
                    theirs.append(burst(self.server.url, smol, prompts))
                rows.append((variant, Burst.median(ours), Burst.median(theirs)))
        fig.details += [
            f"{n} clients (threads, one connection each) start together; each streams one text "
            f"completion (SmolLM2-135M-Instruct, 7-token prompt, max_tokens={mode.conc_tokens}, "
            f"greedy). {plural(mode.conc_reps, 'burst')} per row (the median one). "
            "Aggregate = all completion "
            "tokens / wall time until the last answer; `prefill` = time until every client "
            "had its first token, `decode` = the rest. Prompts: `distinct` share no prefix "
            "(and were never sent before); `shared prefix` share their first 6 tokens (like a "
            "common system prompt), not sent before; `warm` are all the prompt just served "
            "once. `cached`: prompt tokens reported as taken from the prompt cache, all "
            "clients together.",
            "",
            "| prompts | mlxrouter tok/s | mlx_lm.server tok/s | ratio | first tokens at, ours "
            "| first tokens at, theirs | decode (ours / theirs) | cached (ours / theirs) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        ratios = {}
        for variant, ours, theirs in rows:
            ratios[variant] = ours.rate / theirs.rate
            fig.details.append(
                f"| {variant} | {ours.rate:.2f} | {theirs.rate:.2f} | "
                f"**{ratios[variant]:.3f}x** | {ours.first:.2f}-{ours.prefill:.2f} s | "
                f"{theirs.first:.2f}-{theirs.prefill:.2f} s | "
                f"{fmt_s(ours.wall - ours.prefill)} / {fmt_s(theirs.wall - theirs.prefill)} | "
                f"{ours.cached} / {theirs.cached} |"
            )
        single = getattr(self, "single_rate", None)
        if single:
            fig.details += [
                "",
                f"For scale: one client alone decodes at {single:.2f} tok/s (figure a); once "
                f"every client had its first token, the {n} decoded together at "
                f"{rows[0][1].decode_rate:.2f} tok/s on mlxrouter "
                f"({rows[0][1].decode_rate / single:.2f}x), {rows[0][2].decode_rate:.2f} on "
                "mlx_lm.server (distinct prompts).",
            ]
        head = rows[0]
        fig.ours = f"{head[1].rate:.2f} tok/s"
        fig.theirs = f"{head[2].rate:.2f} tok/s"
        fig.ratio = min(ratios.values())
        fig.ratio_text = " / ".join(f"{v} {r:.3f}x" for v, r in ratios.items())
        fig.met = fig.ratio >= 1.0
        for variant, ours, theirs in rows:
            if variant == "shared prefix":
                self.facts["f_shared_cached_ours"] = ours.cached
                self.facts["f_shared_cached_theirs"] = theirs.cached
            if variant == "distinct":
                self.facts["f_spread_s"] = ours.prefill - ours.first
                self.facts["f_spread_theirs_s"] = theirs.prefill - theirs.first
        steps = mode.conc_tokens - 1
        for variant, ours, theirs in rows:
            if ratios[variant] >= 1.0:
                continue
            decode_gap = (ours.wall - ours.prefill) - (theirs.wall - theirs.prefill)
            text = (
                f"{variant} prompts ({ratios[variant]:.3f}x): prefill took {fmt_s(ours.prefill)}"
                f" on mlxrouter against {fmt_s(theirs.prefill)} on mlx_lm.server "
                f"({ours.cached} vs {theirs.cached} prompt tokens from the cache), decoding "
                f"{fmt_s(ours.wall - ours.prefill)} against {fmt_s(theirs.wall - theirs.prefill)}"
                + (f" ({decode_gap / steps * 1000:+.0f} ms per batched step)." if steps else ".")
            )
            if ours.prefill - theirs.prefill > decode_gap and theirs.cached > ours.cached:
                text += (
                    " The gap is prefill that mlx_lm.server skipped: it reuses a prefix that "
                    "one of the concurrent requests has just prefilled, while mlxrouter stores "
                    "a sequence's KV cache in its prompt cache only when the sequence finishes "
                    "(`Engine._deliver`), so requests that arrive together share nothing."
                )
            elif ours.prefill - theirs.prefill > decode_gap:
                text += (
                    " Most of the gap is in prefill, with no difference in cache use: the "
                    f"clients' first tokens arrived between {ours.first:.2f} and "
                    f"{ours.prefill:.2f} s on mlxrouter, between {theirs.first:.2f} and "
                    f"{theirs.prefill:.2f} s on mlx_lm.server"
                    + (
                        ", so mlxrouter spread the prompts over more prefill rounds (it starts "
                        "a step as soon as the first request is in)."
                        if ours.prefill - ours.first > theirs.prefill - theirs.first + 0.2
                        else "."
                    )
                )
            else:
                text += (
                    " Most of the gap is in decoding, with no difference in cache use; the "
                    "profile below lists mlxrouter's per-token work outside MLX."
                )
            fig.cause.append(text)

    # -- g --

    def figure_g(self, fig: Figure) -> None:
        idle = self.idle_rss
        budget = self.budget
        order = [self.ids[x] for x in "abc"] * self.mode.g_rounds
        pool_peak = 0
        evictions = 0
        with (
            httpx.Client(base_url=self.router_g.url, timeout=600) as client,
            RssSampler(self.router_g.pid) as sampler,
        ):
            started = time.perf_counter()
            for i, model_id in enumerate(order):
                body = {"model": model_id, "prompt": WORDS[i % len(WORDS)], "max_tokens": 1}
                completion(client, body)
                pool = client.get("/admin/pool").json()
                pool_peak = max(pool_peak, pool["used_bytes"])
                evictions = pool["evictions"]
            wall = time.perf_counter() - started
        hwm = proc_status(self.router_g.pid, "VmHWM")
        peak = sampler.peak
        ratio = peak / budget
        idle_ok = idle <= 150 * MB
        fig.ours = f"idle {idle / MB:.0f} MB; peak {peak / MB:.0f} MB"
        fig.theirs = f"budget {budget / MB:.0f} MB"
        fig.ratio = ratio
        fig.ratio_text = f"idle {idle / MB:.0f} MB; peak/budget {ratio:.2f}"
        fig.met = idle_ok and ratio <= 1.05
        size = folder_bytes(self.big[0])
        fig.details += [
            f"A fresh `mlxrouter serve` with three ~1B models ({size / MB:.0f} MB each) "
            f"configured, `pool.max_models: 3`, `pool.max_memory: {budget}` ({budget / MB:.0f} MB, "
            "room for two: 2 x "
            f"({size / MB:.0f} MB of weights + {self.entry_overhead / MB:.0f} MB, the pool's "
            "per-entry prompt-cache allowance) + 100 MB). "
            f"Idle: VmRSS 2 s after start-up, nothing loaded. Switching: {len(order)} requests "
            f"cycling a → b → c ({wall:.0f} s, max_tokens=1), VmRSS sampled every 10 ms "
            f"({sampler.samples} samples).",
            "",
            "| | value | target |",
            "|---|---|---|",
            f"| idle RSS | **{idle / MB:.0f} MB** | ≤ 150 MB ({verdict(idle_ok)}) |",
            f"| peak RSS while switching (sampled) | **{peak / MB:.0f} MB** | ≤ "
            f"{budget * 1.05 / MB:.0f} MB ({verdict(ratio <= 1.05)}) |",
            f"| VmHWM at the end (whole life, includes figure e's loads) | {hwm / MB:.0f} MB | |",
            f"| peak `used_bytes` the pool accounted (`/admin/pool`) | {pool_peak / MB:.0f} MB "
            f"| ≤ {budget / MB:.0f} MB |",
            f"| evictions during the run | {evictions} | |",
        ]
        if not idle_ok:
            fig.cause.append(
                f"Idle RSS is {idle / MB:.0f} MB with nothing loaded: the imports (mlx, mlx_lm, "
                "transformers, litestar, uvicorn, prometheus_client, huggingface_hub) are made at "
                "start-up. The profile below lists the import times."
            )
        if ratio > 1.05:
            beyond = peak - pool_peak
            fig.cause.append(
                f"Peak RSS {peak / MB:.0f} MB exceeds the budget by "
                f"{(peak - budget) / MB:.0f} MB. The pool's own accounting peaked at "
                f"{pool_peak / MB:.0f} MB ("
                + ("within" if pool_peak <= budget else "above")
                + f" the budget); RSS is {beyond / MB:.0f} MB above that figure, of which "
                f"{idle / MB:.0f} MB is the idle process (Python, libraries) the budget does "
                f"not count, and {(beyond - idle) / MB:.0f} MB is memory held beyond the "
                "accounted bytes (KV caches, MLX's buffer cache, tokenizers, transient "
                "buffers while loading)."
            )

    # -- the profile --

    def profile(self) -> None:
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
                    "models": {"smollm2": {"path": str(self.smol)}},
                    "log_file": False,
                }
            )
        )
        n = self.mode.profile_requests
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
        self.profile_lines = summarise_profile(loop_prof, engine_prof, plain, profiled, self.facts)
        self.facts["send_alone_us"] = socket_send_cost() * 1e6


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


# ---- output -----------------------------------------------------------------------------------


def table(figures: list[Figure]) -> list[str]:
    figures = sorted(figures, key=lambda f: f.key)
    lines = [
        "| figure | mlxrouter | baseline | ratio / result | target | |",
        "|---|---|---|---|---|---|",
    ]
    for f in figures:
        if f.error:
            lines.append(f"| {f.key}. {f.title} | error | | {f.error} | {f.target} | |")
            continue
        lines.append(
            f"| {f.key}. {f.title} | {f.ours} | {f.theirs} | {f.ratio_text} | {f.target} | "
            f"{verdict(f.met)} |"
        )
    return lines


def print_table(figures: list[Figure]) -> None:
    figures = sorted(figures, key=lambda f: f.key)
    rows = [("figure", "mlxrouter", "baseline", "ratio / result", "target", "")]
    for f in figures:
        rows.append(
            (
                f"{f.key}. {f.title}"[:52],
                f.ours if not f.error else "error",
                f.theirs,
                (f.error or f.ratio_text)[:70],
                f.target,
                "" if f.error else verdict(f.met),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))


def write_doc(bench: Bench, meta: dict[str, Any], doc: Path) -> None:
    figures = bench.figures
    v = meta["versions"]
    lines = [
        "# Benchmarks",
        "",
        "Written by `scripts/bench` (source: [scripts/bench.py](../scripts/bench.py)); rerun it to "
        "refresh this file. Every ratio compares two measurements taken side by side in the "
        "same invocation, on the same machine and models. Values are medians.",
        "",
        "## Run",
        "",
        f"- Command: `{meta['command']}` ({meta['mode']} mode), {meta['date']}",
        f"- Total run time: {meta['wall'] / 60:.1f} min",
        f"- Machine: {meta['cpu']}, {os.cpu_count()} cores, {memory_total() / 2**30:.1f} GiB "
        f"memory, {platform.system()} {platform.release()}, no GPU (MLX CPU build)",
        f"- Versions: Python {v['python']}, mlx {v['mlx']}, mlx-lm {v['mlx-lm']}, mlxrouter "
        f"{v['mlxrouter']} (commit `{v['mlxrouter commit']}`), litestar {v['litestar']}, "
        f"uvicorn {v['uvicorn']}, transformers {v['transformers']}",
        f"- Load: load average {meta['load_before'][0]:.2f} before the run; other processes "
        f"used {meta['others'] * 100:.0f}% of one core on average during it"
        + (
            " — **the machine was shared; figures are noisier than usual**."
            if meta["others"] > 0.15
            else "."
        ),
        "- Page cache: "
        + (
            "dropped before each cold read (figure e)"
            if bench.cold_cache
            else "not dropped (figure e is warm-cache)"
        ),
        "",
        "## Models",
        "",
        f"- **SmolLM2-135M-Instruct** (the demo model: 4-bit, "
        f"{folder_bytes(bench.smol) / MB:.0f} MB) for a, f and the profile.",
        f"- **bench-1b-a/b/c**: random-weight llama models built by the suite (hidden "
        f"{BIG_SPEC['hidden_size']}, {BIG_SPEC['num_hidden_layers']} layers, MLP "
        f"{BIG_SPEC['intermediate_size']}, GQA 32/8 heads, vocab {BIG_SPEC['vocab_size']}: "
        f"1.07B parameters), 4-bit (group 64) with float32 scales, "
        f"{folder_bytes(bench.big[0]) / MB:.0f} MB each, SmolLM2's tokenizer; cached in "
        "`.cache/bench/`. Used for b, c, e and g, where loading matters. float32 scales because "
        "MLX's CPU quantized matmul runs float16 ones many times slower (emulated half "
        "precision)"
        + (
            f"; even so, one request of a 1-token prompt and max_tokens=1 takes "
            f"{fmt_s(median([t.seconds for t in bench.same_model['mlxrouter']]))} on it here "
            "(figure b)."
            if bench.same_model.get("mlxrouter")
            else "."
        ),
        f"- **bench-1b-a-lora**: a LoRA adapter on bench-1b-a (rank {LORA['rank']}, every "
        "linear layer).",
        "",
        "## Summary",
        "",
        *table(figures),
        "",
    ]
    for f in sorted(figures, key=lambda f: f.key):
        lines += [
            f"## {f.key}. {f.title}",
            "",
            f"Target: {f.target}. Result: "
            f"**{f.ratio_text or '-'}** — {verdict(f.met) if not f.error else 'error'}.",
            "",
        ]
        if f.error:
            lines += [f"The figure failed: `{f.error}`", ""]
            continue
        lines += [*f.details, ""]
        if f.cause:
            lines += ["**Why the target is not met (measured):**", ""]
            lines += [f"- {c}" for c in f.cause]
            lines.append("")
        lines += [f"_({f.seconds:.0f} s)_", ""]
    if bench.profile_lines:
        lines += ["## Where one request's time goes", "", *bench.profile_lines]
    lines += ["## Recommendations", "", *recommendations(bench), ""]
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n".join(lines))


def recommendations(bench: Bench) -> list[str]:
    """Changes to mlxrouter the numbers point at (the benchmark changes no package code). Each
    is included only when this run measured the problem it addresses."""
    figures = {f.key: f for f in bench.figures if not f.error}
    facts = bench.facts
    out = []
    if figures.get("d") and figures["d"].met is False:
        in_app = facts.get("models_in_app_s")
        out.append(
            "- **`/v1/models`**: build the list once per registry snapshot and keep the encoded "
            "bytes (refresh the `loaded` flags when the pool changes) instead of rebuilding "
            "and encoding every card per request"
            + (f" ({fmt_s(in_app)} in the app at 1000 repos)" if in_app else "")
            + "; the registry is immutable, so the swap itself invalidates it. The remaining "
            "cost is the size of the answer."
        )
    shared = facts.get("f_shared_cached_theirs", 0) - facts.get("f_shared_cached_ours", 0)
    if shared > 0:
        out.append(
            "- **Prompt cache for concurrent requests**: insert a sequence's prompt KV cache "
            "into the `LRUPromptCache` as soon as its prefill is done, not only when it "
            f"finishes; in figure f, mlx_lm.server reused {shared:.0f} more prompt tokens "
            "than mlxrouter for 8 requests sharing a 6-token prefix (a shared system prompt is "
            "the common case)."
        )
    if facts.get("f_spread_s", 0) > facts.get("f_spread_theirs_s", 0) + 0.2:
        out.append(
            "- **Prefill rounds**: when a burst of requests arrives, the engine starts a step "
            "with the ones already queued and prefills late arrivals in another round "
            f"(first tokens spread over {facts['f_spread_s']:.1f} s against "
            f"{facts.get('f_spread_theirs_s', 0.0):.1f} s for mlx_lm.server). Draining the "
            "command queue once more, or waiting a few milliseconds for more requests before "
            "the first prefill of an idle model, would batch them together."
        )
    wake = facts.get("wake_ms")
    # The engine hands over one batch of events per turn (plus each command's result), so a
    # 4-token request needs about 7 wake-ups; more means events go one by one again.
    if wake and facts.get("wakes", 0) > 8:
        wakes = facts["wakes"]
        alone = facts.get("send_alone_us", 0.0)
        out.append(
            f"- **Engine-to-event-loop hand-off**: {wakes:.0f} `call_soon_threadsafe` per "
            f"4-token request, where one per engine turn would be about 7; the engine thread "
            f"spent {wake:.1f} ms per request in the self-pipe `send` behind them, "
            f"{wake / wakes * 1000:.0f} µs a call, where a send and receive on an idle socket "
            f"pair take {alone:.0f} µs here (the rest is waiting for the GIL). Hand events over "
            "once per engine turn."
        )
    tok = facts.get("tokenizer_s")
    if figures.get("e") and figures["e"].met is False and tok:
        out.append(
            f"- **Cold loads**: the tokenizer alone took {fmt_s(tok)} here. mlxrouter already "
            "loads it on a side thread while the engine reads the weights; what remains is "
            "transformers' own construction of the tokenizer (a cached, pre-built tokenizer "
            "per model folder would skip it)."
        )
    if figures.get("g") and figures["g"].met is False:
        out.append(
            "- **`pool.max_memory`**: it bounds the pool's accounted bytes, not the process. "
            "Either say so in the README, or reserve the idle RSS and count KV caches so the "
            "budget bounds what the OS sees."
        )
    if any(figures.get(k) and figures[k].met is False for k in "bc"):
        out.append(
            "- Not a change to mlxrouter: figures b and c need a machine where loading costs "
            "more than a request's generation. Rerun `scripts/bench --full` on Apple silicon "
            "(or with a GPU) for the figures users will see."
        )
    return out or ["- None: every figure met its target in this run."]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example: scripts/bench --quick --only a,d",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a 2-3 minute smoke run")
    size.add_argument("--full", action="store_true", help="more repetitions and tokens")
    parser.add_argument("--only", default="", help="comma-separated figures: a,b,c,d,e,f,g,profile")
    parser.add_argument(
        "--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone"
    )
    parser.add_argument(
        "--doc",
        type=Path,
        help="write the report here (default: docs/BENCHMARKS.md, in default and --full mode "
        "with every figure)",
    )
    args = parser.parse_args(argv)
    mode = MODES["quick" if args.quick else "full" if args.full else "default"]
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    doc = args.doc or (DOC if not args.quick and not only else None)
    if args.no_write:
        doc = None

    started = time.perf_counter()
    disturbance = Disturbance()
    meta: dict[str, Any] = {
        "command": os.environ.get("MLXROUTER_BENCH_COMMAND")
        or shlex.join([sys.executable, "scripts/bench.py", *(argv or sys.argv[1:])]),
        "mode": mode.name,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "versions": versions(),
        "load_before": disturbance.load_before,
    }
    print(
        f"mlxrouter benchmarks ({mode.name} mode) on {meta['cpu']}, {os.cpu_count()} cores",
        file=sys.stderr,
    )
    tmp = Path(tempfile.mkdtemp(prefix="mlxrouter-bench-"))
    bench = Bench(mode, only, tmp)
    try:
        bench.run()
    finally:
        bench.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    meta["wall"] = time.perf_counter() - started
    meta["others"] = disturbance.others_share()
    print()
    print_table(bench.figures)
    for f in bench.figures:
        for cause in f.cause:
            print(f"\n{f.key}: {cause}")
    if bench.profile_lines:
        print("\nWhere one request's time goes:")
        print("\n".join(bench.profile_lines))
    print(
        f"\ntotal {meta['wall'] / 60:.1f} min; other processes used "
        f"{meta['others'] * 100:.0f}% of one core meanwhile"
    )
    if doc is not None:
        write_doc(bench, meta, doc)
        print(f"wrote {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

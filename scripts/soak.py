"""Soak: mixed streaming and plain requests over three models with a pool of two, random
client disconnects and live config edits, against a real `mlxrouter serve` subprocess.

Every few seconds it samples the daemon's RSS and MLX's own figures (active and cache bytes,
from /admin/pool); after warm-up it fits the least-squares slope of each and prints it in MB
(10^6 bytes) per hour. Prints unexpected errors and p50/p99 latency too. Exits 1 when anything
other than the intended 503/429 went wrong, when the fitted RSS grew more than 5% after
warm-up, or, on runs of at least --slope-after seconds (20 minutes), when the RSS slope is
above --max-mb-per-hour (5); shorter runs report the slope without judging it, as a slope
fitted over a few minutes says little about weeks.
Usage: scripts/soak [--seconds N] [--clients N] [--sample-every S] [--max-mb-per-hour X]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
from _harness import daemon_env, rss_bytes, slope, start_mlxrouter

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from tinymodel import make_tiny_model  # noqa: E402

MODELS = ["soak-a", "soak-b", "soak-c"]
# Prompts are made of these 1,000 words, as real text repeats its words: each tokenizer keeps
# a word cache (tokenizers' BPE cache, up to 10,000 words, a few MB) that fills with distinct
# ones. Prompts of fresh random numbers took ~30,000 requests to fill the three caches, and
# looked like a leak for the soak's first 40 minutes (docs/MEMORY.md).
WORDS = [
    onset + vowel + coda
    for onset in "bdfgklmnpt"
    for vowel in ("a", "e", "i", "o", "u", "ai", "ea", "io", "oo", "ou")
    for coda in ("", "l", "m", "n", "r", "s", "t", "x", "y", "z")
]
EXPECTED = {200, 429, 503}
MB = 1e6


class Memory:
    """The daemon's memory sampled over the run: (seconds since start, bytes) per figure."""

    FIGURES = ("rss", "mlx_active", "mlx_cache")

    def __init__(self, pid: int, url: str) -> None:
        self.pid = pid
        self.url = url
        self.samples: dict[str, list[tuple[float, float]]] = {f: [] for f in self.FIGURES}

    def sample(self, elapsed: float) -> None:
        self.samples["rss"].append((elapsed, rss_bytes(self.pid)))
        try:
            pool = httpx.get(self.url + "/admin/pool", timeout=10).json()
        except (httpx.HTTPError, ValueError):
            return  # a busy moment: the RSS sample still counts
        self.samples["mlx_active"].append((elapsed, pool.get("mlx_active_bytes", 0)))
        self.samples["mlx_cache"].append((elapsed, pool.get("mlx_cache_bytes", 0)))

    def after(self, figure: str, warmup: float) -> list[tuple[float, float]]:
        return [(t, b) for t, b in self.samples[figure] if t >= warmup]

    def mb_per_hour(self, figure: str, warmup: float) -> float:
        return slope(self.after(figure, warmup)) * 3600 / MB

    def fitted_growth(self, warmup: float) -> tuple[float, float, float]:
        """RSS at the end of warm-up and at the end, read off the fitted line, and the growth
        between them in percent (the line smooths out single noisy samples)."""
        points = self.after("rss", warmup)
        if len(points) < 2:
            return float("nan"), float("nan"), float("nan")
        rate = slope(points)
        mean_t = sum(t for t, _ in points) / len(points)
        mean_b = sum(b for _, b in points) / len(points)
        start = mean_b + rate * (points[0][0] - mean_t)
        end = mean_b + rate * (points[-1][0] - mean_t)
        return start, end, (end - start) / start * 100

    def write_csv(self, path: Path) -> None:
        lines = ["figure,seconds,bytes"]
        for figure, points in self.samples.items():
            lines += [f"{figure},{t:.1f},{b:.0f}" for t, b in points]
        path.write_text("\n".join(lines) + "\n")


class Soak:
    def __init__(self, url: str, deadline: float, seed: int) -> None:
        self.url = url
        self.deadline = deadline
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.statuses: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.disconnects = 0

    def one(self, client: httpx.Client, rng: random.Random) -> None:
        model = rng.choice(MODELS)
        stream = rng.random() < 0.5
        body = {
            "model": model,
            "messages": [{"role": "user", "content": " ".join(rng.choices(WORDS, k=6))}],
            "max_tokens": rng.randint(4, 32),
            "stream": stream,
        }
        started = time.perf_counter()
        if not stream:
            response = client.post("/v1/chat/completions", json=body)
            status = response.status_code
            if status == 200:
                assert response.json()["choices"][0]["message"] is not None
        else:
            disconnect_after = rng.randint(1, 6) if rng.random() < 0.3 else None
            with client.stream("POST", "/v1/chat/completions", json=body) as response:
                status = response.status_code
                if status == 200:
                    done = False
                    for lines, line in enumerate(response.iter_lines(), start=1):
                        if disconnect_after is not None and lines >= disconnect_after:
                            break  # leaving mid-stream on purpose
                        done = done or line == "data: [DONE]"
                    if disconnect_after is not None and not done:
                        with self.lock:
                            self.disconnects += 1
                        return
                    if not done:
                        raise RuntimeError("stream ended without [DONE]")
                else:
                    response.read()
        with self.lock:
            self.statuses[status] += 1
            if status == 200:
                self.latencies.append(time.perf_counter() - started)
            elif status not in EXPECTED:
                self.errors[f"HTTP {status}"] += 1

    def client_loop(self, seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=self.url, timeout=120) as client:
            while time.monotonic() < self.deadline:
                try:
                    self.one(client, rng)
                except Exception as exc:  # counted, not raised: the soak reports them all
                    with self.lock:
                        self.errors[type(exc).__name__ + ": " + str(exc)[:80]] += 1


def write_config(path: Path, models: Path, variant: int) -> None:
    ttl = ["null", "30", "2m"][variant % 3]
    path.write_text(
        f"hf_cache: false\nmodel_dirs: [{models}]\n"
        f"models:\n  alias-{variant}: {{model: soak-a}}\n"
        f"pool: {{max_models: 2, idle_ttl: {ttl}, queue_timeout: 30}}\nlog_level: warning\n"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sample-every", type=float, default=3.0, help="seconds (default 3)")
    parser.add_argument(
        "--warmup",
        type=float,
        help="seconds left out of the fit (default: a quarter, at most 5 min)",
    )
    parser.add_argument("--max-mb-per-hour", type=float, default=5.0, help="RSS slope bound")
    parser.add_argument(
        "--slope-after",
        type=float,
        default=1200.0,
        help="judge the slope only on runs at least this long (seconds, default 20 min)",
    )
    parser.add_argument("--samples", type=Path, help="write the memory samples to this CSV")
    args = parser.parse_args()
    warmup = args.warmup if args.warmup is not None else min(args.seconds * 0.25, 300.0)

    with tempfile.TemporaryDirectory(prefix="mlxrouter-soak-") as temp:
        root = Path(temp)
        for seed, name in enumerate(MODELS, start=1):
            make_tiny_model(root / "models" / name, seed=seed, context=1024)
        config = root / "config.yaml"
        write_config(config, root / "models", 0)
        env = daemon_env(root)
        # Port 0: the daemon binds a free port and its ready line on stdout says which.
        try:
            daemon, url = start_mlxrouter(
                ["--config", str(config)], log=root / "serve.log", env=env, timeout=120
            )
        except RuntimeError as exc:
            raise SystemExit(f"the daemon did not start: {exc}") from None
        try:
            started = time.monotonic()
            soak = Soak(url, started + args.seconds, args.seed)
            threads = [
                threading.Thread(target=soak.client_loop, args=(args.seed * 100 + i,))
                for i in range(args.clients)
            ]
            for thread in threads:
                thread.start()
            memory = Memory(daemon.pid, url)
            variant = 0
            next_sample = 0.0
            while any(t.is_alive() for t in threads):
                elapsed = time.monotonic() - started
                if elapsed >= next_sample:
                    memory.sample(elapsed)
                    next_sample += args.sample_every
                if int(elapsed) // 10 > variant:  # a config edit every 10 s
                    variant = int(elapsed) // 10
                    write_config(config, root / "models", variant)
                time.sleep(min(1.0, max(0.05, next_sample - (time.monotonic() - started))))
            memory.sample(time.monotonic() - started)
            health = httpx.get(url + "/health").json()
            pool = httpx.get(url + "/admin/pool").json()
        finally:
            daemon.terminate()
            code = daemon.wait(60)

        latencies = sorted(soak.latencies)
        p50 = statistics.median(latencies) if latencies else float("nan")
        p99 = (
            latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
            if latencies
            else float("nan")
        )
        warm_rss, end_rss, growth = memory.fitted_growth(warmup)
        rss_rate = memory.mb_per_hour("rss", warmup)
        judged = args.seconds >= args.slope_after
        print(f"soak: {args.seconds:.0f}s, {args.clients} clients, models {MODELS}, pool of 2")
        print(f"requests: {dict(soak.statuses)}; intended disconnects: {soak.disconnects}")
        print(f"latency of 200s: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")
        print(
            f"daemon RSS (fitted, after {warmup:.0f}s of warm-up): {warm_rss / MB:.1f} MB, "
            f"{end_rss / MB:.1f} MB at the end ({growth:+.1f}%); "
            f"{len(memory.after('rss', warmup))} samples every {args.sample_every:g}s"
        )
        print(
            f"RSS slope after warm-up: {rss_rate:+.2f} MB/h "
            + (
                f"(bound {args.max_mb_per_hour:g} MB/h)"
                if judged
                else f"(not judged: runs under {args.slope_after:.0f}s report it only)"
            )
        )
        for figure in ("mlx_active", "mlx_cache"):
            points = memory.samples[figure]
            last = points[-1][1] / MB if points else float("nan")
            print(
                f"MLX {figure[4:]}: {last:.1f} MB at the end, "
                f"{memory.mb_per_hour(figure, warmup):+.2f} MB/h after warm-up"
            )
        if args.samples is not None:
            memory.write_csv(args.samples)
        in_flight = sum(e["in_flight"] for e in pool["entries"])
        print(f"health at the end: {health['status']}; in flight: {in_flight}")
        print(f"daemon exit code: {code}")
        unexpected = sum(soak.errors.values())
        print(f"unexpected errors: {unexpected}")
        for error, count in soak.errors.most_common():
            print(f"  {count} x {error}")
        ok = (
            unexpected == 0
            and code == 0
            and health["status"] == "ok"
            and in_flight == 0
            and growth < 5
            and (not judged or rss_rate <= args.max_mb_per_hour)
            and soak.statuses[200] > 0
        )
        if not ok:
            print((root / "serve.log").read_text()[-3000:])
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Soak: mixed streaming and plain requests over three models with a pool of two, random
client disconnects and live config edits, against a real `mlxrouter serve` subprocess.

Prints unexpected errors, p50/p99 latency and the daemon's RSS growth after warm-up; exits 1
when anything other than the intended 503/429 went wrong or RSS grew more than 5%.
Usage: scripts/soak [--seconds N] [--clients N]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
from _harness import start_mlxrouter

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from tinymodel import make_tiny_model  # noqa: E402

MODELS = ["soak-a", "soak-b", "soak-c"]
EXPECTED = {200, 429, 503}


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


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
            "messages": [{"role": "user", "content": f"Hello {rng.randint(0, 10**6)}"}],
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
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mlxrouter-soak-") as temp:
        root = Path(temp)
        for seed, name in enumerate(MODELS, start=1):
            make_tiny_model(root / "models" / name, seed=seed, context=1024)
        config = root / "config.yaml"
        write_config(config, root / "models", 0)
        env = {
            **os.environ,
            "MLXROUTER_DATA_DIR": str(root / "data"),
            "MLXROUTER_CONFIG_DIR": str(root / "cfg"),
            "MLXROUTER_LOG_DIR": str(root / "logs"),
            "HF_HUB_OFFLINE": "1",
        }
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
            warm_rss = None
            variant = 0
            while any(t.is_alive() for t in threads):
                time.sleep(1.0)
                elapsed = time.monotonic() - started
                if warm_rss is None and elapsed > args.seconds * 0.25:
                    warm_rss = rss_kb(daemon.pid)
                if int(elapsed) // 10 > variant:  # a config edit every 10 s
                    variant = int(elapsed) // 10
                    write_config(config, root / "models", variant)
            end_rss = rss_kb(daemon.pid)
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
        growth = (end_rss - warm_rss) / warm_rss * 100 if warm_rss else float("nan")
        print(f"soak: {args.seconds:.0f}s, {args.clients} clients, models {MODELS}, pool of 2")
        print(f"requests: {dict(soak.statuses)}; intended disconnects: {soak.disconnects}")
        print(f"latency of 200s: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")
        print(f"daemon RSS: {warm_rss} kB after warm-up, {end_rss} kB at the end ({growth:+.1f}%)")
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
            and soak.statuses[200] > 0
        )
        if not ok:
            print((root / "serve.log").read_text()[-3000:])
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Load and unload one model over and over through `/admin/load` + `/admin/unload` of a real
`mlxrouter serve` subprocess, and measure what each cycle leaves behind in the daemon.

After --warmup cycles, RSS is sampled every --sample-every cycles (with MLX's active and cache
bytes from /admin/pool); prints RSS after warm-up and at the end, the growth read off the
least-squares line, and its slope in KB per cycle. Exits 1 when the fitted growth is above
--max-growth-mb (default 5 MB, the bound for 1,000 cycles of the demo model).

--source DIR runs the daemon from another checkout of mlxrouter (say `git archive HEAD`
unpacked somewhere), with this one's Python, to compare before and after a change.
Usage: scripts/load_cycles.py [--cycles N] [--model FOLDER] [--source DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _harness import daemon_env, rss_bytes, slope, start_mlxrouter, stop

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / ".cache" / "models" / "SmolLM2-135M-Instruct"
MB = 1e6


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=20, help="cycles left out of the fit")
    parser.add_argument("--sample-every", type=int, default=10, help="cycles between samples")
    parser.add_argument("--model", type=Path, default=DEMO, help="a model folder (the demo)")
    parser.add_argument("--source", type=Path, default=REPO, help="the mlxrouter checkout")
    parser.add_argument("--max-growth-mb", type=float, default=5.0)
    args = parser.parse_args()
    if not (args.model / "config.json").exists():
        raise SystemExit(f"no model folder at {args.model} (run scripts/test once for the demo)")

    with tempfile.TemporaryDirectory(prefix="mlxrouter-cycles-") as temp:
        root = Path(temp)
        config = root / "config.yaml"
        entry = json.dumps(str(args.model.resolve()))
        config.write_text(
            f"hf_cache: false\nmodels:\n  cycled: {{path: {entry}}}\n"
            "pool: {max_models: 1}\nlog_level: warning\nlog_file: false\n"
        )
        env = daemon_env(root, PYTHONPATH=str(args.source.resolve()))
        daemon, url = start_mlxrouter(
            ["--config", str(config)],
            log=root / "serve.log",
            env=env,
            cwd=args.source.resolve(),
            timeout=120,
        )
        samples: list[tuple[float, float]] = []
        pool: dict[str, int] = {}
        try:
            with httpx.Client(base_url=url, timeout=300) as http:
                started = time.perf_counter()
                for cycle in range(1, args.warmup + args.cycles + 1):
                    for action in ("load", "unload"):
                        answer = http.post(f"/admin/{action}", json={"model": "cycled"})
                        answer.raise_for_status()
                    counted = cycle - args.warmup
                    if counted >= 0 and counted % args.sample_every == 0:
                        samples.append((counted, rss_bytes(daemon.pid)))
                elapsed = time.perf_counter() - started
                pool = http.get("/admin/pool").json()
        finally:
            code = stop(daemon)

    rate = slope(samples)  # bytes per cycle
    fitted_growth = rate * args.cycles
    first, last = samples[0][1], samples[-1][1]
    print(f"model: {args.model.name}; daemon from {args.source}; exit code {code}")
    print(
        f"{args.cycles} load/unload cycles after {args.warmup} of warm-up, "
        f"{elapsed / (args.warmup + args.cycles) * 1000:.0f} ms a cycle"
    )
    print(
        f"RSS: {first / MB:.1f} MB after warm-up, {last / MB:.1f} MB at the end "
        f"({(last - first) / MB:+.1f} MB); fitted {fitted_growth / MB:+.2f} MB "
        f"({rate / 1000:+.2f} KB a cycle, {len(samples)} samples)"
    )
    print(
        f"MLX at the end: active {pool.get('mlx_active_bytes', 0) / MB:.1f} MB, "
        f"cache {pool.get('mlx_cache_bytes', 0) / MB:.1f} MB, "
        f"peak {pool.get('mlx_peak_bytes', 0) / MB:.1f} MB; loads {pool.get('loads')}"
    )
    ok = code == 0 and fitted_growth / MB <= args.max_growth_mb
    print(f"growth bound {args.max_growth_mb:g} MB: {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

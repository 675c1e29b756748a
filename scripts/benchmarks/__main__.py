"""`python -m benchmarks [--quick | --full] [--only a,b,...] [--no-write] [--doc PATH]`, run
from the scripts folder (as scripts/bench does): parse the flags, run the suite, print the
summary and write the report."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import __doc__ as usage
from .common import DOC, MODES, REPO
from .machine import Disturbance, cpu_model, versions
from .report import print_table, write_doc
from .suite import Bench


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description=usage,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example: scripts/bench --quick --only a,d",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a 2-3 minute smoke run")
    size.add_argument("--full", action="store_true", help="more repetitions and tokens")
    parser.add_argument(
        "--only", default="", help="comma-separated figures: a,b,c,d,e,f,g,h,i,p,s,v,x,profile"
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone"
    )
    parser.add_argument(
        "--doc",
        type=Path,
        help="write the report here, relative to the repository root (default: "
        "docs/BENCHMARKS.md, in default and --full mode with every figure)",
    )
    args = parser.parse_args(argv)
    mode = MODES["quick" if args.quick else "full" if args.full else "default"]
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    # REPO / an absolute path is that path; scripts/bench has always run from the root.
    doc = REPO / args.doc if args.doc else DOC if not args.quick and not only else None
    if args.no_write:
        doc = None

    started = time.perf_counter()
    disturbance = Disturbance()
    meta: dict[str, Any] = {
        "command": os.environ.get("MLXROUTER_BENCH_COMMAND")
        or shlex.join([sys.executable, "-m", "benchmarks", *(argv or sys.argv[1:])]),
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

"""The machine the suite runs on: CPU, memory, versions, other processes' load, the page cache,
and a process's resident memory."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import threading
import time
from pathlib import Path

from .common import REPO


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

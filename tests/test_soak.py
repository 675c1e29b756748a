"""The soak (scripts/soak.py) for 60 s: three models, a pool of two, streams and plain
requests, random disconnects and config edits. It must end with no unexpected error, nothing
in flight, a healthy daemon that exits 0, and RSS growth under 5% after warm-up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent


def test_soak_for_a_minute() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "soak.py"), "--seconds", "60"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "unexpected errors: 0" in result.stdout

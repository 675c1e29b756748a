"""What every part of the suite shares: paths, prompt words, modes, the Figure record, and
number formatting."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
BENCH_CACHE = REPO / ".cache" / "bench"
DOC = REPO / "docs" / "BENCHMARKS.md"
HOST = "127.0.0.1"
MB = 1_000_000

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
    surface_reps: int = 5  # rounds of one streamed request per API surface (figure s)
    surface_tokens: int = 32
    embed_texts: int = 1000  # short texts embedded per round (figure i)
    index_texts: int = 5000  # the indexing job beside a chat stream (figure i)
    embed_reps: int = 2


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
        surface_reps=1,
        surface_tokens=16,
        # a smoke run: a CPU embeds MiniLM at a few texts per second
        embed_texts=100,
        index_texts=300,
        embed_reps=1,
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
        surface_reps=7,
        surface_tokens=64,
        embed_reps=3,
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

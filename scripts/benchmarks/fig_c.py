"""Figure c: switch time to the first token between a ~1B base model and a LoRA adapter on it:
mlxrouter (keeps both, sharing the base's arrays) alternating against mlxrouter on the base
alone, with mlx_lm.server (reloads base + adapter on every switch) for reference."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .common import MB, Figure
from .fig_b import switch_cause, switching
from .models import BIG_SPEC, LORA

if TYPE_CHECKING:
    from .suite import Bench

KEY = "c"
TITLE = "switch time to first token: alternating base ↔ LoRA adapter (~1B)"
TARGET = "≤ 1.05x staying on one, below mlx_lm.server's"


def measure(bench: Bench, fig: Figure) -> None:
    a = bench.ids["a"]
    runs = switching(
        bench,
        fig,
        [{"model": a}, {"model": "bench-1b-a-lora"}],
        [
            {"model": str(bench.big[0])},
            {"model": str(bench.big[0]), "adapters": str(bench.adapter)},
        ],
    )
    size = (bench.adapter / "adapters.safetensors").stat().st_size
    fig.details.append(
        f"The adapter: LoRA rank {LORA['rank']} on every linear layer of all "
        f"{BIG_SPEC['num_hidden_layers']} layers, {size / MB:.0f} MB. mlx_lm.server reloads "
        "base + adapter on every switch; mlxrouter keeps both loaded, sharing the base's "
        "arrays."
    )
    if not fig.met:
        switch_cause(bench, fig, runs)

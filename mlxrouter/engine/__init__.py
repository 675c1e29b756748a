"""The MLX side of mlxrouter: loading models and generating text, on one owned thread.

Modules, one concern each (only those marked MLX import `mlx` / `mlx_lm`):

- `types`: the shared vocabulary, plain frozen dataclasses: `LoadSpec`, `ModelInfo`,
  `ModelOptions`, `SamplingParams`, `GenerationRequest` and the events `Started`, `Chunk` (with
  `TokenLogprob`, `ToolCall`) and `Finished`.
- `bridge`: the engine thread <-> event loop bridge: the command type, futures settled on
  their own loop, `GenerationStream` (one request's events) and the `Outbox` that hands a
  turn's events to each loop in one wake-up.
- `engine` (MLX): `Engine`, the thread's loop and the public coroutines (`load`, `unload`,
  `generate`, `call`, `close`), continuous batching with mlx_lm's `BatchGenerator`.
- `admission` (MLX): a request's preparation on a loaded model (`prepare`): prompt, budget,
  solo plan, cached prefix, sampler, processors, stop sequences; its errors raised up front.
- `disk_cache` (MLX): `DiskCache`, prompt caches written to disk when a model unloads and
  read back when a prompt's prefix matches, per model id and weight fingerprint, within a
  byte budget.
- `prefix` (MLX): `PrefixCache`, a loaded model's prompt (KV) cache for prefix reuse.
- `solo` (MLX): requests the batch cannot take (a draft model, a quantized KV cache), run by
  mlx_lm's own generators one token per engine turn; the draft's vocabulary check.
- `loading` (MLX): loads that never stall generation (weights read a slice per engine step,
  the tokenizer on a side thread), LoRA adapters sharing a loaded base's arrays, load errors.
- `prompt`: a request's prompt tokens (chat template and its variables, role mapping, whether
  the prompt left the model thinking) and its checks (token
  budget against the context, token ids in the vocabulary); pure over a tokenizer.
- `sampling` (MLX): the sampler (seeded per request), logits processors (penalties, logit
  bias, the grammar mask) and which grammar a request needs; a token's logprobs.
- `output` (MLX via mlx_lm's `TextStateMachine`): `SequenceOutput`, one sequence's tokens in,
  `Chunk`s and `Finished` out: detokenizing, reasoning between thinking markers, stop strings in
  text, tool-call segments.
- `embedding` (MLX): embedding models: loading, per-input checks, a queue per model run one
  padded batch per engine turn, pooling and normalisation; `bert` (MLX): the BERT encoder.
- `constrain` (MLX, llguidance): grammars for JSON schemas and forced tool calls, and the
  logits processor that masks every token leaving the grammar (from `</think>` on).
- `vision` (MLX, mlx-vlm): vision-language models: loading with mlx-vlm, a request's images
  and prompt through its processor, its `generate_step` as a solo sequence, one request at a
  time per model; the prompt cache's key with images drawn from their content digest.

Importing this package, `types` or `bridge` loads no MLX; `Engine` is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .bridge import GenerationStream
from .types import (
    Chunk,
    Embedded,
    EmbeddingRequest,
    Event,
    Finished,
    GenerationRequest,
    ImageInput,
    LoadSpec,
    ModelInfo,
    ModelOptions,
    SamplingParams,
    Started,
    TokenLogprob,
    ToolCall,
)

if TYPE_CHECKING:
    from .engine import Engine

__all__ = [
    "Chunk",
    "Embedded",
    "EmbeddingRequest",
    "Engine",
    "Event",
    "Finished",
    "GenerationRequest",
    "GenerationStream",
    "ImageInput",
    "LoadSpec",
    "ModelInfo",
    "ModelOptions",
    "SamplingParams",
    "Started",
    "TokenLogprob",
    "ToolCall",
]


def __getattr__(name: str) -> Any:
    # Engine imports mlx: only code that runs models pays for it (not config, CLI, API types).
    if name == "Engine":
        from .engine import Engine

        return Engine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

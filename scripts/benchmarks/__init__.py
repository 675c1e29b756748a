"""mlxrouter benchmarks, side by side with mlx_lm.server and in-process mlx_lm.

    scripts/bench [--quick | --full] [--only a,b,...] [--no-write] [--doc PATH]

The default run takes about 6-7 minutes on 2 CPU cores, --quick about 2-3, --full about 20,
and figure i adds far more on a CPU, where MLX embeds MiniLM at a few texts per second (--quick
embeds 100 and indexes 300 texts instead of 1,000 and 5,000).

One invocation starts `python -m mlx_lm.server` and `python -m mlxrouter serve` (a temporary
config, data, log and HF cache folder each) on loopback, drives both with the same requests
and prints every figure with its ratio and target; the default and --full modes also write
docs/BENCHMARKS.md. Timings are reported, never asserted.

  a  steady single-model tokens/s: mlxrouter vs in-process mlx_lm.stream_generate
  b  switch time to first token: alternating two models vs one (mlx_lm.server reloading too)
  c  the same for base <-> LoRA adapter
  d  GET /v1/models p50 with 10, 100, 1000 repos in the HF cache
  e  cold load (POST /admin/load) vs a raw read of the same files
  f  8 concurrent clients on one model, aggregate tokens/s
  g  idle RSS, and peak RSS against pool.max_memory under a switching workload
  s  per-token cost of each API surface (Anthropic, Responses, Ollama) against the chat path
  h  per-token cost through one upstream hop (`upstreams:`) against asking directly
  i  embeddings: texts/s for 1,000 short texts vs mlx-embeddings in-process (if installed),
     and a chat stream's time per token while an indexing job of 5,000 texts runs
  v  vision: time to first token for a 512 x 512 image prompt against mlx-vlm in process, and
     a second turn about the same image with and without the prompt cache
  x  speculative decoding: decode tokens/s of a model 4x the demo model's depth with the demo
     model drafting, against mlx_lm's own in process, and against no draft (a draft that
     agrees, and one that seldom does)
  +  "where one request's time goes": a profile of the daemon's request path outside MLX

Models: the real SmolLM2-135M-Instruct (a, f, s, h, i, profile), the real all-MiniLM-L6-v2
(i), random-weight llama models of about 1B parameters, 4-bit (b, c, e, g: load cost
matters there, as it does for 4-8B models), built once into .cache/bench/, and a random-weight
Qwen2-VL (v), built once there by the tests' builder.
"""

# Layout: __main__ (flags, run, print, write), suite (the Bench run: servers, figures in order),
# harness (server processes), models (building and caching the models), measure (timed
# requests), machine (CPU, memory, page cache, RSS), common (modes, figures, formatting),
# report (docs/BENCHMARKS.md), and one module per figure: fig_a ... fig_i, fig_s, fig_v, fig_x,
# fig_profile.

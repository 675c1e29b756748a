"""The models the suite runs: SmolLM2 (the demo model), random-weight ~1B llama models and a
LoRA adapter built once into .cache/bench/, and synthetic HF cache repos (figure d)."""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from .common import BENCH_CACHE, REPO

# The ~1B model: llama layout of a 1B-class model, 4-bit weights. Scales and biases are float32:
# MLX's CPU kernels run quantized matmuls with float16 scales ~40x (bfloat16 ~8x) slower than
# with float32 ones (emulated half precision; measured on the 2-core dev machine), which would
# make a 1B model unusable on a CPU; on Apple silicon they would be float16/bfloat16. The spec
# and BIG_VERSION are part of the cache stamp: change either to rebuild.
BIG_SPEC: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 2048,
    "num_hidden_layers": 16,
    "intermediate_size": 8192,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-5,
    "vocab_size": 49152,  # SmolLM2's tokenizer, copied in
    "max_position_embeddings": 8192,
    "tie_word_embeddings": True,
    "rope_theta": 100000.0,
    "quantization": {"group_size": 64, "bits": 4},
}
BIG_VERSION = 1
LORA = {"rank": 8, "scale": 20.0, "dropout": 0.0}
# Figure v's vision-language model: a random-weight Qwen2-VL built by the tests' own builder
# (mlx-vlm's model classes); a 512 x 512 image is 324 of its prompt tokens.
VLM_SPEC: dict[str, Any] = {
    "hidden": 256,
    "layers": 4,
    "vision_depth": 2,
    "vision_width": 128,
    "max_pixels": 512 * 512,
    "wide": False,
}
VLM_VERSION = 2


def entry_overhead() -> int:
    """The bytes the pool counts per entry beyond its weights (`pool.prompt_cache_bytes`
    at its default), or 0 for a version without it."""
    from mlxrouter import config

    default = getattr(config.PoolConfig(), "prompt_cache_bytes", None)
    return int(default) if default is not None else 0


def smollm() -> Path:
    from mlxrouter.demo import ensure_demo_model

    return ensure_demo_model(REPO / ".cache" / "models")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def _stamp_ok(folder: Path, stamp: dict[str, Any]) -> bool:
    with contextlib.suppress(OSError, ValueError):
        return json.loads((folder / ".bench-stamp.json").read_text()) == stamp
    return False


def _publish(scratch: Path, folder: Path, stamp: dict[str, Any]) -> None:
    (scratch / ".bench-stamp.json").write_text(json.dumps(stamp))
    if folder.exists():
        shutil.rmtree(folder)
    scratch.rename(folder)


def big_model(name: str, seed: int, tokenizer_from: Path) -> Path:
    """A random-weight ~1B llama, 4-bit, that mlx_lm.load opens; built once, then reused.

    Only the shapes of mlx_lm's own module tree are used (its random initialisation is never
    evaluated): packed 4-bit weights are random bits, scales and biases give weights uniform
    in about [-0.02, 0.02], norms are ones. Seconds, not minutes."""
    folder = BENCH_CACHE / name
    stamp = {"version": BIG_VERSION, "seed": seed, "spec": BIG_SPEC}
    if _stamp_ok(folder, stamp):
        return folder
    import mlx.core as mx
    from mlx import nn
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    print(f"  building {name} (~1B parameters, 4-bit) into {folder}", file=sys.stderr)
    BENCH_CACHE.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=BENCH_CACHE))
    config = {k: v for k, v in BIG_SPEC.items() if k != "quantization"}
    quant = BIG_SPEC["quantization"]
    model = llama.Model(llama.ModelArgs.from_dict(config))
    nn.quantize(model, group_size=quant["group_size"], bits=quant["bits"])
    mx.random.seed(seed)
    weights: dict[str, Any] = {}
    step = 0.04 / (2 ** quant["bits"] - 1)
    for key, value in tree_flatten(model.parameters()):
        if value.dtype == mx.uint32:
            bits = mx.random.randint(0, 2**31, value.shape, dtype=mx.int32)
            array = bits.view(mx.uint32) * 2 + (bits & 1).view(mx.uint32)
        elif key.endswith(".scales"):
            array = mx.random.uniform(0.5, 1.5, value.shape) * step
        elif key.endswith(".biases"):
            array = mx.full(value.shape, -0.02)
        else:
            array = mx.ones(value.shape)
        mx.eval(array)
        weights[key] = array
    del model
    mx.save_safetensors(str(scratch / "model.safetensors"), weights, metadata={"format": "mlx"})
    del weights
    (scratch / "config.json").write_text(json.dumps(BIG_SPEC, indent=2))
    for file in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tokenizer_from / file).is_file():
            shutil.copy(tokenizer_from / file, scratch / file)
    _publish(scratch, folder, stamp)
    gc.collect()
    mx.clear_cache()
    return folder


def deep_model(draft: Path, extra_layers: int, agree: bool) -> Path:
    """Figure x's bigger model: the demo model with `extra_layers` more decoder layers after its
    own, each a copy of one of its layers (so every token costs that much more compute). With
    `agree`, each extra layer's output projections (attention `o_proj`, MLP `down_proj`) are
    zeroed, so it adds nothing to the residual stream and the model predicts exactly what the
    demo model does: a draft that always agrees, as a small model of a family largely does for
    its big sibling. Without, the copies change the answer: a draft that seldom agrees."""
    name = f"smollm2-deep{extra_layers}-{'agree' if agree else 'differ'}"
    folder = BENCH_CACHE / name
    stamp = {"version": 1, "extra_layers": extra_layers, "agree": agree, "from": draft.name}
    if _stamp_ok(folder, stamp):
        return folder
    from safetensors.numpy import load_file, save_file

    print(f"  building {name} into {folder}", file=sys.stderr)
    BENCH_CACHE.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=BENCH_CACHE))
    config = json.loads((draft / "config.json").read_text())
    layers = int(config["num_hidden_layers"])
    weights = load_file(str(draft / "model.safetensors"))
    for i in range(extra_layers):
        source, target = f"model.layers.{i % layers}.", f"model.layers.{layers + i}."
        for key in [k for k in weights if k.startswith(source)]:
            value = weights[key].copy()
            silenced = (".o_proj.", ".down_proj.")
            if agree and any(p in key for p in silenced) and key.endswith((".scales", ".biases")):
                value[...] = 0  # a quantized weight of scale 0 and bias 0 is all zeros
            weights[target + key[len(source) :]] = value
    save_file(weights, str(scratch / "model.safetensors"), metadata={"format": "mlx"})
    (scratch / "config.json").write_text(
        json.dumps({**config, "num_hidden_layers": layers + extra_layers}, indent=2)
    )
    for file in draft.iterdir():
        if file.is_file() and file.name not in ("config.json", "model.safetensors"):
            shutil.copy(file, scratch / file.name)
    _publish(scratch, folder, stamp)
    return folder


def big_adapter(name: str, base: Path, seed: int) -> Path:
    """A LoRA adapter for `base` in mlx_lm.lora's format (rank 8 on every linear of all 16
    layers), with small random `lora_b` so it really changes the answers."""
    folder = BENCH_CACHE / name
    stamp = {"version": BIG_VERSION, "seed": seed, "base": base.name, "lora": LORA}
    if _stamp_ok(folder, stamp):
        return folder
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import load_model

    print(f"  building LoRA adapter {name} into {folder}", file=sys.stderr)
    scratch = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=BENCH_CACHE))
    layers = int(BIG_SPEC["num_hidden_layers"])
    mx.random.seed(seed)
    model, _ = load_model(base, lazy=True)
    model.freeze()
    linear_to_lora_layers(model, layers, LORA)
    adapters = {}
    for key, value in tree_flatten(model.trainable_parameters()):
        adapters[key] = mx.random.normal(value.shape) * 0.01 if key.endswith("lora_b") else value
    mx.eval(adapters)
    mx.save_safetensors(str(scratch / "adapters.safetensors"), adapters)
    config = {
        "model": str(base),
        "fine_tune_type": "lora",
        "num_layers": layers,
        "lora_parameters": LORA,
    }
    (scratch / "adapter_config.json").write_text(json.dumps(config, indent=2))
    del model, adapters
    _publish(scratch, folder, stamp)
    gc.collect()
    mx.clear_cache()
    return folder


def tiny_blob_set(folder: Path) -> dict[str, Path]:
    """One tiny servable model (config, sharded safetensors index, weights, tokenizer) whose
    files every synthetic HF cache repo links to."""
    sys.path.insert(0, str(REPO / "tests"))
    try:
        from tinymodel import make_tiny_model
    finally:
        sys.path.remove(str(REPO / "tests"))
    make_tiny_model(folder, seed=7)
    raw = (folder / "model.safetensors").read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    names = [name for name in header if name != "__metadata__"]
    index = {"metadata": {}, "weight_map": dict.fromkeys(names, "model.safetensors")}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_file()}


def add_hf_repos(cache: Path, blobs: dict[str, Path], start: int, stop: int) -> None:
    """Repos `models--bench--model-NNNN` in the hub layout: blobs/<sha256> (hard links to one
    shared set of files), snapshots/<40 hex>/<name> -> ../../blobs/<sha256>, refs/main."""
    digests = {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in blobs.items()}
    for i in range(start, stop):
        repo = cache / f"models--bench--model-{i:04d}"
        commit = hashlib.sha1(f"bench-{i}".encode(), usedforsecurity=False).hexdigest()
        (repo / "blobs").mkdir(parents=True, exist_ok=True)
        (repo / "refs").mkdir(exist_ok=True)
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir(parents=True, exist_ok=True)
        for name, path in blobs.items():
            blob = repo / "blobs" / digests[name]
            if not blob.exists():
                try:
                    blob.hardlink_to(path)
                except OSError:
                    shutil.copy(path, blob)
            link = snapshot / name
            if not link.is_symlink():
                link.symlink_to(Path("..") / ".." / "blobs" / digests[name])
        (repo / "refs" / "main").write_text(commit)


def vision_model() -> Path:
    """Figure v's Qwen2-VL (VLM_SPEC), built once with `tests/visionmodel.py`."""
    folder = BENCH_CACHE / "qwen2-vl-bench"
    stamp = {"version": VLM_VERSION, "spec": VLM_SPEC}
    if _stamp_ok(folder, stamp):
        return folder
    sys.path.insert(0, str(REPO / "tests"))  # the tests' model builders
    from visionmodel import make_tiny_vlm

    print(f"  building the vision model into {folder}", file=sys.stderr)
    BENCH_CACHE.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".qwen2-vl-bench-", dir=BENCH_CACHE))
    make_tiny_vlm(scratch, **VLM_SPEC)
    gc.collect()
    _publish(scratch, folder, stamp)
    return folder

"""Convert a llama-architecture GGUF file into an MLX model folder that `mlx_lm.load` opens.

`gguf_reader` reads the file with llama.cpp's `gguf` package and hands each tensor back as the
arrays MLX uses: F32/F16 as they are, Q4_0, Q4_1 and Q8_0 repacked (not dequantized) as MLX
affine quantization (`.weight` uint32 + `.scales` + `.biases`, group size 32). This module renames
those tensors to mlx_lm's llama names, writes a matching `config.json`, and has `gguf_tokenizer`
rebuild a Hugging Face `tokenizer.json` from the GGUF tokenizer metadata.

Everything runs on the calling thread (the CLI calls it; the engine thread is not involved). The
result is written to a hidden sibling folder and renamed into place at the end, so `out_dir` is
either absent or complete, and two converters racing for the same folder cannot mix their files.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import shutil
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
from tokenizers import Tokenizer

from mlxrouter.discovery import CONVERTED_FROM_KEY
from mlxrouter.errors import GGUFConversionError
from mlxrouter.gguf_reader import (
    GROUP_SIZE,
    GGUFContents,
    Metadata,
    part_names,
    read_gguf,
    tensor_arrays,
    tensor_shape,
)
from mlxrouter.gguf_tokenizer import convert_tokenizer, token_ids

__all__ = ["Progress", "convert_gguf", "model_id_for"]

Progress = Callable[[str, float], None]

# GGUF tensor names -> mlx_lm llama module paths.
_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
# `.scales`/`.biases` are the affine quantization parts of a repacked tensor; `.bias` is real.
_SUFFIXES = ("weight", "bias", "scales", "biases")

# `general.file_type` (llama_ftype): whole-file types whose tensors are kept as they are or as
# MLX quantization. Others would be expanded to float16 (four times the size) or are unreadable.
_SUPPORTED_FILE_TYPES = frozenset({0, 1, 2, 3, 7})  # F32, F16, Q4_0, Q4_1, Q8_0
_FILE_TYPE_NAMES = {
    8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S",
    15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 32: "BF16",
}  # fmt: skip
# A trailing llama.cpp quantisation tag: Q4_0, Q4_K_M, IQ4_XS, TQ1_0, F16, BF16, F32...
# Q tags always have an underscore part, so names like "phi-q2" are left alone.
_QUANT_TAG = re.compile(r"[.-](?:[IT]?Q\d+(?:_[0-9A-Z]+)+|B?F(?:16|32))$", re.IGNORECASE)


def model_id_for(file_name: str) -> str:
    """The model id an imported GGUF is served under: its file name without `.gguf` and
    without a trailing quantisation tag (`my-smol.Q4_1.gguf` -> `my-smol`). Pure."""
    name = Path(file_name).name
    if name.lower().endswith(".gguf"):
        name = name[: -len(".gguf")]
    stripped = _QUANT_TAG.sub("", name)
    return stripped or name


def convert_gguf(
    gguf_path: Path,
    out_dir: Path,
    *,
    progress: Progress | None = None,
) -> Path:
    """Convert `gguf_path` into an mlx_lm model folder at `out_dir` and return `out_dir`.

    `progress(stage, fraction)` is called with stages "reading", "weights", "tokenizer" and
    "writing", each from 0.0 to 1.0. Raises GGUFConversionError for anything that is not a
    llama-architecture GGUF with supported tensor types, and when `out_dir` exists and is not
    empty (also when another process fills it while this one converts).
    """
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    name = gguf_path.name

    def report(stage: str, fraction: float) -> None:
        if progress is not None:
            progress(stage, fraction)

    _check_target(out_dir)
    if not gguf_path.is_file():
        raise GGUFConversionError(f"{name}: no such file")

    report("reading", 0.0)
    # The header only: refuse from it before reading (and possibly expanding) gigabytes.
    contents = read_gguf(gguf_path)
    meta = contents.metadata
    file_type = meta.raw.get("general.file_type")
    _check_supported(
        meta.raw.get("general.architecture"),
        int(file_type) if isinstance(file_type, np.integer) else None,
        name,
    )
    _check_supported(meta.string("general.architecture"), None, name)
    report("reading", 1.0)

    weights, config = _convert_weights(contents, report)
    report("tokenizer", 0.0)
    tokenizer_files = convert_tokenizer(meta, context_length=config.get("max_position_embeddings"))
    report("tokenizer", 1.0)
    config.update(token_ids(meta))
    # Where the folder came from, for the model's card (`converted_from`); loaders ignore it.
    config[CONVERTED_FROM_KEY] = "gguf"

    report("writing", 0.0)
    # mkdir (not mkdtemp) so the folder gets the usual umask permissions, not 0700.
    staging = out_dir.parent / f".{out_dir.name}.{uuid.uuid4().hex[:12]}.partial"
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
        mx.save_safetensors(str(staging / "model.safetensors"), weights, {"format": "mlx"})
        report("writing", 0.9)
        _write_json(staging / "config.json", config)
        for filename, content in tokenizer_files.items():
            if isinstance(content, Tokenizer):
                content.save(str(staging / filename))
            else:
                _write_json(staging / filename, content)
    except (OSError, RuntimeError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "write failed"
        raise GGUFConversionError(f"cannot write the model for {out_dir.name}: {reason}") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        # rename(2) replaces an empty directory and refuses a non-empty one, so whichever
        # converter gets here first wins and a later one cannot clobber its result.
        staging.rename(out_dir)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise GGUFConversionError(
            f"{out_dir.name} was created by someone else during the conversion"
        ) from exc
    report("writing", 1.0)
    return out_dir


def _check_target(out_dir: Path) -> None:
    if not out_dir.exists():
        return
    if not out_dir.is_dir() or any(out_dir.iterdir()):
        raise GGUFConversionError(f"{out_dir.name} already exists and is not empty")


def _check_supported(arch: object, file_type: object, name: str) -> None:
    if arch is not None and arch != "llama":
        raise GGUFConversionError(
            f"{name}: architecture {arch!r} is not supported (only 'llama' GGUF files are)"
        )
    if isinstance(file_type, int) and file_type not in _SUPPORTED_FILE_TYPES:
        # Their k-quant tensors would have to be expanded to float16 (or cannot be read).
        kind = _FILE_TYPE_NAMES.get(file_type, f"type {file_type}")
        raise GGUFConversionError(
            f"{name}: {kind} quantization is not supported; use an F16, Q8_0, Q4_0 or Q4_1 GGUF"
        )


# --------------------------------------------------------------------------- weights and config


def _convert_weights(
    contents: GGUFContents, report: Progress
) -> tuple[dict[str, mx.array], dict[str, Any]]:
    """Read the tensors under mlx_lm's llama names and derive `config.json` from the metadata."""
    meta = contents.metadata
    name = meta.file_name
    by_name = {tensor.name: tensor for tensor in contents.tensors}
    if "token_embd.weight" not in by_name:
        raise GGUFConversionError(f"{name}: tensor 'token_embd.weight' is missing")

    hidden_size = meta.integer("llama.embedding_length")
    num_heads = meta.integer("llama.attention.head_count")
    head_dim = meta.optional_int("llama.attention.key_length") or hidden_size // num_heads
    rope_dims = meta.optional_int("llama.rope.dimension_count") or head_dim
    if rope_dims != head_dim:
        # mlx_lm's llama rotates the whole head; partial rotary embeddings would be silently wrong.
        raise GGUFConversionError(f"{name}: partial rotary embeddings are not supported")

    # Every array by name, sorted, so the weights are stored in the order they always were.
    parts = sorted((part, t.name) for t in contents.tensors for part in part_names(t))
    for (part, _), (following, _) in itertools.pairwise(parts):
        if part == following:
            raise GGUFConversionError(f"{name}: tensor {part!r} appears twice")
    for part, _ in parts:
        if part != "rope_freqs.weight":
            _mlx_name(part, name)  # refuse other architectures before reading any data

    weights: dict[str, mx.array] = {}
    rope_freqs: np.ndarray | None = None
    read: dict[str, np.ndarray] = {}  # arrays of a tensor whose other arrays came first
    report("weights", 0.0)
    for index, (part, tensor_name) in enumerate(parts):
        if part not in read:
            read.update(tensor_arrays(by_name[tensor_name], name))
        array = read.pop(part)
        if part == "rope_freqs.weight":
            # Llama 3.1+ stores its RoPE scaling as per-frequency factors; mapped to config below.
            rope_freqs = array
        else:
            weights[_mlx_name(part, name)] = mx.array(array)
        report("weights", (index + 1) / len(parts))

    num_layers = meta.integer("llama.block_count")
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "intermediate_size": meta.integer("llama.feed_forward_length"),
        "num_attention_heads": num_heads,
        "num_key_value_heads": meta.optional_int("llama.attention.head_count_kv") or num_heads,
        "head_dim": head_dim,
        "rms_norm_eps": meta.optional_float("llama.attention.layer_norm_rms_epsilon") or 1e-5,
        # The embedding's row count is the real vocabulary size (GGUF vocab_size is optional).
        "vocab_size": tensor_shape(by_name["token_embd.weight"])[0],
        "rope_theta": meta.optional_float("llama.rope.freq_base") or 10000.0,
        # llama.cpp's converter permutes the Q and K rows so that RoPE rotates adjacent pairs
        # (GPT-J style); mlx's "traditional" RoPE is exactly that, so no un-permuting is needed.
        "rope_traditional": True,
        "tie_word_embeddings": "output.weight" not in by_name,
        "attention_bias": any(k.endswith("self_attn.q_proj.bias") for k in weights),
        "mlp_bias": any(k.endswith("mlp.gate_proj.bias") for k in weights),
    }
    context_length = meta.optional_int("llama.context_length")
    if context_length is not None:
        config["max_position_embeddings"] = context_length
    rope_scaling = _rope_scaling(meta, rope_freqs, config["rope_theta"], head_dim)
    if rope_scaling is not None:
        config["rope_scaling"] = rope_scaling

    layers_seen = {k.split(".")[2] for k in weights if k.startswith("model.layers.")}
    if len(layers_seen) != num_layers:
        raise GGUFConversionError(
            f"{name}: metadata says {num_layers} layers but the file holds {len(layers_seen)}"
        )

    quantization = _quantization(weights, name)
    if quantization is not None:
        config["quantization"] = quantization
    return weights, config


def _mlx_name(tensor_name: str, file_name: str) -> str:
    base, _, suffix = tensor_name.rpartition(".")
    parts = base.split(".")
    mapped: str | None = None
    if suffix in _SUFFIXES:
        if len(parts) == 1:
            mapped = _GLOBAL_NAMES.get(base)
        elif len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit():
            layer = _LAYER_NAMES.get(parts[2])
            mapped = None if layer is None else f"model.layers.{int(parts[1])}.{layer}"
    if mapped is None:
        # Anything else (MoE experts, vision towers...) means this is not a plain llama.
        raise GGUFConversionError(
            f"{file_name}: tensor {tensor_name!r} has no llama equivalent; unsupported model"
        )
    return f"{mapped}.{suffix}"


def _quantization(weights: Mapping[str, mx.array], file_name: str) -> dict[str, Any] | None:
    """The `quantization` config: the most common (group_size, bits) plus per-layer exceptions."""
    per_module: dict[str, tuple[int, int]] = {}
    for key, scales in weights.items():
        if not key.endswith(".scales"):
            continue
        module = key.removesuffix(".scales")
        packed = weights.get(f"{module}.weight")
        if packed is None or packed.dtype != mx.uint32:
            raise GGUFConversionError(f"{file_name}: malformed quantized tensor for {module}")
        # in_features = groups * 32 = packed_words * 32 / bits, hence bits = words / groups.
        words, groups = int(packed.shape[-1]), int(scales.shape[-1])
        if groups == 0 or words % groups or words // groups not in (2, 3, 4, 5, 6, 8):
            raise GGUFConversionError(f"{file_name}: unsupported quantization for {module}")
        per_module[module] = (GROUP_SIZE, words // groups)
    if not per_module:
        return None
    (group_size, bits), _ = Counter(per_module.values()).most_common(1)[0]
    quantization: dict[str, Any] = {"group_size": group_size, "bits": bits}
    for module, (module_group, module_bits) in sorted(per_module.items()):
        if (module_group, module_bits) != (group_size, bits):
            quantization[module] = {"group_size": module_group, "bits": module_bits}
    return quantization


def _rope_scaling(
    meta: Metadata, rope_freqs: np.ndarray | None, base: float, head_dim: int
) -> dict[str, Any] | None:
    name = meta.file_name
    scaling_type = meta.string("llama.rope.scaling.type", "none")
    if scaling_type == "linear":
        factor = meta.optional_float("llama.rope.scaling.factor")
        if not factor:
            raise GGUFConversionError(f"{name}: linear RoPE scaling without a factor")
        return {"type": "linear", "factor": factor}
    if scaling_type != "none":
        raise GGUFConversionError(f"{name}: RoPE scaling {scaling_type!r} is not supported")
    if rope_freqs is None:
        return None
    # The file only keeps the resulting per-frequency divisors; recognise the Llama 3 recipe
    # with its published parameters rather than guessing at anything else.
    factors = [float(x) for x in rope_freqs.astype(np.float32).reshape(-1).tolist()]
    if all(math.isclose(f, 1.0) for f in factors):
        return None
    for original in (8192, 4096, 2048):
        candidate = {
            "rope_type": "llama3",
            "factor": max(factors),
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": original,
        }
        expected = _llama3_factors(candidate, base, head_dim)
        if len(expected) == len(factors) and all(
            math.isclose(a, b, rel_tol=1e-3) for a, b in zip(expected, factors, strict=True)
        ):
            return candidate
    raise GGUFConversionError(f"{name}: its RoPE frequency factors match no known scaling")


def _llama3_factors(scaling: Mapping[str, Any], base: float, dims: int) -> list[float]:
    """Per-frequency divisors of Llama 3 RoPE scaling, as llama.cpp's converter computes them."""
    factor = float(scaling["factor"])
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    original = float(scaling["original_max_position_embeddings"])
    result = []
    for i in range(0, dims, 2):
        wavelen = 2 * math.pi * base ** (i / dims)
        if wavelen < original / high:
            result.append(1.0)
        elif wavelen > original / low:
            result.append(factor)
        else:
            smooth = (original / wavelen - low) / (high - low)
            result.append(1 / ((1 - smooth) / factor + smooth))
    return result


def _write_json(path: Path, content: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

"""Convert a llama-architecture GGUF file into an MLX model folder that `mlx_lm.load` opens.

`mx.load` does the heavy lifting: it reads F32/F16 tensors as they are and hands Q4_0, Q4_1 and
Q8_0 tensors back already repacked as MLX affine quantization (`.weight` uint32 + `.scales` +
`.biases`, group size 32). This module renames those tensors to mlx_lm's llama names, writes a
matching `config.json`, and rebuilds a Hugging Face `tokenizer.json` from the GGUF tokenizer
metadata with the `tokenizers` library.

Everything runs on the calling thread (the CLI calls it; the engine thread is not involved). The
result is written to a hidden sibling folder and renamed into place at the end, so `out_dir` is
either absent or complete, and two converters racing for the same folder cannot mix their files.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import struct
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import mlx.core as mx
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)

from mlxrouter.errors import GGUFConversionError

__all__ = ["Progress", "convert_gguf", "model_id_for"]

log = logging.getLogger(__name__)

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
# `.scales`/`.biases` are the affine quantization parts mx.load adds; `.bias` is a real bias.
_SUFFIXES = ("weight", "bias", "scales", "biases")

# GGUF quantized blocks (Q4_0, Q4_1, Q8_0) all hold 32 values, and mx.load keeps that grouping.
_GGUF_GROUP_SIZE = 32

# GGUF metadata value types: fixed-size scalars, strings and arrays.
_GGUF_SCALARS = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
    12: "<d",
}  # fmt: skip
_GGUF_STRING, _GGUF_ARRAY = 8, 9
_MAX_HEADER_STRING = 1 << 24
# `general.file_type` (llama_ftype): whole-file types whose tensors mx.load keeps as they are or
# as MLX quantization. Others would come back dequantized to float16, four times the size.
_SUPPORTED_FILE_TYPES = frozenset({0, 1, 2, 3, 7})  # F32, F16, Q4_0, Q4_1, Q8_0
_FILE_TYPE_NAMES = {
    8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S",
    15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 32: "BF16",
}  # fmt: skip

# llama.cpp token types (llama_token_type).
_TOKEN_NORMAL, _TOKEN_UNKNOWN, _TOKEN_CONTROL, _TOKEN_USER_DEFINED = 1, 2, 3, 4

# Pre-tokenizer split patterns, keyed by `tokenizer.ggml.pre`, as llama.cpp and the original
# Hugging Face tokenizers spell them. The merges were learned on text split this way, so the
# wrong split gives valid but different (worse) token sequences.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT2_PRES = frozenset({"default", "gpt-2", "gpt2", "mpt", "olmo", "jais"})
# StarCoder-style: every digit on its own, then the GPT-2 split (SmolLM2 is one of these).
_DIGIT_PRES = frozenset({"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone"})
_LLAMA3_PRES = frozenset({"llama3", "llama-v3", "llama-bpe", "falcon3", "dbrx", "smaug-bpe"})
# A trailing llama.cpp quantisation tag: Q4_0, Q4_K_M, IQ4_XS, TQ1_0, F16, BF16, F32...
# Q tags always have an underscore part, so names like "phi-q2" are left alone.
_QUANT_TAG = re.compile(r"[.-](?:[IT]?Q\d+(?:_[0-9A-Z]+)+|B?F(?:16|32))$", re.IGNORECASE)

_QWEN2_PRES = frozenset({"qwen2", "stablelm2", "deepseek-r1-qwen", "megrez"})
_TEKKEN_PRES = frozenset({"tekken"})


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
    llama-architecture GGUF with tensor types mx.load understands, and when `out_dir` exists and
    is not empty (also when another process fills it while this one converts).
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
    # Refuse from the header before mx.load reads (and possibly dequantizes) gigabytes.
    header = _peek_header(gguf_path)
    _check_supported(header.get("general.architecture"), header.get("general.file_type"), name)
    tensors, metadata = _read(gguf_path)
    report("reading", 1.0)

    meta = _Metadata(metadata, name)
    _check_supported(meta.string("general.architecture"), None, name)

    weights, config = _convert_weights(tensors, meta, report)
    report("tokenizer", 0.0)
    tokenizer_files = _convert_tokenizer(meta, context_length=config.get("max_position_embeddings"))
    report("tokenizer", 1.0)
    config.update(_token_ids(meta))

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
        # mx.load would silently dequantize these to float16 (or fail on the newer ones).
        kind = _FILE_TYPE_NAMES.get(file_type, f"type {file_type}")
        raise GGUFConversionError(
            f"{name}: {kind} quantization is not supported; use an F16, Q8_0, Q4_0 or Q4_1 GGUF"
        )


def _peek_header(gguf_path: Path) -> dict[str, Any]:
    """`general.architecture` and `general.file_type` from the GGUF header, read cheaply.

    Stops as soon as both are seen (llama.cpp writes them first), skipping arrays unread.
    Returns what it found; raises GGUFConversionError when the file is not a GGUF at all.
    """
    wanted = {"general.architecture", "general.file_type"}
    found: dict[str, Any] = {}
    not_gguf = GGUFConversionError(f"{gguf_path.name} is not a GGUF file")
    try:
        with gguf_path.open("rb") as f:

            def read(fmt: str) -> Any:
                size = struct.calcsize(fmt)
                data = f.read(size)
                if len(data) != size:
                    raise not_gguf
                return struct.unpack(fmt, data)[0]

            def read_str() -> bytes:
                length = read("<Q")
                if length > _MAX_HEADER_STRING:
                    raise not_gguf
                data = f.read(length)
                if len(data) != length:
                    raise not_gguf
                return data

            if f.read(4) != b"GGUF" or read("<I") not in (2, 3):
                raise not_gguf
            _tensor_count, kv_count = read("<Q"), read("<Q")
            for _ in range(kv_count):
                key = read_str().decode("utf-8", "replace")
                value_type = read("<I")
                if value_type == _GGUF_STRING:
                    value: Any = read_str().decode("utf-8", "replace")
                elif value_type == _GGUF_ARRAY:
                    item_type, count = read("<I"), read("<Q")
                    if item_type == _GGUF_STRING:
                        for _ in range(count):
                            f.seek(read("<Q"), 1)
                    elif item_type in _GGUF_SCALARS:
                        f.seek(count * struct.calcsize(_GGUF_SCALARS[item_type]), 1)
                    else:
                        return found  # nested arrays: leave the rest to mx.load
                    continue
                elif value_type in _GGUF_SCALARS:
                    value = read(_GGUF_SCALARS[value_type])
                else:
                    raise not_gguf
                if key in wanted:
                    found[key] = value
                    if wanted <= found.keys():
                        break
    except OSError as exc:
        raise GGUFConversionError(f"{gguf_path.name}: cannot read the file") from exc
    return found


def _read(gguf_path: Path) -> tuple[dict[str, mx.array], dict[str, Any]]:
    try:
        loaded = mx.load(str(gguf_path), format="gguf", return_metadata=True)
    except (RuntimeError, ValueError, OSError) as exc:
        # mx.load's messages name the full path and the C++ reason; neither is for users.
        raise GGUFConversionError(
            f"{gguf_path.name} is not a GGUF file mlx can read "
            "(supported tensor types: F32, F16, Q4_0, Q4_1, Q8_0)"
        ) from exc
    if not isinstance(loaded, tuple):  # return_metadata=True always gives a pair
        raise GGUFConversionError(f"{gguf_path.name} is not a GGUF file mlx can read")
    tensors, metadata = loaded
    return dict(tensors), dict(metadata)


class _Metadata:
    """Typed access to GGUF metadata as mx.load returns it (scalars come back as 0-d arrays)."""

    def __init__(self, raw: Mapping[str, Any], file_name: str) -> None:
        self.raw = raw
        self.file_name = file_name

    def _missing(self, key: str) -> GGUFConversionError:
        return GGUFConversionError(f"{self.file_name}: metadata key {key!r} is missing")

    def _bad(self, key: str) -> GGUFConversionError:
        return GGUFConversionError(f"{self.file_name}: metadata key {key!r} has an unexpected type")

    def string(self, key: str, default: str | None = None) -> str:
        value = self.raw.get(key, default)
        if value is None:
            raise self._missing(key)
        if not isinstance(value, str):
            raise self._bad(key)
        return value

    def scalar(self, key: str) -> float | int | bool | None:
        value = self.raw.get(key)
        if value is None:
            return None
        if not isinstance(value, mx.array) or value.ndim != 0:
            raise self._bad(key)
        item = value.item()
        if not isinstance(item, (int, float, bool)):
            raise self._bad(key)
        return item

    def integer(self, key: str) -> int:
        value = self.optional_int(key)
        if value is None:
            raise self._missing(key)
        return value

    def optional_int(self, key: str) -> int | None:
        value = self.scalar(key)
        if value is None:
            return None
        if isinstance(value, float) and not value.is_integer():
            raise self._bad(key)
        return int(value)

    def optional_float(self, key: str) -> float | None:
        value = self.scalar(key)
        if value is None:
            return None
        if self.raw[key].dtype == mx.float32:
            # Shortest decimal that is the same float32, so config.json says 1e-05 rather
            # than 9.999999747378752e-06.
            for digits in range(1, 10):
                short = float(f"{value:.{digits}g}")
                if mx.array(short, dtype=mx.float32).item() == value:
                    return short
        return float(value)

    def optional_bool(self, key: str) -> bool | None:
        value = self.scalar(key)
        return None if value is None else bool(value)

    def strings(self, key: str) -> list[str]:
        value = self.raw.get(key)
        if value is None:
            raise self._missing(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._bad(key)
        return value

    def numbers(self, key: str) -> list[Any] | None:
        value = self.raw.get(key)
        if value is None:
            return None
        if not isinstance(value, mx.array) or value.ndim != 1:
            raise self._bad(key)
        numbers = value.tolist()
        if not isinstance(numbers, list):
            raise self._bad(key)
        return numbers


# --------------------------------------------------------------------------- weights and config


def _convert_weights(
    tensors: Mapping[str, mx.array], meta: _Metadata, report: Progress
) -> tuple[dict[str, mx.array], dict[str, Any]]:
    """Rename the tensors to mlx_lm's llama names and derive `config.json` from the metadata."""
    name = meta.file_name
    if "token_embd.weight" not in tensors:
        raise GGUFConversionError(f"{name}: tensor 'token_embd.weight' is missing")

    hidden_size = meta.integer("llama.embedding_length")
    num_heads = meta.integer("llama.attention.head_count")
    head_dim = meta.optional_int("llama.attention.key_length") or hidden_size // num_heads
    rope_dims = meta.optional_int("llama.rope.dimension_count") or head_dim
    if rope_dims != head_dim:
        # mlx_lm's llama rotates the whole head; partial rotary embeddings would be silently wrong.
        raise GGUFConversionError(f"{name}: partial rotary embeddings are not supported")

    weights: dict[str, mx.array] = {}
    rope_freqs: mx.array | None = None
    items = sorted(tensors.items())
    report("weights", 0.0)
    for index, (tensor_name, array) in enumerate(items):
        if tensor_name == "rope_freqs.weight":
            # Llama 3.1+ stores its RoPE scaling as per-frequency factors; mapped to config below.
            rope_freqs = array
        else:
            weights[_mlx_name(tensor_name, name)] = array
        report("weights", (index + 1) / len(items))

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
        "vocab_size": int(tensors["token_embd.weight"].shape[0]),
        "rope_theta": meta.optional_float("llama.rope.freq_base") or 10000.0,
        # llama.cpp's converter permutes the Q and K rows so that RoPE rotates adjacent pairs
        # (GPT-J style); mlx's "traditional" RoPE is exactly that, so no un-permuting is needed.
        "rope_traditional": True,
        "tie_word_embeddings": "output.weight" not in tensors,
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
        per_module[module] = (_GGUF_GROUP_SIZE, words // groups)
    if not per_module:
        return None
    (group_size, bits), _ = Counter(per_module.values()).most_common(1)[0]
    quantization: dict[str, Any] = {"group_size": group_size, "bits": bits}
    for module, (module_group, module_bits) in sorted(per_module.items()):
        if (module_group, module_bits) != (group_size, bits):
            quantization[module] = {"group_size": module_group, "bits": module_bits}
    return quantization


def _rope_scaling(
    meta: _Metadata, rope_freqs: mx.array | None, base: float, head_dim: int
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
    listed = rope_freqs.astype(mx.float32).reshape(-1).tolist()
    factors = [float(x) for x in listed if isinstance(x, float)] if isinstance(listed, list) else []
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


# --------------------------------------------------------------------------- tokenizer


def _token_ids(meta: _Metadata) -> dict[str, Any]:
    """bos/eos/pad ids for config.json; end-of-turn tokens count as eos so generation stops."""
    ids: dict[str, Any] = {}
    bos = meta.optional_int("tokenizer.ggml.bos_token_id")
    if bos is not None:
        ids["bos_token_id"] = bos
    eos = [
        token
        for key in ("eos_token_id", "eot_token_id", "eom_token_id")
        if (token := meta.optional_int(f"tokenizer.ggml.{key}")) is not None
    ]
    eos = list(dict.fromkeys(eos))
    if eos:
        ids["eos_token_id"] = eos[0] if len(eos) == 1 else eos
    pad = meta.optional_int("tokenizer.ggml.padding_token_id")
    if pad is not None:
        ids["pad_token_id"] = pad
    return ids


def _convert_tokenizer(
    meta: _Metadata, *, context_length: int | None
) -> dict[str, Tokenizer | dict[str, Any]]:
    """tokenizer.json (+ its config files) rebuilt from the `tokenizer.ggml.*` metadata."""
    name = meta.file_name
    kind = meta.string("tokenizer.ggml.model")
    tokens = meta.strings("tokenizer.ggml.tokens")
    types = meta.numbers("tokenizer.ggml.token_type") or [_TOKEN_NORMAL] * len(tokens)
    if len(types) != len(tokens):
        raise GGUFConversionError(f"{name}: token types do not match the vocabulary")
    pre = meta.string("tokenizer.ggml.pre", "default")
    if kind not in ("gpt2", "llama"):
        raise GGUFConversionError(
            f"{name}: tokenizer model {kind!r} is not supported (only 'gpt2' and 'llama')"
        )

    try:
        if kind == "gpt2":
            tokenizer = _byte_level_bpe(meta, tokens, pre)
            add_bos_default = pre in _LLAMA3_PRES  # what llama.cpp assumes when the flag is absent
        else:
            tokenizer = _sentencepiece_bpe(meta, tokens, types)
            add_bos_default = True
        # Control tokens must stay whole and be skippable; user-defined ones only stay whole.
        specials = [
            AddedToken(token, special=True, normalized=False)
            for token, kind_id in zip(tokens, types, strict=True)
            if kind_id in (_TOKEN_CONTROL, _TOKEN_UNKNOWN)
        ]
        plain = [
            AddedToken(token, special=False, normalized=False)
            for token, kind_id in zip(tokens, types, strict=True)
            if kind_id == _TOKEN_USER_DEFINED
        ]
        tokenizer.add_special_tokens(specials)
        tokenizer.add_tokens(plain)
    except GGUFConversionError:
        raise
    except Exception as exc:  # tokenizers raises bare Exception from Rust
        raise GGUFConversionError(f"{name}: the tokenizer metadata is inconsistent") from exc

    def token(key: str) -> str | None:
        index = meta.optional_int(f"tokenizer.ggml.{key}")
        return tokens[index] if index is not None and 0 <= index < len(tokens) else None

    special_map = {
        role: value
        for role, key in (
            ("bos_token", "bos_token_id"),
            ("eos_token", "eos_token_id"),
            ("unk_token", "unknown_token_id"),
            ("pad_token", "padding_token_id"),
        )
        if (value := token(key)) is not None
    }
    add_bos = meta.optional_bool("tokenizer.ggml.add_bos_token")
    add_bos = add_bos_default if add_bos is None else add_bos
    add_eos = bool(meta.optional_bool("tokenizer.ggml.add_eos_token"))
    tokenizer.post_processor = _post_processor(
        special_map, tokenizer, add_bos=add_bos, add_eos=add_eos, byte_level=kind == "gpt2"
    )

    tokenizer_config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special_map,
        "add_bos_token": add_bos and "bos_token" in special_map,
        "add_eos_token": add_eos and "eos_token" in special_map,
        "clean_up_tokenization_spaces": False,
    }
    if context_length is not None:
        tokenizer_config["model_max_length"] = context_length
    chat_template = meta.raw.get("tokenizer.chat_template")
    if isinstance(chat_template, str) and chat_template:
        tokenizer_config["chat_template"] = chat_template
    else:
        log.warning("%s has no chat template; chat requests will use mlx_lm's fallback", name)

    generation_config = _token_ids(meta)
    return {
        "tokenizer.json": tokenizer,
        "tokenizer_config.json": tokenizer_config,
        "special_tokens_map.json": dict(special_map),
        "generation_config.json": generation_config,
    }


def _byte_level_bpe(meta: _Metadata, tokens: Sequence[str], pre: str) -> Tokenizer:
    """GPT-2 style byte-level BPE; GGUF stores tokens already in the byte-to-unicode spelling."""
    merges: list[tuple[str, str]] = []
    for merge in meta.strings("tokenizer.ggml.merges"):
        # Byte-level tokens spell a space as "Ġ", so the one real space separates the pair.
        left, _, right = merge.partition(" ")
        if not left or not right:
            raise GGUFConversionError(f"{meta.file_name}: malformed BPE merge {merge!r}")
        merges.append((left, right))
    # Every token keeps its own id, including control tokens spelled outside the byte alphabet,
    # so adding them as special tokens below reuses their ids instead of appending new ones.
    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=merges,
            fuse_unk=False,
            byte_fallback=False,
            # Llama 3 takes whole words straight from the vocabulary before merging.
            ignore_merges=pre in _LLAMA3_PRES,
        )
    )
    if pre in _DIGIT_PRES:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    elif pre in _LLAMA3_PRES or pre in _QWEN2_PRES or pre in _TEKKEN_PRES:
        split = (
            _LLAMA3_SPLIT
            if pre in _LLAMA3_PRES
            else _QWEN2_SPLIT
            if pre in _QWEN2_PRES
            else _TEKKEN_SPLIT
        )
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        if pre in _QWEN2_PRES:
            tokenizer.normalizer = normalizers.NFC()
    else:
        if pre not in _GPT2_PRES:
            # llama.cpp also falls back to a generic split for names it does not know.
            log.warning("unknown GGUF pre-tokenizer %r; using the GPT-2 split", pre)
        # ByteLevel's built-in regex is the GPT-2 split.
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _sentencepiece_bpe(meta: _Metadata, tokens: Sequence[str], types: Sequence[int]) -> Tokenizer:
    """A SentencePiece BPE vocabulary (Llama 1/2, Mistral...) as an HF BPE with byte fallback.

    GGUF keeps no merges for these, only per-token scores; as in transformers' converter the
    merges are every split of a token into two vocabulary pieces, ranked by the token's score.
    """
    scores = meta.numbers("tokenizer.ggml.scores")
    if scores is None or len(scores) != len(tokens):
        raise GGUFConversionError(f"{meta.file_name}: sentencepiece scores are missing")
    vocab = {token: index for index, token in enumerate(tokens)}
    mergeable = {token for token, kind in zip(tokens, types, strict=True) if kind == _TOKEN_NORMAL}
    ranked: list[tuple[float, int, int, str, str]] = []
    for token, score in zip(tokens, scores, strict=True):
        if token not in mergeable or len(token) < 2:
            continue
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in mergeable and right in mergeable:
                ranked.append((-float(score), vocab[left], vocab[right], left, right))
    ranked.sort()
    merges = [(left, right) for _, _, _, left, right in ranked]

    unk_id = meta.optional_int("tokenizer.ggml.unknown_token_id")
    unk = tokens[unk_id] if unk_id is not None and 0 <= unk_id < len(tokens) else None
    tokenizer = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True)
    )
    add_prefix = meta.optional_bool("tokenizer.ggml.add_space_prefix")
    add_prefix = True if add_prefix is None else add_prefix
    # The "legacy" Llama layout: llama.cpp also puts the prefix space after special tokens.
    steps: list[normalizers.Normalizer] = [normalizers.Replace(" ", "\u2581")]
    if add_prefix:
        steps.insert(0, normalizers.Prepend("\u2581"))
    tokenizer.normalizer = normalizers.Sequence(steps)
    # This exact decoder shape is what mlx_lm recognises for its SentencePiece streaming decoder.
    decode_steps: list[decoders.Decoder] = [
        decoders.Replace("\u2581", " "),
        decoders.ByteFallback(),
        decoders.Fuse(),
    ]
    if add_prefix:
        decode_steps.append(decoders.Strip(" ", 1, 0))
    tokenizer.decoder = decoders.Sequence(decode_steps)
    return tokenizer


def _post_processor(
    special_map: Mapping[str, str],
    tokenizer: Tokenizer,
    *,
    add_bos: bool,
    add_eos: bool,
    byte_level: bool,
) -> processors.PostProcessor | None:
    bos, eos = special_map.get("bos_token"), special_map.get("eos_token")
    add_bos, add_eos = add_bos and bos is not None, add_eos and eos is not None
    if not add_bos and not add_eos:
        return processors.ByteLevel(trim_offsets=False) if byte_level else None
    single = " ".join(
        [*([f"{bos}:0"] if add_bos else []), "$A:0", *([f"{eos}:0"] if add_eos else [])]
    )
    pair = " ".join(
        [single, *([f"{bos}:1"] if add_bos else []), "$B:1", *([f"{eos}:1"] if add_eos else [])]
    )
    used = [t for t, on in ((bos, add_bos), (eos, add_eos)) if on and t is not None]
    return processors.TemplateProcessing(
        single=single,
        pair=pair,
        special_tokens=[(t, tokenizer.token_to_id(t)) for t in used],
    )


def _write_json(path: Path, content: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

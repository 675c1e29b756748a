"""Read a GGUF file with the `gguf` package (llama.cpp's own reader) into numpy arrays.

`gguf.GGUFReader` parses the header, the metadata and the tensor infos, and maps the tensor data
lazily, so opening a file reads no weights. This module turns its fields into plain values
(`Metadata`) and each tensor, when asked, into the arrays `mx.load(format="gguf")` gave for it
when the converter was built on that, bit for bit:

- F32, F16, I8, I16 and I32 as they are;
- Q4_0, Q4_1 and Q8_0 repacked, without dequantizing, into MLX affine quantization: a uint32
  `.weight`, float16 `.scales` and `.biases`, one group per GGUF block of 32 values;
- BF16, Q2_K, Q4_K and Q6_K expanded to float16 with `gguf.quants`. (For Q4_K only, this is
  not what mx.load gave: its bundled gguflib reuses one sub-block's scale for the next one;
  `gguf.quants` follows llama.cpp.)

Any other tensor type is refused. Nothing here imports mlx; the converter turns the arrays into
MLX arrays one tensor at a time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType, ReaderField
from gguf.gguf_reader import ReaderTensor
from gguf.quants import dequantize

from mlxrouter.errors import GGUFConversionError

__all__ = ["GGUFContents", "Metadata", "part_names", "read_gguf", "tensor_arrays", "tensor_shape"]

_Q = GGMLQuantizationType
#: Kept exactly as stored.
_PLAIN = frozenset({_Q.F32, _Q.F16, _Q.I8, _Q.I16, _Q.I32})
#: Repacked into MLX quantization: bits per value. Every block holds 32 values.
_MLX_BITS = {_Q.Q4_0: 4, _Q.Q4_1: 4, _Q.Q8_0: 8}
#: Expanded to float16, as mx.load did (other types it could not read at all).
_EXPANDED = frozenset({_Q.BF16, _Q.Q2_K, _Q.Q4_K, _Q.Q6_K})
GROUP_SIZE = 32
#: Blocks (or, for expanded tensors, values / 32) handled at a time, to bound temporary memory.
_CHUNK_BLOCKS = 1 << 20

#: Stands in for values the converter cannot use (arrays of arrays).
_UNREADABLE = object()


class _TruncatedError(ValueError):
    """The file ends before a field or a tensor does."""


class _Reader(GGUFReader):
    """GGUFReader, faster, and refusing to read past the end of the file.

    The reader maps the file as an `np.memmap` and slices it once per field, array item and
    tensor; every slice of a memmap is another memmap, whose bookkeeping dominates the parse
    (SmolLM2's 49k-token vocabulary: 3.5 s, against 0.7 s over a plain ndarray view of the same
    mapping). Slicing past the end gives short arrays; the reader would then fail later with a
    less clear error or, for a corrupt array length, loop over empty slices for a very long time.
    `data` and `_get` are the reader's one access path to the file; should a later release rename
    them, these two overrides go unused and the reader still works, only slower.
    """

    @property  # type: ignore[override]  # GGUFReader declares the attribute as an np.memmap
    def data(self) -> npt.NDArray[Any]:
        return self._plain

    @data.setter
    def data(self, value: npt.NDArray[Any]) -> None:
        # A plain view keeps the mapping alive through `.base`; nothing here writes to it.
        self._plain = np.asarray(value)

    def _get(
        self,
        offset: int,
        dtype: npt.DTypeLike,
        count: int = 1,
        override_order: Literal["I", "S", "<"] | None = None,
    ) -> npt.NDArray[Any]:
        array = super()._get(offset, dtype, count, override_order)
        if len(array) != int(count):
            raise _TruncatedError
        return array


class Metadata:
    """Typed access to GGUF metadata; errors name the file and the key.

    `raw` holds strings as `str`, scalars as numpy scalars (so float32 stays distinguishable from
    float64) and arrays as lists.
    """

    def __init__(self, raw: Mapping[str, object], file_name: str) -> None:
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
        if not isinstance(value, np.generic):
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
        if isinstance(self.raw[key], np.float32):
            # Shortest decimal that is the same float32, so config.json says 1e-05 rather
            # than 9.999999747378752e-06.
            for digits in range(1, 10):
                short = float(f"{value:.{digits}g}")
                if float(np.float32(short)) == value:
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
        if not isinstance(value, list) or any(isinstance(v, str) for v in value):
            raise self._bad(key)
        return value


@dataclass(frozen=True, slots=True)
class GGUFContents:
    """An opened GGUF file: its metadata, and its tensors with their data still on disk."""

    metadata: Metadata
    tensors: list[ReaderTensor]


def read_gguf(path: Path) -> GGUFContents:
    """Parse the header of the GGUF file at `path`; no tensor data is read yet."""
    name = path.name
    try:
        reader = _Reader(path)
    except OSError as exc:
        raise GGUFConversionError(f"{name}: cannot read the file") from exc
    except (ValueError, KeyError, IndexError, OverflowError, TypeError) as exc:
        # Not a GGUF, a version or value type the reader does not know, or cut short.
        raise GGUFConversionError(
            f"{name} is not a GGUF file, or it is damaged or incomplete"
        ) from exc
    if reader.byte_order != "I":
        raise GGUFConversionError(f"{name}: big-endian GGUF files are not supported")
    raw: dict[str, object] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue  # the reader's own entries for the header (version, counts)
        try:
            raw[key] = _field_value(field)
        except UnicodeDecodeError as exc:
            raise GGUFConversionError(f"{name}: metadata key {key!r} is not UTF-8") from exc
    return GGUFContents(Metadata(raw, name), list(reader.tensors))


def _field_value(field: ReaderField) -> object:
    kinds = field.types
    if not kinds:
        return _UNREADABLE
    if kinds[0] == GGUFValueType.ARRAY:
        # [ARRAY, item type]; an empty array has no item type, a nested one more than one.
        return field.contents() if len(kinds) <= 2 else _UNREADABLE
    if kinds[0] == GGUFValueType.STRING:
        return field.contents()
    scalar: np.generic = field.parts[-1][0]  # keeps the stored width (float32 vs float64)
    return scalar


def tensor_shape(tensor: ReaderTensor) -> tuple[int, ...]:
    """The tensor's shape in numpy (row-major) order; GGUF lists dimensions innermost first."""
    return tuple(int(d) for d in reversed(tensor.shape.tolist()))


def part_names(tensor: ReaderTensor) -> list[str]:
    """The names of the arrays `tensor_arrays` makes for `tensor`, without reading any data."""
    if tensor.tensor_type in _MLX_BITS and tensor.name.endswith(".weight"):
        base = tensor.name.removesuffix(".weight")
        return [f"{base}.weight", f"{base}.scales", f"{base}.biases"]
    return [tensor.name]


def tensor_arrays(tensor: ReaderTensor, file_name: str) -> dict[str, np.ndarray]:
    """Read `tensor` and return its arrays by name (see the module docstring)."""
    kind = tensor.tensor_type
    if kind in _PLAIN:
        return {tensor.name: np.asarray(tensor.data)}
    if kind in _MLX_BITS:
        return _repack(tensor, file_name)
    if kind in _EXPANDED:
        return {tensor.name: _expand(tensor)}
    raise GGUFConversionError(
        f"{file_name}: tensor {tensor.name!r} is {kind.name}, which is not supported "
        "(supported tensor types: F32, F16, Q4_0, Q4_1, Q8_0)"
    )


def _repack(tensor: ReaderTensor, file_name: str) -> dict[str, np.ndarray]:
    """Q4_0/Q4_1/Q8_0 blocks as MLX affine quantization: value = q * scale + bias.

    Each block is a float16 scale `d` (Q4_1: then a float16 minimum `m`) and 32 quants. Q4_0
    means (q - 8) * d, so the bias is -8 * d; Q8_0 stores signed bytes, q * d, which become
    unsigned (q + 128) with bias -128 * d; Q4_1 is q * d + m already. GGUF puts quant j of a
    4-bit block in the low nibble of byte j (j < 16) or the high nibble of byte j - 16; MLX packs
    values in order, two to a byte, low nibble first.
    """
    kind, shape = tensor.tensor_type, tensor_shape(tensor)
    if not tensor.name.endswith(".weight") or shape[-1] % GROUP_SIZE:
        raise GGUFConversionError(
            f"{file_name}: tensor {tensor.name!r} has no llama equivalent; unsupported model"
        )
    bits, block_bytes = _MLX_BITS[kind], GGML_QUANT_SIZES[kind][1]
    blocks = tensor.data.reshape(-1, block_bytes)
    count = blocks.shape[0]
    packed = np.empty((count, GROUP_SIZE * bits // 8), dtype=np.uint8)
    scales = np.empty((count, 1), dtype=np.float16)
    biases = np.empty((count, 1), dtype=np.float16)
    for start in range(0, count, _CHUNK_BLOCKS):
        stop = min(start + _CHUNK_BLOCKS, count)
        chunk = np.asarray(blocks[start:stop])  # reads this part of the file
        scale = chunk[:, 0:2].view(np.float16)
        scales[start:stop] = scale
        if kind == _Q.Q8_0:
            biases[start:stop] = scale * np.float16(-128)
            packed[start:stop] = chunk[:, 2:] ^ np.uint8(0x80)
            continue
        if kind == _Q.Q4_1:
            biases[start:stop] = chunk[:, 2:4].view(np.float16)
            quants = chunk[:, 4:]
        else:
            biases[start:stop] = scale * np.float16(-8)
            quants = chunk[:, 2:]
        values = np.concatenate([quants & np.uint8(0x0F), quants >> np.uint8(4)], axis=1)
        packed[start:stop] = values[:, 0::2] | (values[:, 1::2] << np.uint8(4))
    base = tensor.name.removesuffix(".weight")
    rows, width = shape[:-1], shape[-1]
    return {
        f"{base}.weight": packed.view(np.uint32).reshape(*rows, width * bits // 32),
        f"{base}.scales": scales.reshape(*rows, width // GROUP_SIZE),
        f"{base}.biases": biases.reshape(*rows, width // GROUP_SIZE),
    }


def _expand(tensor: ReaderTensor) -> np.ndarray:
    """A BF16 or k-quant tensor dequantized by `gguf.quants`, stored as float16."""
    shape = tensor_shape(tensor)
    out = np.empty(shape, dtype=np.float16)
    out_rows = out.reshape(-1, shape[-1])
    rows = tensor.data.reshape(out_rows.shape[0], -1)
    step = max(1, _CHUNK_BLOCKS * GROUP_SIZE // shape[-1])
    for start in range(0, rows.shape[0], step):
        # float32 -> float16 assignment rounds to nearest even, as mx.load's conversion did.
        out_rows[start : start + step] = dequantize(
            np.asarray(rows[start : start + step]), tensor.tensor_type
        )
    return out

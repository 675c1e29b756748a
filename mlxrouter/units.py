"""Sizes and durations as typed values, parsed once where they enter (config, requests).

`ByteSize` and `Duration` are `int` and `float` subclasses, so arithmetic and comparisons just
work; `Duration.FOREVER` (infinity) is the one spelling of "never expires" (written as a
negative number, "forever", or `null` for `pool.idle_ttl`). `MemoryLimit` is bytes or a share
of the machine's memory, resolved when the machine's size is known. Imports no other project
module.
"""

from __future__ import annotations

import math
import re
from typing import Any, ClassVar

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_FOREVER_WORDS = frozenset({"forever", "never", "inf"})


class ByteSize(int):
    """A size in bytes: `123`, `"8GB"` (powers of 10) or `"512MiB"` (powers of 2)."""

    @classmethod
    def parse(cls, value: str | int) -> ByteSize:
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 0:
                raise ValueError(f"not a size: {value!r} (sizes are not negative)")
            return cls(value)
        if not isinstance(value, str):
            raise TypeError(f"not a size: {value!r}")
        match = _SIZE.match(value)
        if not match:
            raise ValueError(f"not a size: {value!r} (use e.g. '8GB', '512MiB' or 123456)")
        number, unit = float(match.group(1)), (match.group(2) or "").lower()
        prefix = unit[:1] if unit[:1] in "kmgt" else ""
        binary = "i" in unit and prefix
        scale = 1024 ** ("kmgt".index(prefix) + 1) if binary else _UNITS[prefix]
        return cls(int(number * scale))


class Duration(float):
    """Seconds: `30`, `"30s"`, `"10m"`, `"2h"`; negative, `"forever"` or infinity mean forever."""

    FOREVER: ClassVar[Duration]

    @classmethod
    def parse(cls, value: str | float) -> Duration:
        if isinstance(value, bool):
            raise TypeError(f"not a duration: {value!r}")
        if isinstance(value, int | float):
            return cls.FOREVER if value < 0 or math.isinf(value) else cls(value)
        if not isinstance(value, str):
            raise TypeError(f"not a duration: {value!r}")
        text = value.strip().lower()
        if text in _FOREVER_WORDS or text.startswith("-"):
            return cls.FOREVER
        match = _DURATION.match(text)
        if not match:
            raise ValueError(
                f"not a duration: {value!r} (use seconds or e.g. '30s', '10m', '2h', 'forever')"
            )
        return cls(float(match.group(1)) * _SECONDS[match.group(2) or "s"])

    @property
    def forever(self) -> bool:
        return math.isinf(self)


Duration.FOREVER = Duration(math.inf)


class MemoryLimit:
    """A memory budget: bytes (`"8GB"`, `"512MiB"`, 123) or a share of physical memory
    (`"60%"`), which is resolved against the machine's size."""

    __slots__ = ("nbytes", "share")

    def __init__(self, *, nbytes: int | None = None, share: float | None = None) -> None:
        if (nbytes is None) == (share is None):
            raise ValueError("a memory limit is either bytes or a share")
        self.nbytes = nbytes
        self.share = share

    @classmethod
    def parse(cls, value: str | int) -> MemoryLimit:
        if isinstance(value, str) and value.strip().endswith("%"):
            try:
                percent = float(value.strip()[:-1])
            except ValueError:
                raise ValueError(f"not a share of memory: {value!r} (use e.g. '60%')") from None
            if not 0 < percent <= 100:
                raise ValueError(f"a share of memory must be above 0% and at most 100%: {value!r}")
            return cls(share=percent / 100)
        return cls(nbytes=ByteSize.parse(value))

    def resolve(self, total_memory: int | None) -> int | None:
        """Bytes; a share of an unknown memory size is no limit (None)."""
        if self.nbytes is not None:
            return self.nbytes
        assert self.share is not None  # noqa: S101 - one of the two is always set
        return None if total_memory is None else int(total_memory * self.share)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MemoryLimit) and (self.nbytes, self.share) == (
            other.nbytes,
            other.share,
        )

    def __hash__(self) -> int:
        return hash((self.nbytes, self.share))

    def __repr__(self) -> str:
        return f"{self.share:.0%}" if self.share is not None else f"{self.nbytes} bytes"


UNIT_TYPES: dict[type, Any] = {
    ByteSize: ByteSize.parse,
    Duration: Duration.parse,
    MemoryLimit: MemoryLimit.parse,
}


def decode_units(kind: type, value: Any) -> Any:
    """msgspec's `dec_hook`: builds the unit types above from their written forms."""
    parse = UNIT_TYPES.get(kind)
    if parse is None:
        raise NotImplementedError(f"cannot decode {kind}")
    return parse(value)

"""Answered responses kept in memory for `previous_response_id` and GET / DELETE: least
recently used first out, bounded by count and bytes (`responses:` in the config, read at
every put so live edits apply). Event-loop only, so no lock."""

from __future__ import annotations

from collections import OrderedDict

import msgspec

from ...config import ResponsesConfig
from ...errors import ModelNotFoundError
from .schemas import InputItem, Response


class ResponseNotFoundError(ModelNotFoundError, code="response_not_found"):
    """A response id that is not (or no longer) stored: 404."""


class Stored(msgspec.Struct, kw_only=True):
    """A response and the input items it answered (earlier turns included)."""

    response: Response
    input: list[InputItem]


class ResponseStore:
    def __init__(self) -> None:
        self._entries: OrderedDict[str, tuple[Stored, int]] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, stored: Stored, limits: ResponsesConfig) -> None:
        size = len(msgspec.json.encode(stored))
        self.delete(stored.response.id)
        if limits.store_max_count == 0 or size > limits.store_max_bytes:
            return
        self._entries[stored.response.id] = (stored, size)
        self.bytes += size
        while len(self._entries) > limits.store_max_count or self.bytes > limits.store_max_bytes:
            _, (_, dropped) = self._entries.popitem(last=False)
            self.bytes -= dropped

    def get(self, response_id: str, *, param: str | None = None) -> Stored:
        entry = self._entries.get(response_id)
        if entry is None:
            raise ResponseNotFoundError(f"No response found with id '{response_id}'", param=param)
        self._entries.move_to_end(response_id)
        return entry[0]

    def delete(self, response_id: str) -> bool:
        entry = self._entries.pop(response_id, None)
        if entry is not None:
            self.bytes -= entry[1]
        return entry is not None

    def history(self, response_id: str) -> list[InputItem]:
        """A stored response's input then its output, as input items for the next turn."""
        stored = self.get(response_id, param="previous_response_id")
        output = msgspec.convert(
            msgspec.to_builtins(stored.response.output), list[InputItem], strict=False
        )
        return [*stored.input, *output]

"""Answered responses kept in memory for `previous_response_id`, GET / DELETE and the listing
of their input items: least recently used first out, bounded by count and bytes (`responses:`
in the config, read at every put so live edits apply). Event-loop only, so no lock."""

from __future__ import annotations

import uuid
from collections import OrderedDict
from typing import Literal

import msgspec

from ...config import ResponsesConfig
from ...errors import InvalidRequestError, ModelNotFoundError
from .schemas import InputItem, InputItemList, ListedItem, ListedPart, Response

#: id prefixes of input items sent without one (OpenAI's, by item type)
_ID_PREFIXES = {"message": "msg", "function_call": "fc", "function_call_output": "fco"}


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


def with_ids(items: list[InputItem]) -> list[InputItem]:
    """`items`, each with an id (the listing pages by id); those sent without one get one."""
    return [
        item
        if item.id
        else msgspec.structs.replace(
            item, id=f"{_ID_PREFIXES.get(item.type, 'item')}_{uuid.uuid4().hex}"
        )
        for item in items
    ]


def _listed(item: InputItem) -> ListedItem:
    text_type = "output_text" if item.role == "assistant" else "input_text"
    content = item.content
    parts = (
        [ListedPart(type=text_type, text=content)]
        if isinstance(content, str)
        else [ListedPart(type=part.type, text=part.text) for part in content]
        if content is not None
        else None
    )
    output = item.output
    return ListedItem(
        id=item.id or "",
        type=item.type,
        status="completed",
        role=item.role,
        content=parts,
        call_id=item.call_id,
        name=item.name,
        arguments=item.arguments,
        output=output
        if output is None or isinstance(output, str)
        else [ListedPart(type=part.type, text=part.text) for part in output],
    )


def input_item_page(
    stored: Stored, *, limit: int, order: Literal["asc", "desc"], after: str | None
) -> InputItemList:
    """One page of the items a response answered (earlier turns included; `reasoning` items,
    which are not used, left out), newest first with `desc`, after the item `after`."""
    items = [_listed(item) for item in stored.input if item.type != "reasoning"]
    if order == "desc":
        items.reverse()
    start = 0
    if after is not None:
        ids = [item.id for item in items]
        if after not in ids:
            raise InvalidRequestError(f"No input item with id '{after}'", param="after")
        start = ids.index(after) + 1
    page = items[start : start + limit]
    return InputItemList(
        data=page,
        first_id=page[0].id if page else None,
        last_id=page[-1].id if page else None,
        has_more=start + limit < len(items),
    )

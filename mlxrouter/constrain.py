"""JSON-constrained decoding for `response_format`: llguidance works out which tokens keep the
output valid against a JSON schema, and an mlx_lm logits processor masks every other token.
Runs on the engine thread, like the rest of generation.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import llguidance
import llguidance.hf
import mlx.core as mx
import numpy as np
from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask

from .errors import InvalidRequestError

log = logging.getLogger(__name__)

LogitsProcessor = Callable[[mx.array, mx.array], mx.array]


def grammar_for(schema: dict[str, Any]) -> str:
    """Compile a schema to an llguidance grammar, refusing one it cannot enforce."""
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            json.dumps(schema), defaults={"whitespace_flexible": False}
        )
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    except (ValueError, TypeError) as exc:
        raise InvalidRequestError(
            f"The JSON schema is not usable: {exc}", param="response_format"
        ) from None
    if is_error:
        raise InvalidRequestError(
            f"The JSON schema is not usable: {messages[0] if messages else 'invalid'}",
            param="response_format",
        )
    return grammar


def tokenizer_for(tokenizer: Any, vocab_size: int) -> Any:
    """llguidance's view of a model's tokenizer (about a second to build: cache it)."""
    return llguidance.hf.from_tokenizer(tokenizer._tokenizer, n_vocab=vocab_size)


def json_processor(
    ll_tokenizer: Any, grammar: str, prompt_tokens: int, vocab_size: int
) -> LogitsProcessor:
    """An mlx_lm logits processor that keeps one sequence inside `grammar`.

    mlx_lm hands each processor the sequence's tokens so far (prompt, then generated); the
    matcher is fed the generated ones it has not seen, then the mask of allowed next tokens
    is applied. Once the JSON is complete only end-of-sequence is allowed."""
    matcher = llguidance.LLMatcher(ll_tokenizer, grammar)
    bitmask = allocate_token_bitmask(1, vocab_size)
    consumed = 0

    def process(tokens: mx.array, logits: mx.array) -> mx.array:
        nonlocal consumed
        start = prompt_tokens + consumed
        if tokens.size > start:
            new: list[int] = tokens[start:].tolist()  # type: ignore[assignment]
            matcher.consume_tokens(new)
            consumed += len(new)
        if matcher.is_error():
            log.warning("constrained decoding lost track: %s", matcher.get_error())
            return logits
        fill_next_token_bitmask(matcher, bitmask, 0)
        allowed = np.unpackbits(bitmask.view(np.uint8), bitorder="little")[: logits.shape[-1]]
        return mx.where(mx.array(allowed.astype(bool)), logits, -mx.inf)

    return process

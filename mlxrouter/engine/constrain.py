"""Constrained decoding: llguidance works out which tokens keep the output inside a grammar,
and an mlx_lm logits processor masks every other token. Two grammars: a JSON schema, for
`response_format`, and a tool call in the model's `<tool_call>` format, for `tool_choice`
`required` or a named function. A thinking model reasons freely first: the grammar starts
after its end-of-thinking marker. Runs on the engine thread, like the rest of generation.
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

from ..errors import InvalidRequestError
from .prompt import ReasoningTokens

log = logging.getLogger(__name__)

LogitsProcessor = Callable[[mx.array, mx.array], mx.array]


def grammar_for(schema: dict[str, Any]) -> str:
    """Compile a schema to an llguidance grammar, refusing one it cannot enforce."""
    return _checked(
        lambda: llguidance.LLMatcher.grammar_from_json_schema(
            json.dumps(schema), defaults={"whitespace_flexible": False}
        ),
        "The JSON schema is not usable",
        param="response_format",
    )


def tool_call_grammar(
    tools: list[dict[str, Any]], start_tokens: list[int], end_tokens: list[int]
) -> str:
    """A grammar for exactly one call to one of `tools`, written as mlx_lm's `json_tools`
    parser reads it: the start marker, a newline, `{"name": ..., "arguments": {...}}` with the
    arguments valid against the function's `parameters` schema, a newline, the end marker.
    The markers are pinned to their own token ids, the tokens the model was trained on."""
    calls: list[dict[str, Any]] = [
        {
            "type": "object",
            "properties": {
                "name": {"const": function.get("name", "")},
                "arguments": function.get("parameters") or {"type": "object"},
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for function in (tool.get("function") or {} for tool in tools)
    ]
    # Compact JSON, as with response_format: free whitespace lets a model ramble in it.
    schema = {
        **(calls[0] if len(calls) == 1 else {"anyOf": calls}),
        "x-guidance": {"whitespace_flexible": False},
    }
    start = " ".join(f"<[{token}]>" for token in start_tokens)
    end = " ".join(f"<[{token}]>" for token in end_tokens)
    lark = f'start: {start} "\\n" call "\\n" {end}\ncall: %json {json.dumps(schema)}\n'
    return _checked(
        lambda: llguidance.grammar_from("lark", lark),
        "A tool's `parameters` schema cannot be enforced",
        param="tools",
    )


def _checked(compile_grammar: Callable[[], str], problem: str, *, param: str) -> str:
    try:
        grammar = compile_grammar()
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    except (ValueError, TypeError) as exc:
        raise InvalidRequestError(f"{problem}: {exc}", param=param) from None
    if is_error:
        raise InvalidRequestError(
            f"{problem}: {messages[0] if messages else 'invalid'}", param=param
        )
    return grammar


def tokenizer_for(tokenizer: Any, vocab_size: int) -> Any:
    """llguidance's view of a model's tokenizer (about a second to build: cache it)."""
    return llguidance.hf.from_tokenizer(tokenizer._tokenizer, n_vocab=vocab_size)


def grammar_processor(
    ll_tokenizer: Any, grammar: str, prompt_tokens: int, vocab_size: int
) -> LogitsProcessor:
    """An mlx_lm logits processor that keeps one sequence inside `grammar`.

    mlx_lm hands each processor the sequence's tokens so far (prompt, then generated); the
    matcher is fed the generated ones it has not seen, then the mask of allowed next tokens
    is applied. Once the grammar is complete only end-of-sequence is allowed."""
    matcher = llguidance.LLMatcher(ll_tokenizer, grammar)
    bitmask = allocate_token_bitmask(1, vocab_size)
    consumed = 0

    def process(tokens: mx.array, logits: mx.array) -> mx.array:
        nonlocal consumed
        start = prompt_tokens + consumed
        # A stopped matcher only allows end-of-sequence; mlx_lm still computes one step past
        # that token before it ends the sequence, and feeding it the token would be an error.
        if tokens.size > start and not matcher.is_stopped():
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


def after_reasoning(
    grammar: LogitsProcessor, reasoning: ReasoningTokens, prompt_tokens: int
) -> LogitsProcessor:
    """`grammar` (made for a sequence with no prompt) applied to the answer after a thinking
    model's reasoning: while the model reasons (a block the prompt opened, or one its first
    token opens) the logits pass through untouched; from the end marker on, the grammar is fed
    only the tokens after it. The first token may be the grammar's or the start marker."""
    fed = 0  # generated tokens given to `reasoning`
    opener = reasoning.markers.start_tokens
    vocab_ids: mx.array | None = None

    def process(tokens: mx.array, logits: mx.array) -> mx.array:
        nonlocal fed, vocab_ids
        generated = tokens.size - prompt_tokens
        if not reasoning.answering and generated > fed:
            new: list[int] = tokens[prompt_tokens + fed :].tolist()  # type: ignore[assignment]
            for token in new:
                reasoning.feed(token)
                if reasoning.answering:
                    break
            fed = generated
        if reasoning.answering:
            return grammar(tokens[prompt_tokens + reasoning.answer_from :], logits)
        if reasoning.state == "reasoning":
            return logits
        masked = grammar(tokens[prompt_tokens:], logits)  # the first token: the grammar's ...
        if generated or len(opener) != 1:
            return masked
        if vocab_ids is None:
            vocab_ids = mx.arange(logits.shape[-1])
        return mx.where(vocab_ids == opener[0], logits, masked)  # ... or the start marker

    return process

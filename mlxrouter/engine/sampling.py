"""How the next token is chosen: the sampler (seeded per request when asked), the logits
processors (penalties, logit bias, and the grammar mask of constrained decoding), and which
grammar a request needs, if any; plus reading a token's logprob back out of a step.

Engine thread only: everything here makes or reads MLX arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import mlx.core as mx
from mlx_lm.sample_utils import (
    apply_min_p,
    apply_top_k,
    apply_top_p,
    make_logits_processors,
    make_sampler,
)

from .types import GenerationRequest, SamplingParams, TokenLogprob

if TYPE_CHECKING:
    from .constrain import LogitsProcessor
    from .prompt import ThinkingMarkers


def sampler_for(sampling: SamplingParams, tokenizer: Any) -> Callable[[mx.array], mx.array]:
    """mlx_lm's sampler; a seeded request gets the same filters with its own PRNG key, so it
    repeats even while it shares a batch with other requests (mlx_lm's draws from the global
    random state). XTC spares newline and end-of-text, as mlx_lm.server's does."""
    temperature = sampling.temperature
    xtc = sampling.xtc_probability
    special = list(tokenizer.encode("\n")) + list(tokenizer.eos_token_ids) if xtc > 0 else []
    if sampling.seed is None or temperature == 0:
        sampler: Callable[[mx.array], mx.array] = make_sampler(
            temp=temperature,
            top_p=sampling.top_p,
            min_p=sampling.min_p,
            top_k=sampling.top_k,
            xtc_probability=xtc,
            xtc_threshold=sampling.xtc_threshold,
            xtc_special_tokens=special,
        )
        return sampler
    key = [mx.random.key(sampling.seed)]

    def draw() -> mx.array:
        key[0], sub = mx.random.split(key[0])
        return sub

    # mlx_lm's order: top-p, min-p, XTC, top-k.
    filters: list[Callable[[mx.array], mx.array]] = []
    if 0 < sampling.top_p < 1.0:
        filters.append(lambda x: apply_top_p(x, sampling.top_p))
    if sampling.min_p > 0:
        filters.append(lambda x: apply_min_p(x, sampling.min_p))
    if xtc > 0:
        filters.append(_keyed_xtc(xtc, sampling.xtc_threshold, special, draw))
    if sampling.top_k > 0:
        filters.append(lambda x: apply_top_k(x, sampling.top_k))

    def sample(logprobs: mx.array) -> mx.array:
        for apply in filters:
            logprobs = apply(logprobs)
        return mx.random.categorical(logprobs * (1.0 / temperature), key=draw())

    return sample


def _keyed_xtc(
    probability: float, threshold: float, special: list[int], draw: Callable[[], mx.array]
) -> Callable[[mx.array], mx.array]:
    """mlx_lm's `apply_xtc` with the request's own key: mlx_lm's tosses its coin with MLX's
    global random state, which every sequence of a batch draws from, so a seeded request
    would not repeat."""

    def apply(logprobs: mx.array) -> mx.array:
        probs = mx.softmax(logprobs, -1)
        # every token above the threshold but the least likely of them
        mask = probs > mx.where(probs > threshold, probs, mx.inf).min(axis=-1, keepdims=True)
        if special:
            mask[..., special] = False
        keep = mx.random.uniform(key=draw()) > probability
        return mx.where(keep, logprobs, mx.where(mask, -mx.inf, logprobs))

    return apply


def logits_processors(
    request: GenerationRequest,
    tokenizer: Any,
    *,
    prompt_tokens: int,
    vocab_size: int,
    grammar_tokenizer: Callable[[], Any],
    thinking: ThinkingMarkers | None = None,
) -> list[LogitsProcessor]:
    """mlx_lm's processors for the request's penalties and logit bias, then the grammar mask
    when the answer is constrained. `grammar_tokenizer` gives llguidance's tokenizer for the
    model (costly to build: the caller makes it once, on the first constrained request). With
    `thinking` markers the grammar constrains the answer only, from the end of its reasoning."""
    sampling = request.sampling
    processors: list[LogitsProcessor] = make_logits_processors(
        logit_bias=sampling.logit_bias,
        repetition_penalty=sampling.repetition_penalty,
        repetition_context_size=sampling.repetition_context_size,
        presence_penalty=sampling.presence_penalty,
        presence_context_size=sampling.presence_context_size,
        frequency_penalty=sampling.frequency_penalty,
        frequency_context_size=sampling.frequency_context_size,
    )
    constraint = grammar(tokenizer, request)
    if constraint is not None:
        from .constrain import after_reasoning, grammar_processor

        if thinking is None:
            processor = grammar_processor(
                grammar_tokenizer(), constraint, prompt_tokens, vocab_size
            )
        else:
            answer = grammar_processor(grammar_tokenizer(), constraint, 0, vocab_size)
            processor = after_reasoning(answer, thinking.tracker(), prompt_tokens)
        processors.append(processor)
    return processors


def grammar(tokenizer: Any, request: GenerationRequest) -> str | None:
    """The grammar this request's answer must follow, if any. A required tool call wins over
    `response_format` (which shapes text content, and a forced call has none). Tool calls are
    forced only in the `json_tools` format (Qwen 2.5/3, Hermes, SmolLM3 and kin); for other
    formats the template still offers the tools, but decoding cannot force a call."""
    from .constrain import grammar_for, tool_call_grammar

    if request.tool_call_required and request.tools and forceable_tool_calls(tokenizer):
        return tool_call_grammar(
            request.tools,
            list(tokenizer.encode(tokenizer.tool_call_start, add_special_tokens=False)),
            list(tokenizer.encode(tokenizer.tool_call_end, add_special_tokens=False)),
        )
    if request.json_schema is not None:
        return grammar_for(request.json_schema)
    return None


def forceable_tool_calls(tokenizer: Any) -> bool:
    """Whether the model's tool calls are `<tool_call>` JSON, the format a grammar can force."""
    parser = getattr(tokenizer, "tool_parser", None)
    return (
        bool(tokenizer.has_tool_calling and tokenizer.tool_call_end)
        and getattr(parser, "__module__", "") == "mlx_lm.tool_parsers.json_tools"
    )


def token_logprob(tokenizer: Any, logprobs: mx.array, token: int, top: int) -> TokenLogprob:
    """The chosen token's logprob from one step's distribution, with the `top` most likely."""
    row = logprobs.reshape(-1)
    chosen = float(row[token].item())  # type: ignore[arg-type]
    alternatives: tuple[tuple[str, float], ...] = ()
    if top > 0:
        ids = mx.argpartition(-row, kth=top - 1)[:top]
        id_list: list[int] = ids.tolist()  # type: ignore[assignment]
        values: list[float] = row[ids].tolist()  # type: ignore[assignment]
        pairs = sorted(zip(id_list, values, strict=True), key=lambda p: -p[1])
        alternatives = tuple((tokenizer.decode([i]), v) for i, v in pairs)
    return TokenLogprob(tokenizer.decode([token]), chosen, alternatives)

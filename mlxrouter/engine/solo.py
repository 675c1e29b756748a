"""Requests mlx_lm's `BatchGenerator` cannot batch (mlx_lm.server's `_is_batchable`): those
with a draft model (speculative decoding) and those with a quantized KV cache.

Each runs as a solo sequence: mlx_lm's own `speculative_generate_step` / `generate_step`
generator, advanced one token per engine turn between the batch steps of every model and the
other solo sequences, so other requests keep being served meanwhile. Its prompt is prefilled
whole in its first step. Its tokens go through the same `SequenceOutput` as a batched
sequence's, with the batch's finish reasons: "length" at its token budget, "stop" at
end-of-text or a stop sequence.

Engine thread only: the generators run MLX.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
from mlx_lm.generate import generate_step, speculative_generate_step
from mlx_lm.models.cache import make_prompt_cache

from ..errors import ConfigError, EngineError, InvalidRequestError
from .bridge import GenerationStream
from .output import SequenceOutput
from .types import GenerationRequest, ModelOptions

log = logging.getLogger(__name__)


@dataclass(slots=True)
class SoloSequence:
    """One request decoded on its own; see the module's doc."""

    stream: GenerationStream
    output: SequenceOutput
    tokens: Generator[tuple[int, Any], None, None]
    max_tokens: int
    stop: Any  # mlx_lm's StopSequences.Matcher: end-of-text and stop sequences
    #: the draft model's engine key when it drafts (an unload of the draft ends this one)
    draft: str | None = None
    #: its KV cache (None when drafting: mlx_lm's own), and what keeps it when it finishes
    #: (given the generated tokens and the cache) for prefix reuse
    cache: list[Any] | None = None
    keep: Callable[[list[int], list[Any]], None] | None = None
    generated: list[int] = field(default_factory=list)

    def step(self) -> bool:
        """Generate one token and emit what it makes; True once the sequence is over."""
        try:
            token, logprobs = next(self.tokens)
        except StopIteration:  # its budget is mlx_lm's too: never reached before ours
            raise EngineError("The generation ended early") from None
        self.generated.append(token)
        reason = "length" if len(self.generated) >= self.max_tokens else None
        if self.stop.advance(token):
            reason = "stop"
        for event in self.output.feed(token, reason, logprobs):
            self.stream.emit(event)
        if not self.output.finished:
            return False
        self.tokens.close()
        if self.keep is not None and self.cache is not None:
            # mlx_lm ran every token it yielded through the cache before yielding it
            self.keep(self.generated, self.cache)
        return True

    def end(self, error: EngineError | None = None) -> None:
        """Stop generating (cancelled, failed, or its model unloaded); `error` goes to the
        client."""
        if error is not None:
            self.stream.emit(error)
        self.tokens.close()


@dataclass(frozen=True, slots=True)
class Decoding:
    """How a sequence picks and ends its tokens (the same for a batched one)."""

    sampler: Callable[[mx.array], mx.array]
    processors: list[Any]
    max_tokens: int
    stop: Any  # mlx_lm's StopSequences


def start_solo(
    model: Any,
    prompt: list[int],
    sequence: tuple[GenerationStream, SequenceOutput, Decoding],
    *,
    options: ModelOptions,
    mx_stream: Any,
    cache: list[Any] | None = None,
    keep: Callable[[list[int], list[Any]], None] | None = None,
    draft: tuple[str, Any] | None = None,
) -> SoloSequence:
    """A solo sequence over mlx_lm's token generator: `generate_step` (with `cache`, the
    prefix reused, or a fresh one; mutated in place, quantized as it grows), or, with a
    `draft` (its engine key and model), `speculative_generate_step` on fresh caches (mlx_lm
    rewinds them itself)."""
    stream, output, decoding = sequence
    kv = {
        "kv_bits": options.kv_bits,
        "kv_group_size": options.kv_group_size,
        "quantized_kv_start": options.quantized_kv_start,
    }
    common = {
        "max_tokens": decoding.max_tokens,
        "sampler": decoding.sampler,
        "logits_processors": decoding.processors,
    }
    matcher = decoding.stop.matcher()
    if draft is None:
        cache = cache if cache is not None else make_prompt_cache(model)
        tokens = generate_step(
            mx.array(prompt), model, mx_stream, prompt_cache=cache, **common, **kv
        )
        return SoloSequence(
            stream, output, tokens, decoding.max_tokens, matcher, cache=cache, keep=keep
        )
    draft_key, draft_model = draft
    steps = speculative_generate_step(
        mx.array(prompt),
        model,
        draft_model,
        mx_stream,
        num_draft_tokens=options.num_draft_tokens,
        **common,
        **kv,
    )
    tokens = _token_and_logprobs(steps)
    return SoloSequence(stream, output, tokens, decoding.max_tokens, matcher, draft=draft_key)


def _token_and_logprobs(
    steps: Generator[tuple[int, Any, bool], None, None],
) -> Generator[tuple[int, Any], None, None]:
    # Closing this closes mlx_lm's generator now, on this thread (it rewinds its caches).
    with contextlib.closing(steps):
        for token, logprobs, _drafted in steps:
            yield token, logprobs


def solo_plan(
    request: GenerationRequest, loaded: Any, models: Mapping[str, Any]
) -> tuple[bool, tuple[str, Any] | None, str]:
    """Whether `request` on the `loaded` model (the engine's loaded models by key) runs as a
    solo sequence; its draft, if drafted (`draft_for`); and the kind of prompt cache it
    reuses: a quantized one is kept apart from the batch's, which cannot take it."""
    options = request.options
    if loaded.spec.vision and options.draft is not None:
        raise InvalidRequestError(
            f"`{loaded.spec.key}` is a vision model: speculative decoding does not apply to it",
            param="draft_model",
        )
    draft = draft_for(request, loaded, models)
    check_kv(loaded.model, loaded.spec.key, options)
    kind = f"#kv{options.kv_bits}/{options.kv_group_size}" if options.kv_bits else ""
    solo = draft is not None or options.kv_bits is not None or loaded.spec.vision
    return solo, draft, kind


def draft_for(
    request: GenerationRequest, loaded: Any, models: Mapping[str, Any]
) -> tuple[str, Any] | None:
    """The draft that drafts for `request` on the `loaded` model (the engine's loaded
    models by key), as `(key, model)`, if any. A constrained answer is not drafted: its
    grammar follows each token once, and drafting rewinds tokens."""
    key = request.options.draft
    if key is None or request.json_schema is not None or request.tool_call_required:
        return None
    draft = models.get(key)
    if draft is None:
        raise EngineError(f"The draft model `{key}` is not loaded")
    check_draft(loaded.spec.key, loaded.tokenizer, key, draft.tokenizer)
    return key, draft.model


def check_kv(model: Any, model_key: str, options: ModelOptions) -> None:
    """A quantized KV cache quantizes each head's keys in groups: the group size must divide
    the head size (else every step of the sequence would fail)."""
    args = getattr(model, "args", None)
    heads = getattr(args, "num_attention_heads", None)
    head = getattr(args, "head_dim", None) or (
        getattr(args, "hidden_size", 0) // heads if heads else None
    )
    if options.kv_bits is not None and head and head % options.kv_group_size:
        raise ConfigError(
            f"`kv_group_size` {options.kv_group_size} does not divide the head size ({head}) "
            f"of `{model_key}`: set 32 or 64"
        )


# A tokenizer's vocabulary, read the first time its model drafts or is drafted for.
_VOCABULARIES: weakref.WeakKeyDictionary[Any, dict[str, int]] = weakref.WeakKeyDictionary()


def check_draft(model_key: str, tokenizer: Any, draft_key: str, draft_tokenizer: Any) -> None:
    """mlx_lm feeds the draft's token ids to the model: both tokenizers must give every token
    the same id (mlx_lm.server only warns when their sizes differ; the answer would be
    garbage, or fail on an id past the model's embedding)."""
    vocabularies = []
    for wrapper in (tokenizer, draft_tokenizer):
        if wrapper not in _VOCABULARIES:
            _VOCABULARIES[wrapper] = dict(wrapper.get_vocab())
        vocabularies.append(_VOCABULARIES[wrapper])
    if vocabularies[0] != vocabularies[1]:
        raise InvalidRequestError(
            f"The draft model `{draft_key}` has another vocabulary than `{model_key}`: a "
            "draft model must share its model's tokenizer",
            param="draft_model",
        )


def step_solos(solos: list[SoloSequence], model_key: str) -> None:
    """One token for each of a model's solo sequences; a cancelled one ends, a failing one
    fails alone (its client gets the error)."""
    for solo in list(solos):
        if solo.stream.cancelled:
            solos.remove(solo)
            solo.end()
            continue
        try:
            done = solo.step()
        except Exception:
            log.exception("decoding a solo sequence on %s failed", model_key)
            solos.remove(solo)
            solo.end(EngineError("Generation failed on this model"))
            continue
        if done:
            solos.remove(solo)


def end_solos(solos: list[SoloSequence], error: EngineError, drafted_by: str | None = None) -> None:
    """End a model's solo sequences with `error`: all of them, or those `drafted_by` a model."""
    for solo in list(solos):
        if drafted_by is None or solo.draft == drafted_by:
            solos.remove(solo)
            solo.end(error)

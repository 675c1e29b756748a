"""A request's preparation on one loaded model, before it runs: prompt tokens and their
checks, token budget, whether it runs solo (and its draft), the prompt cache it starts from,
sampler, logits processors and stop sequences. Everything that can reject a request happens
here, so its errors reach the client before any response is sent.

Engine thread only: the sampler, processors and the fetched KV cache are MLX objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlx_lm.generate import make_stop_sequences

from .output import SequenceOutput
from .prompt import (
    check_token_ids,
    effective_context,
    encode_prompt,
    thinking_markers,
    token_budget,
)
from .sampling import logits_processors, sampler_for
from .solo import Decoding, solo_plan
from .types import GenerationRequest


@dataclass(slots=True)
class Prepared:
    """A request ready to run on one model."""

    request: GenerationRequest
    prompt: list[int]
    #: the prompt as the prompt cache keys it: `prompt`, but for a vision model's images
    #: (their placeholder tokens stand for their content's digest: `engine.vision`)
    key: list[int]
    thinking: Any  # the prompt's thinking markers, if it left the model thinking
    solo: bool
    draft: tuple[str, Any] | None
    kind: str  # the prompt cache's kind (a quantized one is kept apart)
    cache: Any  # the KV cache of the longest cached prefix, or None
    rest: list[int]  # the prompt tokens still to run
    decoding: Decoding

    @property
    def cached(self) -> int:
        return len(self.prompt) - len(self.rest)

    def output(self, tokenizer: Any) -> SequenceOutput:
        return SequenceOutput(
            tokenizer,
            self.request,
            prompt_tokens=len(self.prompt),
            cached_tokens=self.cached,
            thinking=self.thinking,
        )


def prepare(
    loaded: Any,
    request: GenerationRequest,
    models: Mapping[str, Any],
    *,
    prompt: list[int] | None = None,
    key: list[int] | None = None,
) -> Prepared:
    """`request` prepared for the `loaded` model (the engine's loaded models by key, for a
    draft); raises the request's errors. A vision model's request comes with its `prompt`
    (the processor's tokens, image placeholders expanded) and the prompt cache's `key`."""
    tokenizer, options = loaded.tokenizer, request.options
    prompt = encode_prompt(tokenizer, request) if prompt is None else prompt
    key = prompt if key is None else key
    thinking = thinking_markers(tokenizer, request, prompt)
    context = effective_context(loaded.info.context_length, options.context_length)
    max_tokens = token_budget(request, len(prompt), context)
    check_token_ids(request, loaded.info.vocab_size)
    solo, draft, kind = solo_plan(request, loaded, models)
    # A drafted sequence starts afresh (mlx_lm rewinds its caches); a vision model's request
    # fetches its cache when its turn comes (`vision`), as an earlier one may add to it.
    fresh = draft or loaded.spec.vision
    cache, rest = (None, key) if fresh else loaded.prefix.fetch(key, kind)
    rest = prompt[len(prompt) - len(rest) :]  # the tokens themselves, not their keys
    sampler = sampler_for(request.sampling, tokenizer)
    processors = logits_processors(
        request,
        tokenizer,
        # mlx_lm's solo generators show processors the tokens run, not the cached prefix;
        # mlx-vlm's prefills all but the last in chunks it does not show them
        prompt_tokens=1 if loaded.spec.vision else len(rest) if solo else len(prompt),
        vocab_size=loaded.info.vocab_size,
        grammar_tokenizer=loaded.grammar_tokenizer,
        thinking=thinking,
    )
    # Stop strings end the answer, not its reasoning: with thinking markers they are
    # found in the answer's text (SequenceOutput), not by mlx_lm's token matcher.
    stop = make_stop_sequences(tokenizer, [] if thinking else list(request.stop))
    return Prepared(
        request,
        prompt,
        key,
        thinking,
        solo,
        draft,
        kind,
        cache,
        list(rest),
        Decoding(sampler, processors, max_tokens, stop),
    )

"""Vision-language models through mlx-vlm: loading (model and processor), a request's inputs
(the images decoded with Pillow, the prompt through the model's chat template, then mlx-vlm's
processor, which expands each image's placeholder into its image tokens), and generation with
mlx-vlm's `generate_step` advanced one token per engine turn as a solo sequence (`solo`). Its
tokens go through the same sampler, processors, stop sequences and `SequenceOutput` as a text
model's (`admission.prepare`).

One request at a time per vision model: mlx-vlm's models keep a sequence's position state
(Qwen-VL's mRoPE deltas) on the model object between steps, so two sequences interleaved on
one model would decode with each other's positions. Requests wait in arrival order; other
models keep generating meanwhile.

The prompt cache keys an image by its content: each image's placeholder tokens stand in the
cache's key for numbers drawn from the image's digest (`cache_key`), so a follow-up turn about
the same picture starts from the KV cache of the whole shared prefix, images included, and a
different picture with the same size never matches. A cached prefix is used only when the
tokens left to run hold no image token (mlx-vlm's own rule: the vision tower then does not
run at all); the language model's positions come from the whole prompt
(`_prime_cached_prefix_rope_state`).

Engine thread only: everything here makes MLX arrays.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections import deque
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
from mlx.utils import tree_flatten
from mlx_lm.utils import load_config, load_tokenizer

from ..errors import EngineError, InvalidRequestError
from .admission import Prepared, prepare
from .bridge import GenerationStream
from .loading import free_memory, load_failed, settle_random_state
from .prompt import chat_text
from .solo import SoloSequence
from .tokenizer_shelf import TokenizerShelf, tokenizer_key
from .types import GenerationRequest, LoadSpec, Started

log = logging.getLogger(__name__)


@dataclass(slots=True)
class VisionInputs:
    """A request's prompt as mlx-vlm's processor made it."""

    prompt: list[int]  # token ids, each image's placeholder expanded into its image tokens
    key: list[int]  # the prompt cache's key for it (see `cache_key`)
    pixel_values: Any  # None for a text-only request
    mask: Any  # the attention mask, or None
    extra: dict[str, Any]  # the processor's other outputs (image_grid_thw, ...)


@dataclass(slots=True)
class VisionModel:
    """What a loaded vision model has beside its model and tokenizer: mlx-vlm's processor and
    the requests waiting for their turn (see the module's doc)."""

    processor: Any
    image_token: int | None
    waiting: deque[tuple[GenerationStream, Prepared, VisionInputs]] = field(default_factory=deque)

    def submit(
        self,
        loaded: Any,
        request: GenerationRequest,
        stream: GenerationStream,
        models: Mapping[str, Any],
    ) -> None:
        """Prepare `request` (its errors are raised now, before any response) and queue it."""
        inputs = self.inputs(loaded.model, loaded.tokenizer, request)
        ready = prepare(loaded, request, models, prompt=inputs.prompt, key=inputs.key)
        self.waiting.append((stream, ready, inputs))  # its cache is fetched when it starts

    def start_next(self, loaded: Any) -> None:
        """Start the next waiting request when none runs on this model (`solos`)."""
        while self.waiting and not loaded.solos:
            stream, ready, inputs = self.waiting.popleft()
            if stream.cancelled:
                continue
            try:
                sequence = self._start(loaded, stream, ready, inputs)
            except Exception:
                log.exception("starting a request on %s failed", loaded.spec.key)
                stream.emit(EngineError("Generation failed on this model"))
                continue
            loaded.solos.append(sequence)
            stream.emit(Started(prompt_tokens=len(ready.prompt), cached_tokens=ready.cached))

    def fail_all(self, error: Exception) -> None:
        """The model unloads (or the engine fails): every waiting request ends with `error`."""
        while self.waiting:
            stream, _, _ = self.waiting.popleft()
            stream.emit(error)

    # ---- inputs -----------------------------------------------------------------------------

    def inputs(self, model: Any, tokenizer: Any, request: GenerationRequest) -> VisionInputs:
        """The request's prompt through mlx-vlm's processor (as `mlx_vlm.generate` prepares
        it); raises the request's errors."""
        from mlx_vlm.utils import load_image, prepare_inputs, should_add_special_tokens

        if request.messages is None and isinstance(request.prompt, list):
            prompt = list(request.prompt)
            return VisionInputs(prompt, prompt, None, None, {})
        if request.messages is None:
            text, special = request.prompt or "", True
        else:
            text, templated = chat_text(tokenizer, request)
            special = should_add_special_tokens(model.config.model_type, self.processor)
            special = special or not templated
        try:
            images = [load_image(io.BytesIO(image.data)) for image in request.images]
            processed = prepare_inputs(  # type: ignore[no-untyped-call]
                self.processor,
                images=images or None,
                prompts=text,
                image_token_index=getattr(model.config, "image_token_index", None),
                add_special_tokens=special,
            )
        except Exception as exc:  # noqa: BLE001 - the processor refused this request's images
            log.info("the processor of a vision model refused a request: %s", exc)
            raise InvalidRequestError(
                "The model's processor could not take these images with this prompt",
                param="messages",
            ) from None
        prompt = [int(t) for t in processed["input_ids"].reshape(-1).tolist()]
        if self.image_token is not None and len(_runs(prompt, self.image_token)) < len(images):
            # never answer as if an image were not there
            raise InvalidRequestError(
                "The model's chat template left no place for some of the images",
                param="messages",
            )
        extra = {
            k: v
            for k, v in processed.items()
            if k not in ("input_ids", "pixel_values", "attention_mask")
        }
        digests = [image.digest for image in request.images]
        return VisionInputs(
            prompt,
            cache_key(prompt, self.image_token, digests),
            processed.get("pixel_values"),
            processed.get("attention_mask"),
            extra,
        )

    # ---- generation -------------------------------------------------------------------------

    def _start(
        self,
        loaded: Any,
        stream: GenerationStream,
        ready: Prepared,
        inputs: VisionInputs,
    ) -> SoloSequence:
        from mlx_vlm.generate.dispatch import _prime_cached_prefix_rope_state
        from mlx_vlm.models.cache import make_prompt_cache

        model, prompt, kwargs = loaded.model, ready.prompt, dict(inputs.extra)
        cache, rest = loaded.prefix.fetch(ready.key, ready.kind)
        cached = len(prompt) - len(rest)
        full_ids = mx.array([prompt])
        # A cached prefix serves only when what is left to run holds no image token.
        usable = cached > _last_image_token(prompt, self.image_token) and cached > 0
        if self.image_token is None and inputs.pixel_values is not None:
            usable = False  # its image tokens cannot be told apart from text
        if usable:
            usable = _prime_cached_prefix_rope_state(model, full_ids, inputs.mask, kwargs)
        if not usable:
            cache, cached = None, 0
        ready.cache, ready.rest = cache, prompt[cached:]
        mask = inputs.mask[:, cached:] if inputs.mask is not None else None
        if cache is None:
            cache = make_prompt_cache(model.language_model)
        options = ready.request.options
        decoding = ready.decoding
        # mlx-vlm runs it on its own stream, one per thread (`generation_stream`)
        tokens = _tokens(
            mx.array([ready.rest]),
            model,
            None if cached else inputs.pixel_values,
            mask,
            max_tokens=decoding.max_tokens,
            sampler=decoding.sampler,
            logits_processors=decoding.processors,
            prompt_cache=cache,
            kv_bits=options.kv_bits,
            kv_group_size=options.kv_group_size,
            quantized_kv_start=options.quantized_kv_start,
            **kwargs,
        )
        key, kind = ready.key, ready.kind
        return SoloSequence(
            stream,
            ready.output(loaded.tokenizer),
            tokens,
            decoding.max_tokens,
            decoding.stop.matcher(),
            cache=cache,
            keep=_keeper(loaded, key, kind),
        )


def _keeper(loaded: Any, key: list[int], kind: str) -> Callable[[list[int], list[Any]], None]:
    return lambda tokens, kv: loaded.prefix.keep(key + tokens, kv, kind)


def _tokens(*args: Any, **kwargs: Any) -> Generator[tuple[int, Any], None, None]:
    """mlx-vlm's token generator (its logprobs are the whole vocabulary's, as mlx_lm's)."""
    from mlx_vlm.generate import generate_step

    for token, logprobs in generate_step(*args, **kwargs):
        yield int(token), logprobs


def _last_image_token(prompt: list[int], image_token: int | None) -> int:
    """Index of the prompt's last image token, -1 when it has none."""
    if image_token is None:
        return -1
    return next((i for i in range(len(prompt) - 1, -1, -1) if prompt[i] == image_token), -1)


def cache_key(prompt: list[int], image_token: int | None, digests: list[str]) -> list[int]:
    """`prompt` as the prompt cache keys it: the i-th token of each image's placeholder run
    becomes a negative number (no token id is negative) drawn from the image's digest and i.
    When the runs do not match the images one to one (a model that tiles an image into
    several runs), every image token is drawn from all the request's digests together; when
    the image token is unknown, every token is, so only the same images share a cache."""
    if not digests:
        return list(prompt)
    runs = _runs(prompt, image_token)
    if len(runs) == len(digests):
        drawn = list(zip(runs, digests, strict=True))
    else:
        combined = hashlib.sha256("".join(digests).encode()).hexdigest()
        drawn = [(run, combined) for run in (runs or [(0, len(prompt))])]
    key = list(prompt)
    for (start, end), digest in drawn:
        for i in range(start, end):
            key[i] = -1 - _draw(digest, i - start)
    return key


def _runs(prompt: list[int], image_token: int | None) -> list[tuple[int, int]]:
    """Where the image placeholders' runs of `prompt` start and end."""
    runs: list[tuple[int, int]] = []
    start = None
    for i, token in enumerate([*prompt, None]):
        if image_token is not None and token == image_token:
            start = i if start is None else start
        elif start is not None:
            runs.append((start, i))
            start = None
    return runs


def _draw(digest: str, index: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{digest}:{index}".encode()).digest()[:4]) >> 1


def load_vision(spec: LoadSpec, shelf: TokenizerShelf) -> tuple[Any, Any, VisionModel, int, Any]:
    """Load a vision-language model with mlx-vlm (weights read at once), its tokenizer as
    mlx_lm wraps it (for the answer's detokenizing, stop strings, tools and reasoning; off the
    `shelf` when the same files were loaded before), and its processor. Returns the model, the
    tokenizer, the vision state, the weights' bytes (the vision tower's included) and the
    language model's config. Raises `ModelLoadError`."""
    started = time.perf_counter()
    tokenizer = None
    try:
        from mlx_vlm.utils import load

        model, processor = load(str(spec.model_path), trust_remote_code=spec.trust_remote_code)
        settle_random_state()
        eos = load_config(spec.model_path).get("eos_token_id")
        key = tokenizer_key(
            spec.model_path, trust_remote_code=spec.trust_remote_code, eos_token_ids=eos
        )
        tokenizer = shelf.take(key)
        if tokenizer is None:
            extra = {"trust_remote_code": spec.trust_remote_code}
            tokenizer = shelf.put(key, load_tokenizer(spec.model_path, extra, eos_token_ids=eos))
        template = getattr(processor, "chat_template", None)
        if not tokenizer.has_chat_template and template:
            tokenizer._tokenizer.chat_template = template  # kept beside the processor's files
    except Exception as exc:  # noqa: BLE001 - any load failure is this model's, not ours
        if tokenizer is not None:
            shelf.release(tokenizer)
        free_memory()
        raise load_failed(spec, exc) from None
    flat: list[tuple[str, Any]] = tree_flatten(model.parameters())  # type: ignore[assignment]
    nbytes = sum(int(array.nbytes) for _, array in flat)
    config = model.config
    token = getattr(config, "image_token_id", None) or getattr(config, "image_token_index", None)
    log.info("loaded vision model %s in %.1f s", spec.key, time.perf_counter() - started)
    text_config = getattr(config, "text_config", None) or config
    return model, tokenizer, VisionModel(processor, token), nbytes, text_config

"""The MLX side of mlxrouter: loading models and generating text.

One dedicated thread, owned by `Engine`, makes every mlx / mlx_lm call: loads, unloads,
tokenisation, prefill and decoding. MLX streams are thread-local (mlx >= 0.31.2), so arrays made
on one thread cannot be used on another; keeping all of it on one thread is what makes the
daemon safe on Metal and CUDA. The event loop talks to the thread through a command queue and
gets results back through futures and per-request `GenerationStream` channels.

Each loaded model gets an mlx_lm `BatchGenerator`, so concurrent requests to one model decode
together (continuous batching); the thread steps every busy model in turn, so requests to
different models interleave fairly.

Loads do not stall them either: weights are mapped lazily and evaluated a slice at a time
between generation steps, while the tokenizer (plain Python and Rust, no MLX arrays) loads on
a side thread at the same time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import mlx.core as mx
from mlx.utils import tree_flatten
from mlx_lm.generate import BatchGenerator, TextStateMachine, make_stop_sequences
from mlx_lm.models.cache import LRUPromptCache, can_trim_prompt_cache, trim_prompt_cache
from mlx_lm.sample_utils import (
    apply_min_p,
    apply_top_k,
    apply_top_p,
    make_logits_processors,
    make_sampler,
)
from mlx_lm.tuner.utils import load_adapters
from mlx_lm.utils import load_config, load_model, load_tokenizer

from .errors import (
    ContextLengthExceededError,
    EngineError,
    InvalidRequestError,
    ModelLoadError,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

# How long the idle thread sleeps on its queue before checking for shutdown.
_IDLE_POLL_S = 0.5
# An idle engine woken by a command waits this long for more before it steps (up to the cap),
# so a burst of requests is prefilled in one batch rather than one first and the rest a whole
# prefill later; a lone request pays at most one window.
_BURST_WINDOW_S = 0.005
_BURST_CAP_S = 0.05
# Weights evaluated per engine step while a model loads: small enough that streams of loaded
# models keep flowing, large enough that the reads stay sequential and fast.
_LOAD_SLICE_BYTES = 64 * 2**20


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """What to load: a model folder, optionally with a LoRA adapter folder applied."""

    key: str
    model_path: Path
    adapter_path: Path | None = None
    trust_remote_code: bool = False
    #: adapters: the pool key of the loaded base whose arrays the adapter shares
    base_key: str | None = None


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """Plain facts about a loaded model, safe to read on any thread."""

    nbytes: int
    context_length: int | None
    vocab_size: int
    has_chat_template: bool
    load_seconds: float


@dataclass(frozen=True, slots=True)
class SamplingParams:
    #: None: the request named none (the daemon fills in the entry's default before generating)
    temperature: float | None = None
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float | None = None
    repetition_context_size: int = 20
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[int, float] | None = None
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """A request in engine terms. Exactly one of `messages` (chat) or `prompt` (text) is set."""

    messages: list[dict[str, Any]] | None = None
    prompt: str | list[int] | None = None
    role_mapping: dict[str, str] | None = None
    tools: list[dict[str, Any]] | None = None
    max_tokens: int | None = None
    default_max_tokens: int = 2048
    stop: tuple[str, ...] = ()
    sampling: SamplingParams = field(default_factory=SamplingParams)
    #: None: no logprobs; N >= 0: the chosen token's logprob plus the N most likely
    logprobs: int | None = None
    #: a JSON schema the answer must satisfy (response_format json_object / json_schema)
    json_schema: dict[str, Any] | None = None
    #: the answer must be a call to one of `tools` (tool_choice `required` or a named function);
    #: forced by constrained decoding for models whose tool calls are `<tool_call>` JSON
    tool_call_required: bool = False


@dataclass(frozen=True, slots=True)
class Started:
    """First event of every stream: the prompt was accepted and is being processed."""

    prompt_tokens: int


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One parsed tool call; `arguments` is a JSON object encoded as a string, as in OpenAI."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Chunk:
    text: str
    logprobs: tuple[TokenLogprob, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(frozen=True, slots=True)
class Finished:
    finish_reason: str  # "stop", "length" or "tool_calls"
    prompt_tokens: int
    completion_tokens: int
    #: prompt tokens whose KV cache came from an earlier request (prefix reuse)
    cached_tokens: int = 0


Event = Started | Chunk | Finished


class _Outbox:
    """Events the engine thread has produced since its last hand-off. They go to each event
    loop in one call per engine turn, not one per token: a batched step of N sequences wakes
    the loop once, and not at all while the loop has yet to take the previous hand-off (the
    events join it). `put` and `flush` run on the engine thread, `_take` on the loop."""

    def __init__(self) -> None:
        self._items: list[tuple[GenerationStream, Event | BaseException]] = []
        self._lock = threading.Lock()
        self._untaken: dict[asyncio.AbstractEventLoop, list[tuple[GenerationStream, Any]]] = {}

    def put(self, stream: GenerationStream, item: Event | BaseException) -> None:
        self._items.append((stream, item))

    def flush(self) -> None:
        if not self._items:
            return
        items, self._items = self._items, []
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[GenerationStream, Any]]] = {}
        for stream, item in items:
            by_loop.setdefault(stream._loop, []).append((stream, item))
        for loop, batch in by_loop.items():
            with self._lock:
                if loop in self._untaken:  # a wake-up is on its way: ride along
                    self._untaken[loop].extend(batch)
                    continue
                self._untaken[loop] = batch
            try:
                loop.call_soon_threadsafe(self._take, loop)
            except RuntimeError:  # the loop has closed: nobody is listening any more
                with self._lock:
                    self._untaken.pop(loop, None)
                for stream, _ in batch:
                    stream.cancelled = True

    def _take(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            batch = self._untaken.pop(loop, [])
        for stream, item in batch:
            stream._queue.put_nowait(item)


class GenerationStream:
    """One request's channel from the engine thread to the event loop.

    The engine thread calls `_emit`; the event loop iterates. `cancel()` (any thread) asks the
    engine to stop at its next token step, which frees the request's batch slot.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, wake: Callable[[], None], outbox: _Outbox
    ) -> None:
        self._loop = loop
        self._wake = wake
        self._outbox = outbox
        self._queue: asyncio.Queue[Event | BaseException] = asyncio.Queue()
        self.cancelled = False
        self.done = False

    def _emit(self, item: Event | BaseException) -> None:
        """Engine thread only; delivered at the engine's next hand-off."""
        if isinstance(item, Finished | BaseException):
            self.done = True
        self._outbox.put(self, item)

    def cancel(self) -> None:
        if not self.done:
            self.cancelled = True
            self._wake()

    async def next_event(self) -> Event:
        item = await self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            event = await self.next_event()
            yield event
            if isinstance(event, Finished):
                return


@dataclass(slots=True)
class _Sequence:
    """A request being decoded; lives on the engine thread only."""

    stream: GenerationStream
    detokenizer: Any
    text_state: Any  # TextStateMachine state, or None with no stop strings and no tools
    prompt_tokens: int
    top_logprobs: int | None
    tools: list[dict[str, Any]] | None = None
    cached_tokens: int = 0
    completion_tokens: int = 0
    tool_text: str = ""  # the body of the tool call being generated
    tool_calls: int = 0


@dataclass(slots=True)
class _PendingLoad:
    """A model whose weights are being read between generation steps (engine thread only)."""

    spec: LoadSpec
    model: Any
    tokenizer: concurrent.futures.Future[Any]  # loading on the tokenizer thread
    unread: list[Any]  # parameter arrays not yet evaluated, in file order
    nbytes: int
    started: float
    waiters: list[asyncio.Future[ModelInfo]]  # each resolved on its own event loop


@dataclass(slots=True)
class _LoadedModel:
    """Engine-thread state of one loaded model."""

    spec: LoadSpec
    model: Any
    tokenizer: Any
    info: ModelInfo
    prompt_cache: Any  # mlx_lm LRUPromptCache: finished sequences' KV caches by token prefix
    batch: Any = None  # BatchGenerator, made on first use
    ll_tokenizer: Any = None  # llguidance's tokenizer, made on the first constrained request
    sequences: dict[int, _Sequence] = field(default_factory=dict)


@dataclass(slots=True)
class _Command:
    run: Callable[[], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


class Engine:
    """Owner of the MLX thread. Public coroutines may be awaited from the event loop; they
    never block it. `close()` blocks until the thread has released every model."""

    def __init__(
        self,
        *,
        name: str = "mlx-engine",
        prompt_cache_bytes: int = 256 * 2**20,
        load_slice_bytes: int = _LOAD_SLICE_BYTES,
    ) -> None:
        #: KV caches kept per loaded entry for prefix reuse; 0 turns reuse off
        self.prompt_cache_bytes = prompt_cache_bytes
        #: weight bytes evaluated per engine step while a model loads
        self.load_slice_bytes = load_slice_bytes
        self._commands: queue.SimpleQueue[_Command | None] = queue.SimpleQueue()
        self._models: dict[str, _LoadedModel] = {}
        self._loads: list[_PendingLoad] = []
        self._outbox = _Outbox()
        # Tokenizers never touch MLX, so they may load off the engine thread, beside weights.
        self._tokenizer_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"{name}-tokenizer"
        )
        self._stop = False
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ---- event-loop side -------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        return self._thread.is_alive() and self._failure is None

    async def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the engine thread and await its result (exceptions propagate)."""
        if not self.healthy:
            raise EngineError("The generation engine has stopped")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._commands.put(_Command(fn, future, loop))
        return await future

    async def load(self, spec: LoadSpec) -> ModelInfo:
        """Load a model (and adapter) on the engine thread. Slow: seconds to minutes, during
        which the models already loaded keep generating."""
        loop = asyncio.get_running_loop()
        loaded: asyncio.Future[ModelInfo] = loop.create_future()
        await self.call(lambda: self._start_load(spec, loaded))
        return await loaded

    async def unload(self, key: str) -> None:
        """Drop a model; its in-flight requests end with an error. Memory is returned."""
        await self.call(lambda: self._unload(key))

    async def generate(self, key: str, request: GenerationRequest) -> GenerationStream:
        """Queue a request on a loaded model and return its channel once the prompt is
        accepted (so prompt errors surface before any response is sent)."""
        loop = asyncio.get_running_loop()
        stream = GenerationStream(loop, self._wake, self._outbox)
        await self.call(lambda: self._submit(key, request, stream))
        return stream

    def active_memory(self) -> int:
        return int(mx.get_active_memory())

    def close(self, timeout: float = 10.0) -> None:
        self._stop = True
        self._commands.put(None)
        self._thread.join(timeout)
        self._tokenizer_pool.shutdown(wait=False, cancel_futures=True)

    def _wake(self) -> None:
        # An empty command makes an idle thread look at its sequences again.
        self._commands.put(None)

    # ---- engine thread -----------------------------------------------------------------------

    def _run(self) -> None:
        # Streams are per thread: make this thread's default stream the one MLX work runs on.
        self._stream = mx.default_stream(mx.default_device())
        try:
            while not self._stop:
                busy = any(m.sequences for m in self._models.values()) or any(
                    pending.unread for pending in self._loads
                )
                self._drain_commands(block=not busy)
                self._outbox.flush()  # Started events and errors of the commands just run
                self._step_all()
                self._advance_loads()
                self._outbox.flush()  # this turn's tokens, one wake-up per event loop
        except BaseException as exc:  # the thread must report why it died, then stop
            log.exception("engine thread failed")
            self._failure = exc
            for loaded in self._models.values():
                for seq in loaded.sequences.values():
                    seq.stream._emit(EngineError("The generation engine failed"))
        finally:
            self._outbox.flush()
            for pending in self._loads:
                _fail_waiters(pending, EngineError("The generation engine stopped"))
            self._loads.clear()
            self._models.clear()
            gc.collect()
            mx.clear_cache()

    def _step_all(self) -> None:
        # A method of its own so no loop variable keeps an unloaded model alive.
        for loaded in list(self._models.values()):
            if loaded.sequences:
                self._step_safely(loaded)

    def _drain_commands(self, *, block: bool) -> None:
        """Run the queued commands. `block` (the engine is idle): wait for the first, then
        linger for a burst of others (see _BURST_WINDOW_S)."""
        try:
            command = (
                self._commands.get(timeout=_IDLE_POLL_S) if block else self._commands.get_nowait()
            )
        except queue.Empty:
            return
        deadline = time.monotonic() + _BURST_CAP_S
        while True:
            if command is not None:
                self._execute(command)
            wait = min(_BURST_WINDOW_S, deadline - time.monotonic()) if block else 0.0
            try:
                command = (
                    self._commands.get(timeout=wait) if wait > 0 else self._commands.get_nowait()
                )
            except queue.Empty:
                return

    @staticmethod
    def _execute(command: _Command) -> None:
        try:
            result = command.run()
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            command.loop.call_soon_threadsafe(_set_exception, command.future, exc)
        else:
            command.loop.call_soon_threadsafe(_set_result, command.future, result)

    def _start_load(self, spec: LoadSpec, loaded: asyncio.Future[ModelInfo]) -> None:
        """Build the model with lazily mapped weights and start its tokenizer; the weights are
        then read a slice per engine step (`_advance_loads`) and `loaded` resolves at the end."""
        if spec.key in self._models:
            _resolve(loaded, self._models[spec.key].info)
            return
        for pending in self._loads:
            if pending.spec == spec:
                pending.waiters.append(loaded)
                return
        started = time.perf_counter()
        base = self._models.get(spec.base_key) if spec.base_key else None
        try:
            if spec.adapter_path is not None and base is not None:
                # Shares the base's arrays: only the small adapter is read, at once.
                before = mx.get_active_memory()
                model, tokenizer = _adapter_on_base(base, spec.adapter_path)
                nbytes = max(int(mx.get_active_memory() - before), 0)
                info = self._register(spec, model, tokenizer, nbytes, started)
                _resolve(loaded, info)
                return
            # The tokenizer starts first, so it loads while the model is built and read.
            tokenizer = self._tokenizer_pool.submit(
                load_tokenizer,
                spec.model_path,
                {"trust_remote_code": spec.trust_remote_code},
                eos_token_ids=load_config(spec.model_path).get("eos_token_id"),
            )
            tokenizer.add_done_callback(lambda _: self._wake())
            model, _ = load_model(
                spec.model_path, lazy=True, trust_remote_code=spec.trust_remote_code
            )
            if spec.adapter_path is not None:
                model = load_adapters(model, str(spec.adapter_path))
                model.eval()
        except Exception as exc:  # noqa: BLE001 - any load failure is this model's, not ours
            gc.collect()
            mx.clear_cache()
            raise _load_failed(spec, exc) from None
        unread = _unique_arrays(model.parameters())
        self._loads.append(
            _PendingLoad(
                spec=spec,
                model=model,
                tokenizer=tokenizer,
                unread=unread,
                nbytes=sum(int(a.nbytes) for a in unread),
                started=started,
                waiters=[loaded],
            )
        )

    def _advance_loads(self) -> None:
        """Read one slice of the oldest load's weights, then finish every load whose weights
        and tokenizer are both ready."""
        reading = next((pending for pending in self._loads if pending.unread), None)
        if reading is not None:
            batch: list[Any] = []
            budget = self.load_slice_bytes
            while reading.unread and (budget > 0 or not batch):
                array = reading.unread.pop()
                batch.append(array)
                budget -= int(array.nbytes)
            try:
                mx.eval(batch)
            except Exception as exc:  # noqa: BLE001 - a corrupt weight file fails its load only
                self._abandon_load(reading, _load_failed(reading.spec, exc))
        for pending in [p for p in self._loads if not p.unread and p.tokenizer.done()]:
            self._loads.remove(pending)
            try:
                tokenizer = pending.tokenizer.result()
            except Exception as exc:  # noqa: BLE001 - as above, for the tokenizer files
                self._abandon_load(pending, _load_failed(pending.spec, exc))
                continue
            info = self._register(
                pending.spec, pending.model, tokenizer, pending.nbytes, pending.started
            )
            for future in pending.waiters:
                _resolve(future, info)

    def _abandon_load(self, pending: _PendingLoad, error: Exception) -> None:
        if pending in self._loads:
            self._loads.remove(pending)
        pending.tokenizer.cancel()
        _fail_waiters(pending, error)
        gc.collect()
        mx.clear_cache()

    def _register(
        self, spec: LoadSpec, model: Any, tokenizer: Any, nbytes: int, started: float
    ) -> ModelInfo:
        config = getattr(model, "args", None)
        info = ModelInfo(
            nbytes=nbytes,
            context_length=_context_length(config),
            vocab_size=int(getattr(config, "vocab_size", 0) or len(tokenizer.vocab)),
            has_chat_template=bool(tokenizer.has_chat_template),
            load_seconds=time.perf_counter() - started,
        )
        self._models[spec.key] = _LoadedModel(
            spec, model, tokenizer, info, LRUPromptCache(max_bytes=self.prompt_cache_bytes)
        )
        return info

    def _unload(self, key: str) -> None:
        for pending in [p for p in self._loads if p.spec.key == key]:
            self._abandon_load(pending, ModelLoadError(f"The model `{key}` was unloaded"))
        loaded = self._models.pop(key, None)
        if loaded is None:
            return
        for seq in loaded.sequences.values():
            seq.stream._emit(EngineError(f"The model `{key}` was unloaded"))
        if loaded.batch is not None:
            loaded.batch.close()
        del loaded
        # Drop the last references, then hand the buffers back to the OS.
        gc.collect()
        mx.clear_cache()

    def _submit(self, key: str, request: GenerationRequest, stream: GenerationStream) -> None:
        loaded = self._models.get(key)
        if loaded is None:
            raise EngineError(f"The model `{key}` is not loaded")
        tokenizer = loaded.tokenizer
        prompt = _prompt_tokens(tokenizer, request)
        max_tokens = _max_tokens(request, len(prompt), loaded.info.context_length)
        _check_token_ids(request, loaded.info.vocab_size)
        sampling = request.sampling
        sampler = _make_sampler(sampling)
        processors = make_logits_processors(
            logit_bias=sampling.logit_bias,
            repetition_penalty=sampling.repetition_penalty,
            repetition_context_size=sampling.repetition_context_size,
            presence_penalty=sampling.presence_penalty,
            frequency_penalty=sampling.frequency_penalty,
        )
        constraint = _grammar(tokenizer, request)
        if constraint is not None:
            processors.append(self._constrain(loaded, constraint, len(prompt)))
        if loaded.batch is None:
            loaded.batch = BatchGenerator(loaded.model, stream=self._stream)
        cache, rest = self._cached_prefix(loaded, prompt)
        cached = len(prompt) - len(rest)
        (uid,) = loaded.batch.insert(
            [rest],
            max_tokens=[max_tokens],
            caches=[cache] if cache is not None else None,
            all_tokens=[prompt[:cached]],
            samplers=[sampler],
            logits_processors=[processors],
            stop_sequences=[make_stop_sequences(tokenizer, list(request.stop))],
        )
        machine = _text_machine(tokenizer, request)
        loaded.sequences[uid] = _Sequence(
            stream=stream,
            detokenizer=tokenizer.detokenizer,
            text_state=machine.make_state("normal") if machine else None,
            prompt_tokens=len(prompt),
            top_logprobs=request.logprobs,
            tools=request.tools,
            cached_tokens=cached,
        )
        stream._emit(Started(prompt_tokens=len(prompt)))

    @staticmethod
    def _constrain(loaded: _LoadedModel, grammar: str, prompt_tokens: int) -> Any:
        from .constrain import grammar_processor, tokenizer_for

        if loaded.ll_tokenizer is None:
            loaded.ll_tokenizer = tokenizer_for(loaded.tokenizer, loaded.info.vocab_size)
        return grammar_processor(
            loaded.ll_tokenizer, grammar, prompt_tokens, loaded.info.vocab_size
        )

    def _cached_prefix(self, loaded: _LoadedModel, prompt: list[int]) -> tuple[Any, list[int]]:
        """The KV cache of the longest earlier sequence sharing a prefix with `prompt` (a
        copy), and the prompt tokens still to process; at least one is always left to run."""
        if self.prompt_cache_bytes <= 0:
            return None, prompt
        cache, rest = loaded.prompt_cache.fetch_nearest_cache(loaded.spec.key, prompt)
        if cache is not None and not rest:
            if not can_trim_prompt_cache(cache):
                return None, prompt
            trim_prompt_cache(cache, 1)  # the last token must run to give the next logits
            rest = prompt[-1:]
        return cache, list(rest)

    def _step_safely(self, loaded: _LoadedModel) -> None:
        """A failure while decoding fails that model's requests, not the thread."""
        try:
            self._step(loaded)
        except Exception:
            log.exception("decoding on %s failed; its requests end with an error", loaded.spec.key)
            for seq in loaded.sequences.values():
                seq.stream._emit(EngineError("Generation failed on this model"))
            loaded.sequences.clear()
            loaded.batch = None

    def _step(self, loaded: _LoadedModel) -> None:
        """One decode step for every sequence of one model."""
        cancelled = [uid for uid, seq in loaded.sequences.items() if seq.stream.cancelled]
        if cancelled:
            loaded.batch.remove(cancelled)
            for uid in cancelled:
                del loaded.sequences[uid]
            if not loaded.sequences:
                return
        _, responses = loaded.batch.next()
        finished: list[int] = []
        for response in responses:
            seq = loaded.sequences.get(response.uid)
            if seq is None:
                continue
            if self._deliver(loaded, seq, response):
                finished.append(response.uid)
        for uid in finished:
            loaded.sequences.pop(uid, None)
        if finished:
            # The batch drops sequences it finished itself; a stop string ends one early, and
            # its KV cache is kept as a finished one's is (mlx_lm keeps cache and tokens in step).
            keep = self.prompt_cache_bytes > 0
            for cache, tokens in loaded.batch.remove(finished, return_prompt_caches=keep).values():
                loaded.prompt_cache.insert_cache(loaded.spec.key, list(tokens), cache)

    def _deliver(self, loaded: _LoadedModel, seq: _Sequence, response: Any) -> bool:
        """Turn one token into a Chunk (and maybe Finished). True when the sequence ended."""
        tokenizer = loaded.tokenizer
        token = int(response.token)
        reason = response.finish_reason
        is_eos = reason == "stop" and token in tokenizer.eos_token_ids
        if reason != "stop":
            seq.detokenizer.add_token(token)
            seq.completion_tokens += 1
        if reason is not None:
            seq.detokenizer.finalize()
        text = seq.detokenizer.last_segment

        stopped_by_text = False
        calls: list[ToolCall] = []
        if seq.text_state is not None:
            seq.text_state, segments = TextStateMachine.split(seq.text_state, text)
            if reason is not None and seq.text_state[0] is not None:
                if is_eos or reason == "length":
                    seq.text_state, rest, state = TextStateMachine.flush(seq.text_state)
                    segments.append((state, rest))
                else:  # a stop string matched on tokens: drop the held-back part of it
                    seq.text_state, _ = TextStateMachine.discard(seq.text_state)
            text, calls, stopped_by_text = self._route_segments(tokenizer, seq, segments)
            if reason is not None and seq.tool_text.strip():
                body = seq.tool_text  # the answer ended inside a call (no end marker)
                parsed = _parse_tool_calls(tokenizer, seq, body)
                if parsed is None:
                    text += tokenizer.tool_call_start + body
                else:
                    calls += parsed

        logprobs: tuple[TokenLogprob, ...] = ()
        if seq.top_logprobs is not None and reason != "stop":
            logprobs = (_token_logprob(tokenizer, response.logprobs, token, seq.top_logprobs),)
        if text or logprobs or calls:
            seq.stream._emit(Chunk(text, logprobs, tuple(calls)))
        if reason is None and not stopped_by_text:
            return False
        if reason is not None and response.prompt_cache is not None and self.prompt_cache_bytes > 0:
            # Keep the finished sequence's KV cache: a follow-up turn starts from it.
            loaded.prompt_cache.insert_cache(
                loaded.spec.key, list(response.all_tokens), response.prompt_cache
            )
        finish = "stop" if stopped_by_text else reason
        seq.stream._emit(
            Finished(
                finish_reason="tool_calls" if seq.tool_calls and finish == "stop" else finish,
                prompt_tokens=seq.prompt_tokens,
                completion_tokens=seq.completion_tokens,
                cached_tokens=seq.cached_tokens,
            )
        )
        return True

    @staticmethod
    def _route_segments(
        tokenizer: Any, seq: _Sequence, segments: list[tuple[str | None, str]]
    ) -> tuple[str, list[ToolCall], bool]:
        """Text of the "normal" state is content; text of the "tool" state is a call's body,
        parsed when the state is left; reaching None means a stop string ended the answer."""
        content: list[str] = []
        calls: list[ToolCall] = []
        for index, (state, piece) in enumerate(segments):
            last = index == len(segments) - 1
            if state == "tool":
                seq.tool_text += piece
                if not last:  # the end marker closed this call
                    body = seq.tool_text
                    parsed = _parse_tool_calls(tokenizer, seq, body)
                    if parsed is None:  # not a call after all: keep the text
                        content.append(tokenizer.tool_call_start + body + tokenizer.tool_call_end)
                    else:
                        calls += parsed
            elif state is None:
                return "".join(content), calls, True
            else:
                content.append(piece)
        return "".join(content), calls, False


def _text_machine(tokenizer: Any, request: GenerationRequest) -> TextStateMachine | None:
    """Text-level states of an answer: a stop string ends it (transition to None, the string
    cut and partial matches held back); with tools, the model's tool-call markers switch to
    the "tool" state, whose text is parsed by mlx_lm's tool parser for the model family."""
    transitions: dict[str, list[tuple[str, str | None]]] = {"normal": []}
    if request.tools and tokenizer.has_tool_calling:
        transitions["normal"].append((tokenizer.tool_call_start, "tool"))
        end = tokenizer.tool_call_end
        transitions["tool"] = [(end, "normal")] if end else []
    for stop in request.stop:
        transitions["normal"].append((stop, None))
    if not any(transitions.values()):
        return None
    return TextStateMachine(transitions)


def _grammar(tokenizer: Any, request: GenerationRequest) -> str | None:
    """The grammar this request's answer must follow, if any. A required tool call wins over
    `response_format` (which shapes text content, and a forced call has none). Tool calls are
    forced only in the `json_tools` format (Qwen 2.5/3, Hermes, SmolLM3 and kin); for other
    formats the template still offers the tools, but decoding cannot force a call."""
    from .constrain import grammar_for, tool_call_grammar

    if request.tool_call_required and request.tools and _forceable_tool_calls(tokenizer):
        return tool_call_grammar(
            request.tools,
            list(tokenizer.encode(tokenizer.tool_call_start, add_special_tokens=False)),
            list(tokenizer.encode(tokenizer.tool_call_end, add_special_tokens=False)),
        )
    if request.json_schema is not None:
        return grammar_for(request.json_schema)
    return None


def _forceable_tool_calls(tokenizer: Any) -> bool:
    parser = getattr(tokenizer, "tool_parser", None)
    return (
        bool(tokenizer.has_tool_calling and tokenizer.tool_call_end)
        and getattr(parser, "__module__", "") == "mlx_lm.tool_parsers.json_tools"
    )


def _parse_tool_calls(tokenizer: Any, seq: _Sequence, body: str) -> list[ToolCall] | None:
    """mlx_lm's parser for this model family; None when it cannot parse the body (the caller
    keeps it as content)."""
    seq.tool_text = ""
    try:
        parsed = tokenizer.tool_parser(body, seq.tools)
    except (ValueError, KeyError, TypeError, AttributeError):
        log.warning("could not parse a tool call; returning it as text")
        return None
    calls = []
    for call in parsed if isinstance(parsed, list) else [parsed]:
        arguments = call.get("arguments", {})
        seq.tool_calls += 1
        calls.append(
            ToolCall(
                id=f"call_{uuid.uuid4().hex[:24]}",
                name=str(call.get("name", "")),
                arguments=arguments if isinstance(arguments, str) else json.dumps(arguments),
            )
        )
    return calls


def _adapter_on_base(base: _LoadedModel, adapter_path: Path) -> tuple[Any, Any]:
    """A LoRA adapter applied to a copy of the base model's *structure* whose arrays are the
    base's own: no second copy of the base weights, so the cost is the adapter's size.

    The skeleton is built lazily (its weight files are mapped, never read), then every array
    is replaced by the loaded base's before the adapter's LoRA layers wrap the linears."""
    model, _ = load_model(base.spec.model_path, lazy=True)
    model.update(base.model.parameters())
    model = load_adapters(model, str(adapter_path))
    model.eval()
    mx.eval(model.parameters())
    return model, base.tokenizer


def _unique_arrays(parameters: Any) -> list[Any]:
    """The distinct arrays of a parameter tree (tied weights appear once), last first so that
    popping reads them in file order."""
    seen: dict[int, Any] = {}
    flat: list[tuple[str, Any]] = tree_flatten(parameters)  # type: ignore[assignment]
    for _, array in flat:
        seen.setdefault(id(array), array)
    return list(reversed(seen.values()))


def _load_failed(spec: LoadSpec, exc: BaseException) -> ModelLoadError:
    log.warning("loading %s failed: %s", spec.key, exc)
    what = "adapter" if spec.adapter_path else "model"
    return ModelLoadError(f"The {what} `{spec.key}` could not be loaded")


def _fail_waiters(pending: _PendingLoad, error: Exception) -> None:
    for future in pending.waiters:
        future.get_loop().call_soon_threadsafe(_set_exception, future, error)


def _resolve(future: asyncio.Future[ModelInfo], info: ModelInfo) -> None:
    """Engine thread: settle a load's future on the event loop that awaits it."""
    future.get_loop().call_soon_threadsafe(_set_result, future, info)


def _set_result(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


def _context_length(args: Any) -> int | None:
    for name in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(args, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _prompt_tokens(tokenizer: Any, request: GenerationRequest) -> list[int]:
    if request.messages is None:
        if isinstance(request.prompt, list):
            return list(request.prompt)
        return list(tokenizer.encode(request.prompt or ""))
    if request.tools and not tokenizer.has_tool_calling:
        raise InvalidRequestError(
            "This model's chat template does not support tools; for structured output use "
            "`response_format` with type `json_schema` instead",
            param="tools",
        )
    messages = request.messages
    if not _template_mentions(tokenizer, "developer"):
        # OpenAI's newer name for the system role; most templates know only `system`.
        messages = [{**m, "role": "system"} if m["role"] == "developer" else m for m in messages]
    if tokenizer.has_chat_template and request.role_mapping is None:
        try:
            text = tokenizer.apply_chat_template(
                messages, tools=request.tools, add_generation_prompt=True, tokenize=False
            )
        except Exception as exc:  # noqa: BLE001 - a template error is the request's fault
            raise InvalidRequestError(
                f"The model's chat template rejected the messages: {exc}", param="messages"
            ) from None
        return list(tokenizer.encode(text, add_special_tokens=False))
    return list(tokenizer.encode(_role_mapped_prompt(messages, request.role_mapping)))


def _template_mentions(tokenizer: Any, word: str) -> bool:
    template = getattr(tokenizer, "chat_template", None)
    return bool(template) and word in str(template)


# mlx_lm.server's default prompt layout for models without a chat template.
_DEFAULT_ROLE_MAPPING = {
    "system_prompt": (
        "A chat between a curious user and an artificial intelligence assistant. The "
        "assistant follows the given rules no matter what."
    ),
    "system": "ASSISTANT's RULE: ",
    "user": "USER: ",
    "assistant": "ASSISTANT: ",
    "stop": "\n",
}


def _role_mapped_prompt(messages: list[dict[str, Any]], role_mapping: dict[str, str] | None) -> str:
    mapping = role_mapping or _DEFAULT_ROLE_MAPPING
    parts = [mapping.get("system_prompt", "")]
    for message in messages:
        prefix = mapping.get(message["role"], "")
        parts.append(f"{prefix}{message.get('content') or ''}{mapping.get('stop', '')}")
    parts.append(mapping.get("assistant", "").rstrip())
    return "".join(parts)


def _max_tokens(request: GenerationRequest, prompt_tokens: int, context: int | None) -> int:
    if prompt_tokens == 0:
        raise InvalidRequestError("The prompt is empty", param="prompt")
    if context is not None and prompt_tokens >= context:
        raise ContextLengthExceededError(
            f"This model's maximum context length is {context} tokens, but the prompt has "
            f"{prompt_tokens} tokens",
            param="messages" if request.messages is not None else "prompt",
        )
    if request.max_tokens is None:
        room = context - prompt_tokens if context is not None else request.default_max_tokens
        return min(request.default_max_tokens, room)
    if context is not None and prompt_tokens + request.max_tokens > context:
        raise ContextLengthExceededError(
            f"This model's maximum context length is {context} tokens, but {prompt_tokens} "
            f"prompt tokens plus max_tokens={request.max_tokens} exceed it",
            param="max_tokens",
        )
    return request.max_tokens


def _check_token_ids(request: GenerationRequest, vocab_size: int) -> None:
    if isinstance(request.prompt, list) and any(not 0 <= t < vocab_size for t in request.prompt):
        raise InvalidRequestError("The prompt has token ids outside the vocabulary", param="prompt")
    bias = request.sampling.logit_bias or {}
    if any(not 0 <= t < vocab_size for t in bias):
        raise InvalidRequestError(
            "logit_bias has token ids outside the vocabulary", param="logit_bias"
        )


def _make_sampler(sampling: SamplingParams) -> Callable[[mx.array], mx.array]:
    """mlx_lm's sampler; a seeded request gets the same filters with its own PRNG key, so it
    repeats even while it shares a batch with other requests (mlx_lm's draws from the global
    random state)."""
    temperature = 1.0 if sampling.temperature is None else sampling.temperature
    if sampling.seed is None or temperature == 0:
        sampler: Callable[[mx.array], mx.array] = make_sampler(
            temp=temperature,
            top_p=sampling.top_p,
            min_p=sampling.min_p,
            top_k=sampling.top_k,
        )
        return sampler
    filters: list[Callable[[mx.array], mx.array]] = []
    if 0 < sampling.top_p < 1.0:
        filters.append(lambda x: apply_top_p(x, sampling.top_p))
    if sampling.min_p > 0:
        filters.append(lambda x: apply_min_p(x, sampling.min_p))
    if sampling.top_k > 0:
        filters.append(lambda x: apply_top_k(x, sampling.top_k))
    key = [mx.random.key(sampling.seed)]

    def sample(logprobs: mx.array) -> mx.array:
        for apply in filters:
            logprobs = apply(logprobs)
        key[0], draw = mx.random.split(key[0])
        return mx.random.categorical(logprobs * (1.0 / temperature), key=draw)

    return sample


def _token_logprob(tokenizer: Any, logprobs: mx.array, token: int, top: int) -> TokenLogprob:
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

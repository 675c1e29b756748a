"""`Engine`: the one thread that makes every mlx / mlx_lm call, and the coroutines the event
loop awaits it with.

MLX streams are thread-local (mlx >= 0.31.2), so arrays made on one thread cannot be used on
another; keeping loads, unloads, tokenisation, prefill and decoding on one thread is what
makes the daemon safe on Metal and CUDA. The event loop talks to the thread through a command
queue and gets results back through futures and per-request `GenerationStream` channels.

Each loaded model gets an mlx_lm `BatchGenerator`, so concurrent requests to one model decode
together (continuous batching); the thread steps every busy model in turn, so requests to
different models interleave fairly. Requests the batch cannot take (a draft model, a quantized
KV cache) run as solo sequences stepped in the same turns (see `solo`). Loads do not stall
them either (see `loading`); the prompt cache is `prefix`.
The thread also sets MLX's buffer-cache limit and publishes MLX's memory figures after each
command and turn (`loading.MemoryWatch`), so other threads never call MLX to read them.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import mlx.core as mx
from mlx_lm.generate import BatchGenerator

from ..errors import EngineError, ModelLoadError
from .admission import Prepared, prepare
from .bridge import Command, GenerationStream, Outbox, reject, resolve
from .disk_cache import DiskCache
from .embedding import Embedders, lazy_embedder
from .loading import (
    LOAD_SLICE_BYTES,
    MemoryWatch,
    MlxMemory,
    PendingLoads,
    adapter_on_base,
    free_memory,
    load_failed,
)
from .output import SequenceOutput
from .prefix import CacheCounts, Prefills, PrefixCache
from .prompt import (
    context_length,
    encode_prompt,
)
from .solo import SoloSequence, end_solos, start_solo, step_solos
from .types import EmbeddingRequest, GenerationRequest, LoadSpec, ModelInfo, Started

log = logging.getLogger(__name__)
T = TypeVar("T")

# How long the idle thread sleeps on its queue before checking for shutdown.
_IDLE_POLL_S = 0.5
# An idle engine woken by a command waits this long for more before it steps (up to the cap),
# so a burst of requests is prefilled in one batch rather than one first and the rest a whole
# prefill later; a lone request pays at most one window.
_BURST_WINDOW_S = 0.005
_BURST_CAP_S = 0.05


@dataclass(slots=True)
class _Sequence:
    """A request being decoded; lives on the engine thread only."""

    stream: GenerationStream
    output: SequenceOutput


@dataclass(slots=True)
class _LoadedModel:
    """Engine-thread state of one loaded model."""

    spec: LoadSpec
    model: Any
    tokenizer: Any
    info: ModelInfo
    prefix: PrefixCache  # prefilled prompts' and finished sequences' KV caches by prefix
    batch: Any = None  # BatchGenerator, made on first use
    ll_tokenizer: Any = None  # llguidance's tokenizer, made on the first constrained request
    sequences: dict[int, _Sequence] = field(default_factory=dict)
    #: batched prefills under way, and requests waiting to start from one's KV cache
    prefills: Prefills = field(default_factory=Prefills)
    #: requests the batch cannot take (a draft model, a quantized KV cache): `solo`
    solos: list[SoloSequence] = field(default_factory=list)
    #: a vision-language model's processor and waiting requests (`vision`); None for text
    vision: Any = None

    @property
    def busy(self) -> bool:
        return bool(self.sequences or self.solos or (self.vision and self.vision.waiting))

    def grammar_tokenizer(self) -> Any:
        """llguidance's tokenizer for this model, for the JSON and tool-call grammars."""
        if self.ll_tokenizer is None:
            from .constrain import tokenizer_for

            self.ll_tokenizer = tokenizer_for(self.tokenizer, self.info.vocab_size)
        return self.ll_tokenizer


class Engine:
    """Owner of the MLX thread. Public coroutines may be awaited from the event loop; they
    never block it. `close()` blocks until the thread has released every model."""

    def __init__(
        self,
        *,
        name: str = "mlx-engine",
        prompt_cache_bytes: int = 256 * 2**20,
        load_slice_bytes: int = LOAD_SLICE_BYTES,
        mlx_cache_bytes: int | None = None,
        disk_cache: DiskCache | None = None,
    ) -> None:
        #: KV caches kept per loaded entry for prefix reuse; 0 turns reuse off
        self.prompt_cache_bytes = prompt_cache_bytes
        #: prompt caches written when a model unloads and read back (None: off)
        self.disk_cache = disk_cache
        #: prompt-cache hits and misses per tier (plain ints: /metrics reads them)
        self.cache_counts = CacheCounts()
        #: weight bytes evaluated per engine step while a model loads
        self.load_slice_bytes = load_slice_bytes
        #: MLX's buffer-cache limit (None: MLX's default) and figures
        self.mlx_memory = MemoryWatch(mlx_cache_bytes)
        self._started = threading.Event()
        self._commands: queue.SimpleQueue[Command | None] = queue.SimpleQueue()
        self._models: dict[str, _LoadedModel] = {}
        self._embedders = Embedders()  # embedding models: batches between the decoding steps
        self._loads = PendingLoads(wake=self._wake, name=name)
        self._outbox = Outbox()
        self._stop = False
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._started.wait()  # the cache limit is set and the first figures are published

    # ---- event-loop side -------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        return self._thread.is_alive() and self._failure is None

    async def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the engine thread and await its result (exceptions propagate)."""
        if not self.healthy:
            raise EngineError("The generation engine has stopped")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._commands.put(Command(fn, future))
        return await future

    async def load(self, spec: LoadSpec) -> ModelInfo:
        """Load a model (and adapter) on the engine thread. Slow: seconds to minutes, during
        which the models already loaded keep generating."""
        loaded: asyncio.Future[ModelInfo] = asyncio.get_running_loop().create_future()
        await self.call(lambda: self._start_load(spec, loaded))
        return await loaded

    async def unload(self, key: str) -> None:
        """Drop a model; its in-flight requests end with an error. Memory is returned."""
        await self.call(lambda: self._unload(key))

    async def generate(
        self, key: str, request: GenerationRequest | EmbeddingRequest
    ) -> GenerationStream:
        """Queue a request on a loaded model and return its channel once the prompt is
        accepted (so prompt errors surface before any response is sent)."""
        loop = asyncio.get_running_loop()
        stream = GenerationStream(loop, self._wake, self._outbox)
        if isinstance(request, EmbeddingRequest):
            await self.call(lambda: self._embedders.submit(key, request, stream))
        else:
            await self.call(lambda: self._submit(key, request, stream))
        return stream

    async def count_tokens(self, key: str, request: GenerationRequest) -> int:
        """The prompt's length in tokens, encoded as `generate` would (nothing is queued)."""

        def count() -> int:
            loaded = self._models.get(key)
            if loaded is None:
                raise EngineError(f"The model `{key}` is not loaded")
            if loaded.vision is not None:  # its images' tokens included
                return len(loaded.vision.inputs(loaded.model, loaded.tokenizer, request).prompt)
            return len(encode_prompt(loaded.tokenizer, request))

        return await self.call(count)

    async def set_prompt_cache_bytes(self, nbytes: int) -> None:
        """Resize every loaded model's prompt cache (a live config edit); caches over the new
        size drop their least recently used entries now, on the engine thread."""

        def resize() -> None:
            self.prompt_cache_bytes = nbytes
            for loaded in self._models.values():
                loaded.prefix.resize(nbytes)

        await self.call(resize)

    async def set_mlx_cache_bytes(self, nbytes: int | None) -> None:
        """Change MLX's buffer-cache limit (a live config edit; None: MLX's default); MLX
        trims a cache over the new limit."""
        await self.call(lambda: self.mlx_memory.set_cache_limit(nbytes))

    def prompt_cache_figures(self) -> dict[str, int]:
        """Any thread: prompt-cache hits and misses per tier, and the disk cache's bytes."""
        counts = self.cache_counts
        return {
            "memory_hits": counts.memory_hits,
            "memory_misses": counts.memory_misses,
            "disk_hits": counts.disk_hits,
            "disk_misses": counts.disk_misses,
            "disk_bytes": self.disk_cache.nbytes if self.disk_cache is not None else 0,
        }

    async def set_disk_cache_bytes(self, nbytes: int) -> None:
        """A live config edit of the disk cache's budget: files over it go now."""
        if self.disk_cache is not None:
            disk = self.disk_cache
            await self.call(lambda: disk.resize(nbytes))

    def memory(self) -> MlxMemory:
        """Any thread: MLX's active, cache and peak bytes as of the engine's last command or
        turn (at most one idle poll, half a second, old)."""
        return self.mlx_memory.figures

    def active_memory(self) -> int:
        return self.mlx_memory.figures.active_bytes

    def close(self, timeout: float = 60.0) -> None:
        """Stop the thread after its current step and wait for it: an MLX thread still
        running when the process exits can abort the exit (a long prefill step on a CPU
        takes minutes, hence the generous wait, and a log line when even that is not enough)."""
        self._stop = True
        self._commands.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("the engine thread did not stop within %.0f s", timeout)
        self._loads.shutdown()

    def _wake(self) -> None:
        # An empty command makes an idle thread look at its sequences again.
        self._commands.put(None)

    # ---- engine thread -----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            # Streams are per thread: make this thread's default stream the one MLX work runs on.
            self._stream = mx.default_stream(mx.default_device())
            self.mlx_memory.set_cache_limit(self.mlx_memory.cache_bytes)
        finally:
            self._started.set()  # even if that failed: the constructor must not wait forever
        try:
            while not self._stop:
                busy = any(m.busy for m in self._models.values()) or self._loads.reading
                busy = busy or self._embedders.busy
                self._drain_commands(block=not busy)
                self._outbox.flush()  # Started events and errors of the commands just run
                self._step_all()
                self._advance_loads()
                self.mlx_memory.publish()
                self._outbox.flush()  # this turn's tokens, one wake-up per event loop
        except BaseException as exc:  # the thread must report why it died, then stop
            log.exception("engine thread failed")
            self._failure = exc
            for loaded in self._models.values():
                for seq in loaded.sequences.values():
                    seq.stream.emit(EngineError("The generation engine failed"))
                for stream, _ in loaded.prefills.clear():
                    stream.emit(EngineError("The generation engine failed"))
                end_solos(loaded.solos, EngineError("The generation engine failed"))
                if loaded.vision is not None:
                    loaded.vision.fail_all(EngineError("The generation engine failed"))
            self._embedders.fail_all(EngineError("The generation engine failed"))
        finally:
            self._outbox.flush()
            stopped = EngineError("The generation engine stopped")
            self._loads.fail_all(stopped)
            self._embedders.fail_all(stopped)
            self._models.clear()
            self._loads.tokenizers.clear()
            free_memory()
            # MLX keeps this thread's streams (and their C++ worker threads) in thread-local
            # storage; mlx asks threads to destroy them before they exit, or teardown order at
            # process exit is undefined (ml-explore/mlx#3355, #3395).
            mx.clear_streams()

    def _step_all(self) -> None:
        # A method of its own so no loop variable keeps an unloaded model alive.
        for loaded in list(self._models.values()):
            if loaded.sequences:
                self._step_safely(loaded)
            if loaded.vision is not None:
                loaded.vision.start_next(loaded)
            if loaded.solos:
                step_solos(loaded.solos, loaded.spec.key)
        sharing = any(loaded.busy for loaded in self._models.values())
        self._embedders.step(self._stream, sharing=sharing)

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

    def _execute(self, command: Command) -> None:
        try:
            result = command.run()
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            reject(command.future, exc)
        else:
            # Published before the answer: whoever awaited a load or unload sees its effect.
            self.mlx_memory.publish()
            resolve(command.future, result)

    def _start_load(self, spec: LoadSpec, loaded: asyncio.Future[ModelInfo]) -> None:
        """Start loading `spec`; `loaded` resolves once it is registered. A model already
        loaded or loading is shared, an adapter on a loaded base loads at once, anything else
        is read a slice per engine step (`_advance_loads`)."""
        if spec.key in self._models:
            resolve(loaded, self._models[spec.key].info)
            return
        embedder = self._embedders.info(spec.key)
        if embedder is not None:
            resolve(loaded, embedder)
            return
        if spec.vision:  # read at once, as mlx-vlm loads it (see `vision`)
            from .vision import load_vision

            started = time.perf_counter()
            model, tokenizer, vision, nbytes, config = load_vision(spec, self._loads.tokenizers)
            info = self._register(spec, model, tokenizer, nbytes, started, config=config)
            self._models[spec.key].vision = vision
            resolve(loaded, info)
            return
        if self._loads.join(spec, loaded):
            return
        base = self._models.get(spec.base_key) if spec.base_key else None
        if spec.adapter_path is not None and base is not None:
            # Shares the base's arrays: only the small adapter is read, at once.
            started = time.perf_counter()
            model, nbytes = adapter_on_base(
                spec, spec.adapter_path, base_path=base.spec.model_path, base_model=base.model
            )
            self._loads.tokenizers.share(base.tokenizer)  # released when the adapter unloads
            resolve(loaded, self._register(spec, model, base.tokenizer, nbytes, started))
            return
        self._loads.start(spec, loaded, lazy_embedder if spec.embedding else None)

    def _advance_loads(self) -> None:
        """Read one slice of weights, then register every load that is complete."""
        for pending, tokenizer in self._loads.advance(self.load_slice_bytes):
            register = self._embedders.register if pending.spec.embedding else self._register
            try:
                info = register(
                    pending.spec, pending.model, tokenizer, pending.nbytes, pending.started
                )
            except Exception as exc:  # noqa: BLE001 - a model's odd files fail its load only
                self._loads.tokenizers.release(tokenizer)
                failed = load_failed(pending.spec, exc)
                for future in pending.waiters:
                    reject(future, failed)
                free_memory()
                continue
            self.mlx_memory.publish()
            for future in pending.waiters:
                resolve(future, info)

    def _register(
        self,
        spec: LoadSpec,
        model: Any,
        tokenizer: Any,
        nbytes: int,
        started: float,
        *,
        config: Any = None,
    ) -> ModelInfo:
        config = config if config is not None else getattr(model, "args", None)
        info = ModelInfo(
            nbytes=nbytes,
            context_length=context_length(config),
            vocab_size=int(getattr(config, "vocab_size", 0) or len(tokenizer.vocab)),
            has_chat_template=bool(tokenizer.has_chat_template),
            load_seconds=time.perf_counter() - started,
        )
        prefix = PrefixCache(
            spec.key,
            self.prompt_cache_bytes,
            counts=self.cache_counts,
            disk=self.disk_cache,
            # mlx-vlm's caches are not mlx_lm's to write and read back: memory only
            fingerprint="" if spec.vision else spec.fingerprint,
        )
        self._models[spec.key] = _LoadedModel(spec, model, tokenizer, info, prefix)
        return info

    def _unload(self, key: str) -> None:
        self._loads.abandon(key, ModelLoadError(f"The model `{key}` was unloaded"))
        if key in self._embedders:
            tokenizer = self._embedders.unload(key, EngineError(f"The model `{key}` was unloaded"))
            self._loads.tokenizers.release(tokenizer)
            del tokenizer
            free_memory()
        loaded = self._models.pop(key, None)
        if loaded is None:
            return
        gone = EngineError(f"The model `{key}` was unloaded")
        for seq in loaded.sequences.values():
            seq.stream.emit(gone)
        for stream, _ in loaded.prefills.clear():
            stream.emit(gone)
        end_solos(loaded.solos, gone)
        if loaded.vision is not None:
            loaded.vision.fail_all(gone)
        for other in self._models.values():  # sequences it was drafting for
            end_solos(other.solos, gone, drafted_by=key)
        if loaded.batch is not None:
            loaded.batch.close()
        try:
            loaded.prefix.persist()  # blocks this thread while it writes (see disk_cache)
        except Exception:
            log.exception("writing the prompt caches of %s failed", key)
        self._loads.tokenizers.release(loaded.tokenizer)
        del loaded
        # Drop the last references, then hand the buffers back to the OS.
        free_memory()

    def _submit(self, key: str, request: GenerationRequest, stream: GenerationStream) -> None:
        loaded = self._models.get(key)
        if loaded is None:
            raise EngineError(f"The model `{key}` is not loaded")
        if loaded.vision is not None:  # one at a time, in turn (see `vision`)
            loaded.vision.submit(loaded, request, stream, self._models)
            return
        ready = prepare(loaded, request, self._models)
        if ready.solo:
            tokens_key, kind = ready.key, ready.kind
            sequence = start_solo(
                loaded.model,
                ready.rest,
                (stream, ready.output(loaded.tokenizer), ready.decoding),
                options=request.options,
                mx_stream=self._stream,
                cache=ready.cache,
                keep=lambda tokens, kv: loaded.prefix.keep(tokens_key + tokens, kv, kind),
                draft=ready.draft,
            )
            loaded.solos.append(sequence)
            stream.emit(Started(prompt_tokens=len(ready.prompt), cached_tokens=ready.cached))
        else:
            self._batch(loaded, stream, ready)

    def _batch(self, loaded: _LoadedModel, stream: GenerationStream, ready: Prepared) -> None:
        """Add a request to its model's batch, or have it wait for a prefill under way that
        covers more of its prompt than the cache does (`Prefills.owner`)."""
        owner = loaded.prefills.owner(ready.prompt, ready.cached) if loaded.prefix.on else None
        if owner is not None:
            ready.cache = None  # fetched again, longer, when the owner's prefill ends
            loaded.prefills.wait(owner, (stream, ready))
            return
        if loaded.batch is None:
            loaded.batch = BatchGenerator(loaded.model, stream=self._stream)
        decoding, cached = ready.decoding, ready.cached
        (uid,) = loaded.batch.insert(
            [ready.rest],
            max_tokens=[decoding.max_tokens],
            caches=[ready.cache] if ready.cache is not None else None,
            all_tokens=[ready.prompt[:cached]],
            samplers=[decoding.sampler],
            logits_processors=[decoding.processors],
            stop_sequences=[decoding.stop],
        )
        ready.cache = None  # the batch owns it now
        loaded.sequences[uid] = _Sequence(stream, ready.output(loaded.tokenizer))
        if len(ready.rest) > 1 and loaded.prefix.on:
            loaded.prefills.start(uid, ready.prompt)
        stream.emit(Started(prompt_tokens=len(ready.prompt), cached_tokens=ready.cached))

    def _prefilled(self, loaded: _LoadedModel, uids: list[int]) -> None:
        """Sequences whose prompt (all but its last token) was just prefilled: their KV
        caches join the prompt cache at once, and the requests waiting for them start from
        it (mlx_lm.server's caches saved at the end of a prompt segment)."""
        for cache, tokens in loaded.batch.extract_cache(uids).values():
            loaded.prefix.keep(list(tokens), cache)
        self._release(loaded, uids)

    def _release(self, loaded: _LoadedModel, uids: list[int]) -> None:
        """The prefills of `uids` ended or stopped: whoever waited for them goes on."""
        for uid in uids:
            for stream, ready in loaded.prefills.end(uid):
                ready.cache, ready.rest = loaded.prefix.fetch(ready.prompt, ready.kind)
                self._batch(loaded, stream, ready)

    def _step_safely(self, loaded: _LoadedModel) -> None:
        """A failure while decoding fails that model's requests, not the thread."""
        try:
            self._step(loaded)
        except Exception:
            log.exception("decoding on %s failed; its requests end with an error", loaded.spec.key)
            for seq in loaded.sequences.values():
                seq.stream.emit(EngineError("Generation failed on this model"))
            for stream, _ in loaded.prefills.clear():
                stream.emit(EngineError("Generation failed on this model"))
            loaded.sequences.clear()
            loaded.batch = None

    def _step(self, loaded: _LoadedModel) -> None:
        """One decode step for every sequence of one model."""
        cancelled = [uid for uid, seq in loaded.sequences.items() if seq.stream.cancelled]
        if cancelled:
            loaded.batch.remove(cancelled)
            for uid in cancelled:
                del loaded.sequences[uid]
            self._release(loaded, cancelled)
            if not loaded.sequences:
                return
        prefills, responses = loaded.batch.next()
        prefilled = [r.uid for r in prefills if r.end_of_segment and not r.end_of_prompt]
        if prefilled:
            self._prefilled(loaded, prefilled)
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
            # The batch drops sequences it finished itself; a stop string ends one early.
            loaded.prefix.keep_removed(loaded.batch, finished)

    def _deliver(self, loaded: _LoadedModel, seq: _Sequence, response: Any) -> bool:
        """Emit what one token makes of the answer (see `SequenceOutput`). True when the
        sequence ended."""
        events = seq.output.feed(int(response.token), response.finish_reason, response.logprobs)
        for event in events:
            seq.stream.emit(event)
        if not seq.output.finished:
            return False
        if response.finish_reason is not None and response.all_tokens is not None:
            loaded.prefix.keep(list(response.all_tokens), response.prompt_cache)
        return True

"""Loading models without stalling generation, and LoRA adapters on a loaded base.

A load builds the model with lazily mapped weights (`mlx_lm.utils.load_model(lazy=True)`),
then `PendingLoads.advance` evaluates them a slice per engine step, between the decoding steps
of the models already loaded; the tokenizer, which makes no MLX arrays, loads meanwhile on a
side thread (or comes off the `TokenizerShelf` when the same files were loaded before). A
weight or tokenizer file that fails to read fails only its own load.

Building a model (or an adapter's LoRA layers) initialises every parameter with `mx.random`,
and each draw extends MLX's global random state by a lazy node; the loaded weights replace the
drawn ones, so nothing would ever evaluate that chain and it would stay for the life of the
process (about 1.3 KB per parameter array, every load). `settle_random_state` evaluates it
after every build, and after a failed one.

Also the engine's other dealings with MLX's memory: freeing it, reading its figures, and its
buffer-cache limit. Engine thread only, except `PendingLoads.shutdown`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx.utils import tree_flatten
from mlx_lm.tuner.utils import load_adapters
from mlx_lm.utils import load_config, load_model, load_tokenizer

from ..errors import ModelLoadError
from .bridge import reject
from .tokenizer_shelf import TokenizerKey, TokenizerShelf, tokenizer_key
from .types import LoadSpec, ModelInfo

log = logging.getLogger(__name__)

# Weights evaluated per engine step while a model loads: small enough that streams of loaded
# models keep flowing, large enough that the reads stay sequential and fast.
LOAD_SLICE_BYTES = 64 * 2**20


@dataclass(slots=True)
class PendingLoad:
    """A model whose weights are being read between generation steps (engine thread only)."""

    spec: LoadSpec
    model: Any
    tokenizer: concurrent.futures.Future[Any]  # loading on the tokenizer thread, or shelved
    tokenizer_key: TokenizerKey
    shelved: bool  # the tokenizer came off the shelf (done at once, counted in use there)
    unread: list[Any]  # parameter arrays not yet evaluated, in file order
    nbytes: int
    started: float
    waiters: list[asyncio.Future[ModelInfo]]  # each resolved on its own event loop


class PendingLoads:
    """The loads under way, oldest first. `advance` reads the oldest one's next slice and
    hands back the loads that are ready; the engine registers them and settles their waiters.
    """

    def __init__(self, *, wake: Callable[[], None], name: str) -> None:
        self._pending: list[PendingLoad] = []
        self._wake = wake
        self.tokenizers = TokenizerShelf()
        # Tokenizers never touch MLX, so they may load off the engine thread, beside weights.
        self._tokenizer_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"{name}-tokenizer"
        )

    @property
    def reading(self) -> bool:
        """Some load has weights still to read: the engine has work without any request."""
        return any(pending.unread for pending in self._pending)

    def join(self, spec: LoadSpec, loaded: asyncio.Future[ModelInfo]) -> bool:
        """Have `loaded` settle with a load of `spec` already under way, if there is one."""
        for pending in self._pending:
            if pending.spec == spec:
                pending.waiters.append(loaded)
                return True
        return False

    def start(
        self,
        spec: LoadSpec,
        loaded: asyncio.Future[ModelInfo],
        build: Callable[[LoadSpec], Any] | None = None,
    ) -> None:
        """Build the model with lazily mapped weights (`build`, by default mlx_lm's model with
        its adapter) and start its tokenizer; the weights are then read a slice per `advance`
        and `loaded` settles at the end. Raises `ModelLoadError` when the model cannot even be
        built."""
        started = time.perf_counter()
        shelved: Any = None
        try:
            eos_token_ids = load_config(spec.model_path).get("eos_token_id")
            key = tokenizer_key(
                spec.model_path,
                trust_remote_code=spec.trust_remote_code,
                eos_token_ids=eos_token_ids,
            )
            tokenizer: concurrent.futures.Future[Any] = concurrent.futures.Future()
            shelved = self.tokenizers.take(key)
            if shelved is not None:
                tokenizer.set_result(shelved)
            else:
                # The tokenizer starts first, so it loads while the model is built and read.
                tokenizer = self._tokenizer_pool.submit(
                    load_tokenizer,
                    spec.model_path,
                    {"trust_remote_code": spec.trust_remote_code},
                    eos_token_ids=eos_token_ids,
                )
                tokenizer.add_done_callback(lambda _: self._wake())
            model = (build or lazy_model)(spec)
            settle_random_state()
        except Exception as exc:  # noqa: BLE001 - any load failure is this model's, not ours
            if shelved is not None:
                self.tokenizers.release(shelved)
            free_memory()
            raise load_failed(spec, exc) from None
        unread = _unique_arrays(model.parameters())
        self._pending.append(
            PendingLoad(
                spec=spec,
                model=model,
                tokenizer=tokenizer,
                tokenizer_key=key,
                shelved=shelved is not None,
                unread=unread,
                nbytes=sum(int(a.nbytes) for a in unread),
                started=started,
                waiters=[loaded],
            )
        )

    def advance(self, slice_bytes: int) -> list[tuple[PendingLoad, Any]]:
        """Read one slice (about `slice_bytes`) of the oldest load's weights, then take out
        every load whose weights and tokenizer are both ready: returned with its tokenizer, or
        failed when its tokenizer failed."""
        reading = next((pending for pending in self._pending if pending.unread), None)
        if reading is not None:
            batch: list[Any] = []
            budget = slice_bytes
            while reading.unread and (budget > 0 or not batch):
                array = reading.unread.pop()
                batch.append(array)
                budget -= int(array.nbytes)
            try:
                mx.eval(batch)
            except Exception as exc:  # noqa: BLE001 - a corrupt weight file fails its load only
                self._abandon(reading, load_failed(reading.spec, exc))
        ready: list[tuple[PendingLoad, Any]] = []
        for pending in [p for p in self._pending if not p.unread and p.tokenizer.done()]:
            self._pending.remove(pending)
            try:
                tokenizer = pending.tokenizer.result()
            except Exception as exc:  # noqa: BLE001 - as above, for the tokenizer files
                self._abandon(pending, load_failed(pending.spec, exc))
                continue
            if not pending.shelved:
                tokenizer = self.tokenizers.put(pending.tokenizer_key, tokenizer)
            ready.append((pending, tokenizer))
        return ready

    def abandon(self, key: str, error: Exception) -> None:
        """Fail the loads of `key` under way (it was unloaded meanwhile)."""
        for pending in [p for p in self._pending if p.spec.key == key]:
            self._abandon(pending, error)

    def fail_all(self, error: Exception) -> None:
        """The engine is stopping: every load under way fails with `error`."""
        for pending in self._pending:
            _fail_waiters(pending, error)
        self._pending.clear()

    def shutdown(self) -> None:
        """Any thread: stop the tokenizer thread, dropping the tokenizer loads not started."""
        self._tokenizer_pool.shutdown(wait=False, cancel_futures=True)

    def _abandon(self, pending: PendingLoad, error: Exception) -> None:
        if pending in self._pending:
            self._pending.remove(pending)
        if pending.shelved:
            self.tokenizers.release(pending.tokenizer.result())
        pending.tokenizer.cancel()
        _fail_waiters(pending, error)
        free_memory()


def lazy_model(spec: LoadSpec) -> Any:
    """mlx_lm's model for `spec` (and its adapter), its weights mapped but not yet read."""
    model, _ = load_model(spec.model_path, lazy=True, trust_remote_code=spec.trust_remote_code)
    if spec.adapter_path is not None:
        model = load_adapters(model, str(spec.adapter_path))
        model.eval()
    return model


def adapter_on_base(
    spec: LoadSpec, adapter_path: Path, *, base_path: Path, base_model: Any
) -> tuple[Any, int]:
    """A LoRA adapter applied to a copy of the base model's *structure* whose arrays are the
    base's own: no second copy of the base weights, so the cost (the bytes returned beside
    the model) is the adapter's size.

    The skeleton is built lazily (its weight files are mapped, never read), then every array
    is replaced by the loaded base's before the adapter's LoRA layers wrap the linears. The
    adapter is read at once; raises `ModelLoadError` when it cannot be."""
    before = mx.get_active_memory()
    try:
        model, _ = load_model(base_path, lazy=True)
        model.update(base_model.parameters())
        model = load_adapters(model, str(adapter_path))
        model.eval()
        mx.eval(model.parameters())
        settle_random_state()
    except Exception as exc:  # noqa: BLE001 - any load failure is this adapter's, not ours
        free_memory()
        raise load_failed(spec, exc) from None
    return model, max(int(mx.get_active_memory() - before), 0)


def load_failed(spec: LoadSpec, exc: BaseException) -> ModelLoadError:
    log.warning("loading %s failed: %s", spec.key, exc, extra={"model": spec.key})
    what = "adapter" if spec.adapter_path else "model"
    return ModelLoadError(f"The {what} `{spec.key}` could not be loaded")


@dataclass(frozen=True, slots=True)
class MlxMemory:
    """MLX's own figures (bytes), as the engine thread last read them."""

    #: held by live arrays: weights, KV caches, a step's activations
    active_bytes: int = 0
    #: freed buffers MLX keeps for reuse instead of returning them to the system
    cache_bytes: int = 0
    #: the most active memory since the process started
    peak_bytes: int = 0


class MemoryWatch:
    """MLX's buffer-cache limit, and its figures as the engine thread last read them.

    MLX's counters are process-wide and its allocator updates them under a lock but reads them
    without one, so only the engine thread reads them (`publish`); `figures` is one immutable
    value, replaced in one assignment, that any thread may read."""

    def __init__(self, cache_bytes: int | None) -> None:
        #: the buffer-cache limit (process-wide); None: MLX's own default
        self.cache_bytes = cache_bytes
        self.figures = MlxMemory()
        self._default: int | None = None  # MLX's limit before ours (MLX has no getter)

    def set_cache_limit(self, nbytes: int | None) -> None:
        """Engine thread: set (or, with None, restore) the limit; MLX trims a fuller cache."""
        self.cache_bytes = nbytes
        if nbytes is not None:
            previous = int(mx.set_cache_limit(nbytes))
            if self._default is None:
                self._default = previous
        elif self._default is not None:
            mx.set_cache_limit(self._default)
            self._default = None
        self.publish()

    def publish(self) -> None:
        """Engine thread: read MLX's figures now."""
        self.figures = MlxMemory(
            active_bytes=int(mx.get_active_memory()),
            cache_bytes=int(mx.get_cache_memory()),
            peak_bytes=int(mx.get_peak_memory()),
        )


def settle_random_state() -> None:
    """Evaluate MLX's global random state, collapsing the lazy chain that the parameter draws
    of a model build left behind (see the module's docstring)."""
    mx.eval(mx.random.state)


def free_memory() -> None:
    """Drop the last references to freed arrays (and any random chain a failed build left),
    then hand MLX's buffers back to the OS."""
    gc.collect()
    settle_random_state()
    mx.clear_cache()


def _unique_arrays(parameters: Any) -> list[Any]:
    """The distinct arrays of a parameter tree (tied weights appear once), last first so that
    popping reads them in file order."""
    seen: dict[int, Any] = {}
    flat: list[tuple[str, Any]] = tree_flatten(parameters)  # type: ignore[assignment]
    for _, array in flat:
        seen.setdefault(id(array), array)
    return list(reversed(seen.values()))


def _fail_waiters(pending: PendingLoad, error: Exception) -> None:
    for future in pending.waiters:
        reject(future, error)

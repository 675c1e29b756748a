"""What loads and unloads leave behind (issue 22), with real MLX and tiny models.

Building a model draws every parameter from MLX's global random state, and each draw extends
that state by a lazy node; the loaded weights replace the drawn ones, so unless the engine
evaluates the state the chain stays for the life of the process (about 1.3 KB per parameter
array, every load). The chain is observed through `mx.export_to_dot`, which writes the
unevaluated graph behind an array: a node per primitive, none once the state is evaluated.

Also: MLX's own memory figures reach `/admin/pool` and `/metrics`, and `pool.mlx_cache_bytes`
sets MLX's buffer-cache limit at start and on a live edit.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import mlx.core as mx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tinymodel import make_tiny_adapter, make_tiny_model

from mlxrouter.config import parse_config
from mlxrouter.daemon import Daemon
from mlxrouter.engine import Chunk, Engine, GenerationRequest, LoadSpec, SamplingParams
from mlxrouter.errors import ModelLoadError

CYCLES = 5
MiB = 2**20


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("leaks")
    make_tiny_model(root / "tiny", seed=1, layers=4)
    make_tiny_adapter(root / "style", root / "tiny", base_ref="tiny", seed=1, layers=4)
    # A model whose weight file lacks a layer: it is built (its parameters drawn), then its
    # weights fail to load, so the load fails after the draws.
    broken = make_tiny_model(root / "broken", seed=2, layers=4)
    weights = mx.load(str(broken / "model.safetensors"))
    assert isinstance(weights, dict)
    del weights["model.layers.3.mlp.down_proj.weight"]
    mx.save_safetensors(str(broken / "model.safetensors"), weights)
    mx.eval(mx.random.state)  # the fixtures' own draws are no engine's business
    return root


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    engine = Engine(prompt_cache_bytes=0)
    yield engine
    engine.close()


def random_state_graph() -> int:
    """Engine thread: primitives in the lazy graph behind MLX's random state (0: evaluated)."""
    with tempfile.TemporaryDirectory() as folder:
        dot = Path(folder) / "state.dot"
        mx.export_to_dot(str(dot), mx.random.state[0])
        return dot.read_text().count("label =")


def model_spec(root: Path) -> LoadSpec:
    return LoadSpec("tiny", root / "tiny")


def adapter_spec(root: Path, *, base: bool) -> LoadSpec:
    """The adapter on a loaded base (`base`), or built with a base of its own."""
    return LoadSpec(
        "style", root / "tiny", adapter_path=root / "style", base_key="tiny" if base else None
    )


async def test_load_and_unload_cycles_leave_no_random_chain(engine: Engine, models: Path) -> None:
    assert await engine.call(random_state_graph) == 0
    for _ in range(CYCLES):
        await engine.load(model_spec(models))
        await engine.unload("tiny")
    # Without evaluating the state after each build: hundreds of primitives, more every cycle.
    assert await engine.call(random_state_graph) == 0


async def test_embedding_load_cycles_leave_no_random_chain_and_give_memory_back(
    engine: Engine, embedding_model: Path
) -> None:
    """Embedding models take the chat models' load path (`PendingLoads`): the encoder's
    parameter draws are settled, and an unload gives its weights back to MLX."""
    assert await engine.call(random_state_graph) == 0
    await engine.load(LoadSpec("minilm", embedding_model, embedding=True))
    await engine.unload("minilm")
    before = engine.active_memory()
    for _ in range(CYCLES):
        info = await engine.load(LoadSpec("minilm", embedding_model, embedding=True))
        assert info.nbytes > 80 * MiB  # MiniLM's 90 MB of float32 weights, read
        await engine.unload("minilm")
    assert await engine.call(random_state_graph) == 0
    assert engine.active_memory() - before < 1 * MiB


async def test_adapter_loads_leave_no_random_chain(engine: Engine, models: Path) -> None:
    """Both ways an adapter loads: onto its loaded base (its LoRA layers drawn), and as a
    model of its own (base and LoRA layers drawn)."""
    await engine.load(model_spec(models))
    for _ in range(CYCLES):
        await engine.load(adapter_spec(models, base=True))
        await engine.unload("style")
    await engine.unload("tiny")
    for _ in range(CYCLES):
        await engine.load(adapter_spec(models, base=False))
        await engine.unload("style")
    assert await engine.call(random_state_graph) == 0


async def test_a_load_that_fails_after_the_build_leaves_no_random_chain(
    engine: Engine, models: Path
) -> None:
    for _ in range(CYCLES):
        with pytest.raises(ModelLoadError):
            await engine.load(LoadSpec("broken", models / "broken"))
    assert await engine.call(random_state_graph) == 0
    assert engine.healthy


async def test_cycles_give_back_mlx_memory(engine: Engine, models: Path) -> None:
    """MLX's own figures, as the engine publishes them: every cycle ends where it started."""
    baseline = engine.memory()
    for _ in range(CYCLES):
        await engine.load(model_spec(models))
        assert engine.memory().active_bytes > baseline.active_bytes
        await engine.unload("tiny")
        after = engine.memory()
        assert after.active_bytes <= baseline.active_bytes
        assert after.cache_bytes == 0  # an unload hands MLX's cached buffers back
    assert engine.memory().peak_bytes >= engine.memory().active_bytes


async def test_an_unloaded_models_prompt_cache_goes_with_it(models: Path) -> None:
    """The KV caches an entry keeps for prefix reuse are freed when it unloads."""
    engine = Engine(prompt_cache_bytes=64 * MiB)
    try:
        baseline = engine.memory().active_bytes
        await engine.load(model_spec(models))
        loaded = engine.memory().active_bytes
        for prompt in ("Hello world", "The quick brown fox", "What is the capital of France?"):
            request = GenerationRequest(
                prompt=prompt, max_tokens=16, sampling=SamplingParams(temperature=0)
            )
            stream = await engine.generate("tiny", request)
            assert [e async for e in stream if isinstance(e, Chunk)]
        await engine.call(lambda: None)  # a turn after the last answer: figures published
        assert engine.memory().active_bytes > loaded  # three answers' KV caches kept
        kept = engine.memory().active_bytes - loaded
        await engine.unload("tiny")
        # A few bytes of scalars may stay (the first use makes them); not the caches.
        assert engine.memory().active_bytes - baseline < min(1024, kept)
        assert engine.memory().cache_bytes == 0
    finally:
        engine.close()


def read_cache_limit() -> int:
    """MLX's buffer-cache limit as it is now (MLX has no getter: set one, put it back)."""
    limit = int(mx.set_cache_limit(0))
    mx.set_cache_limit(limit)
    return limit


async def test_mlx_cache_limit_follows_the_config(models: Path) -> None:
    """`pool.mlx_cache_bytes` is MLX's cache limit from the start and after a live edit; null
    puts MLX's own default back."""
    config = f"hf_cache: false\nmodels: {{tiny: {{path: {models / 'tiny'}}}}}\n"
    before = read_cache_limit()
    daemon = Daemon(parse_config(config + "pool: {mlx_cache_bytes: 8MiB}\n"), watch=False)
    engine = daemon.engine
    try:
        assert await engine.call(read_cache_limit) == 8 * MiB
        assert daemon.pool_status().mlx_cache_limit == 8 * MiB
        await daemon.apply(
            parse_config(config + "pool: {mlx_cache_bytes: 3MiB}\n"), daemon.registry
        )
        assert await engine.call(read_cache_limit) == 3 * MiB
        await daemon.apply(
            parse_config(config + "pool: {mlx_cache_bytes: null}\n"), daemon.registry
        )
        assert await engine.call(read_cache_limit) == before
        assert daemon.pool_status().mlx_cache_limit is None
    finally:
        await daemon.stop()


async def test_pool_status_and_metrics_show_mlx_memory(models: Path) -> None:
    config = f"hf_cache: false\nmodels: {{tiny: {{path: {models / 'tiny'}}}}}\n"
    daemon = Daemon(parse_config(config), watch=False)
    try:
        idle = daemon.pool_status()
        await daemon.load("tiny")
        status = daemon.pool_status()
        # The pool's estimate is the loaded arrays' bytes; MLX holds at least those.
        assert status.used_bytes > 0
        assert status.mlx_active_bytes - idle.mlx_active_bytes >= status.used_bytes
        assert status.mlx_peak_bytes >= status.mlx_active_bytes
        assert status.mlx_cache_limit == 256 * MiB  # the default
        scraped = {
            sample.name: sample.value
            for family in text_string_to_metric_families(daemon.metrics.render().decode())
            for sample in family.samples
        }
        figures = daemon.engine.memory()
        assert scraped["mlxrouter_mlx_active_bytes"] == figures.active_bytes
        assert scraped["mlxrouter_mlx_cache_bytes"] == figures.cache_bytes
        assert scraped["mlxrouter_mlx_peak_bytes"] == figures.peak_bytes
    finally:
        await daemon.stop()


def loaded_tokenizer(engine: Engine, key: str) -> object:
    """Engine thread: the tokenizer object the loaded entry `key` encodes with."""
    return engine._models[key].tokenizer  # which instance is the point here


async def test_a_reload_reuses_the_tokenizer_of_the_same_files(
    engine: Engine, models: Path
) -> None:
    """tokenizers 0.23 keeps ~0.9 KB from every instance that encodes: a reload of the same
    files must not make a new one (docs/UPSTREAM-tokenizers-instance-leak.md)."""
    await engine.load(model_spec(models))
    first = await engine.call(lambda: loaded_tokenizer(engine, "tiny"))
    for _ in range(CYCLES):
        await engine.unload("tiny")
        await engine.load(model_spec(models))
        assert await engine.call(lambda: loaded_tokenizer(engine, "tiny")) is first
    # An adapter on the loaded base encodes with the base's; unloading it keeps the base's.
    await engine.load(adapter_spec(models, base=True))
    assert await engine.call(lambda: loaded_tokenizer(engine, "style")) is first
    await engine.unload("style")
    await engine.unload("tiny")
    await engine.load(model_spec(models))
    assert await engine.call(lambda: loaded_tokenizer(engine, "tiny")) is first


async def test_edited_tokenizer_files_load_a_new_tokenizer(engine: Engine, tmp_path: Path) -> None:
    folder = make_tiny_model(tmp_path / "edited", seed=3)
    mx.eval(mx.random.state)
    spec = LoadSpec("edited", folder)
    await engine.load(spec)
    first = await engine.call(lambda: loaded_tokenizer(engine, "edited"))
    await engine.unload("edited")
    config = folder / "tokenizer_config.json"
    config.write_text(config.read_text().replace("}", ', "model_max_length": 512}', 1))
    await engine.load(spec)
    assert await engine.call(lambda: loaded_tokenizer(engine, "edited")) is not first


async def test_a_failed_load_gives_its_shelved_tokenizer_back(
    engine: Engine, tmp_path: Path
) -> None:
    """A model loaded once, whose weights then lose a tensor: each failed reload takes the
    kept tokenizer and gives it back, so it stays on the shelf, in use by nobody."""
    folder = make_tiny_model(tmp_path / "decays", seed=4)
    weights = mx.load(str(folder / "model.safetensors"))
    assert isinstance(weights, dict)
    mx.eval(mx.random.state)
    await engine.load(LoadSpec("decays", folder))
    first = await engine.call(lambda: loaded_tokenizer(engine, "decays"))
    await engine.unload("decays")
    kept = weights.pop("model.layers.1.mlp.down_proj.weight")
    mx.save_safetensors(str(folder / "model.safetensors"), weights)
    for _ in range(CYCLES):
        with pytest.raises(ModelLoadError):
            await engine.load(LoadSpec("decays", folder))
    assert await engine.call(lambda: len(engine._loads.tokenizers)) == 1
    # Weights mended: the next load takes the same tokenizer off the shelf.
    mx.save_safetensors(
        str(folder / "model.safetensors"), {**weights, "model.layers.1.mlp.down_proj.weight": kept}
    )
    await engine.load(LoadSpec("decays", folder))
    assert await engine.call(lambda: loaded_tokenizer(engine, "decays")) is first

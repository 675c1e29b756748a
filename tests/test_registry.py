"""Registry building over real folders (tiny real safetensors written by the tiny-model helper)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mlxrouter.config import parse_config
from mlxrouter.errors import ModelNotFoundError
from mlxrouter.registry import build_registry


def _adapter(folder: Path, base_ref: str) -> Path:
    import mlx.core as mx

    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(
        json.dumps(
            {
                "model": base_ref,
                "fine_tune_type": "lora",
                "num_layers": 1,
                "lora_parameters": {"rank": 2, "scale": 1.0, "dropout": 0.0},
            }
        )
    )
    mx.save_safetensors(str(folder / "adapters.safetensors"), {"x": mx.zeros((2,))})
    return folder


@pytest.fixture
def model_dir(tmp_path: Path, tiny_models: Path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(tiny_models / "tiny-a", root / "tiny-a")
    shutil.copytree(tiny_models / "tiny-b", root / "org" / "tiny-b")
    return root


def test_model_dirs_serve_one_and_two_level_folders(model_dir: Path) -> None:
    registry = build_registry(parse_config(f"hf_cache: false\nmodel_dirs: [{model_dir}]"))
    assert registry.ids() == ["org/tiny-b", "tiny-a"]
    assert registry.resolve("org/tiny-b").found.owned_by == "org"
    assert registry.resolve("tiny-a").source == "model_dir"


def test_aliases_and_explicit_entries(model_dir: Path, tiny_models: Path) -> None:
    config = parse_config(
        f"""
hf_cache: false
model_dirs: [{model_dir}]
models:
  fast: {{model: tiny-a}}
  extra: {{path: {tiny_models / "tiny-b"}, pinned: true, ttl: 5m}}
  dangling: {{model: not-there}}
"""
    )
    registry = build_registry(config)
    assert registry.resolve("fast").id == "tiny-a"
    assert registry.resolve("extra").options.pinned is True
    assert registry.resolve("extra").options.ttl == 300
    assert "fast" in registry.ids()
    assert any("dangling" in p for p in registry.problems)
    with pytest.raises(ModelNotFoundError):
        registry.resolve("dangling")


def test_adapter_base_from_adapter_config_id_or_path(model_dir: Path) -> None:
    _adapter(model_dir / "by-id", "tiny-a")
    _adapter(model_dir / "by-path", str(model_dir / "org" / "tiny-b"))
    _adapter(model_dir / "orphan", "someone/else")
    registry = build_registry(parse_config(f"hf_cache: false\nmodel_dirs: [{model_dir}]"))
    assert registry.resolve("by-id").base == "tiny-a"
    assert registry.resolve("by-path").base == "org/tiny-b"
    assert "orphan" not in registry.ids()
    assert any("orphan" in p for p in registry.problems)


def test_explicit_base_overrides_adapter_config(model_dir: Path, tmp_path: Path) -> None:
    adapter = _adapter(tmp_path / "adapter", "unknown/base")
    config = parse_config(
        f"hf_cache: false\nmodel_dirs: [{model_dir}]\n"
        f"models:\n  styled: {{path: {adapter}, base: tiny-a}}\n"
    )
    assert build_registry(config).resolve("styled").base == "tiny-a"


def test_models_that_run_code_are_refused_unless_trusted(model_dir: Path) -> None:
    (model_dir / "tiny-a" / "modeling_evil.py").write_text("raise SystemExit\n")
    registry = build_registry(parse_config(f"hf_cache: false\nmodel_dirs: [{model_dir}]"))
    assert "tiny-a" not in registry.ids()
    trusted = build_registry(
        parse_config(
            f"hf_cache: false\nmodels:\n  tiny-a: {{path: {model_dir / 'tiny-a'}, trust_remote_code: true}}"
        )
    )
    assert "tiny-a" in trusted.ids()


def test_only_ids_resolve_never_paths(model_dir: Path) -> None:
    registry = build_registry(parse_config(f"hf_cache: false\nmodel_dirs: [{model_dir}]"))
    for name in [
        str(model_dir / "tiny-a"),
        "../tiny-a",
        "~/tiny-a",
        "tiny-a/",
        "HuggingFaceTB/x",
        "",
    ]:
        with pytest.raises(ModelNotFoundError):
            registry.resolve(name)


def test_hf_cache_models_are_listed_by_repo_id(tmp_path: Path, tiny_models: Path) -> None:
    repo = tmp_path / "hub" / "models--acme--tiny"
    commit = "a" * 40
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for i, file in enumerate(sorted((tiny_models / "tiny-a").iterdir())):
        blob = repo / "blobs" / f"blob{i}"
        shutil.copy(file, blob)
        (snapshot / file.name).symlink_to(blob)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    registry = build_registry(parse_config(f"hf_cache: {tmp_path / 'hub'}"))
    assert registry.resolve("acme/tiny").source == "hf_cache"


def test_missing_sources_are_empty_not_errors(tmp_path: Path) -> None:
    config = parse_config(f"hf_cache: {tmp_path / 'nope'}\nmodel_dirs: [{tmp_path / 'absent'}]")
    assert len(build_registry(config)) == 0


def test_type_key_overrides_the_guess_and_cards_show_it(model_dir: Path) -> None:
    """A pooling module types tiny-a an embedding model; `type:` turns that around, and a
    chat model can be declared an embedding model. The cards say what each serves."""
    from mlxrouter.status import model_cards

    pooling = model_dir / "tiny-a" / "1_Pooling"
    pooling.mkdir()
    (pooling / "config.json").write_text(json.dumps({"word_embedding_dimension": 64}))
    guessed = build_registry(parse_config(f"hf_cache: false\nmodel_dirs: [{model_dir}]"))
    assert guessed.resolve("tiny-a").found.model_type == "embedding"
    assert guessed.resolve("org/tiny-b").found.model_type == "chat"

    config = parse_config(
        f"""
hf_cache: false
model_dirs: [{model_dir}]
models:
  tiny-a: {{type: chat}}
  org/tiny-b: {{type: embedding}}
"""
    )
    cards = {c.id: c for c in model_cards(build_registry(config), loaded=())}
    assert (cards["tiny-a"].type, cards["tiny-a"].dimensions) == ("chat", None)
    assert cards["org/tiny-b"].dimensions is not None  # the hidden size
    assert "chat" not in cards["org/tiny-b"].capabilities
    assert (cards["org/tiny-b"].type, cards["org/tiny-b"].capabilities) == (
        "embedding",
        ["embeddings"],
    )


def test_matryoshka_key_overrides_the_folders_declaration(model_dir: Path) -> None:
    """`matryoshka: true` on an embedding model its files do not declare, `false` over a
    declaration; a chat model's entry ignores it."""
    (model_dir / "org" / "tiny-b" / "README.md").write_text(
        "---\ntags: [loss:MatryoshkaLoss]\n---\n"
    )
    config = parse_config(
        f"""
hf_cache: false
model_dirs: [{model_dir}]
models:
  tiny-a: {{type: embedding, matryoshka: true}}
  org/tiny-b: {{type: embedding, matryoshka: false}}
  tiny-c: {{path: {model_dir / "tiny-a"}, matryoshka: true}}
"""
    )
    registry = build_registry(config)
    declared = build_registry(
        parse_config(
            f"hf_cache: false\nmodels:\n  b: {{path: {model_dir / 'org' / 'tiny-b'}, "
            "type: embedding}"
        )
    )
    assert declared.resolve("b").found.matryoshka is True
    assert registry.resolve("tiny-a").found.matryoshka is True
    assert registry.resolve("org/tiny-b").found.matryoshka is False
    assert registry.resolve("tiny-c").found.model_type == "chat"
    assert registry.resolve("tiny-c").found.matryoshka is False

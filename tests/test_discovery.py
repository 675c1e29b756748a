"""Tests for `mlxrouter.discovery`: real folder layouts with tiny, real safetensors files."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest

from mlxrouter.discovery import (
    FoundModel,
    describe_folder,
    folder_kind,
    scan_hf_cache,
    scan_model_dir,
)

# --- builders ----------------------------------------------------------------------------


def write_safetensors(path: Path, tensors: dict[str, int] | None = None) -> int:
    """Write a valid safetensors file: u64 header length, JSON header, zero data.

    `tensors` maps a name to its byte length (F32, so a multiple of 4). Returns the size.
    """
    tensors = tensors if tensors is not None else {"w": 16}
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, nbytes in tensors.items():
        header[name] = {
            "dtype": "F32",
            "shape": [nbytes // 4],
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8 bytes with spaces
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))
    return path.stat().st_size


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def make_model(
    folder: Path,
    *,
    config: dict[str, Any] | None = None,
    tokenizer: str = "tokenizer.json",
    tensors: dict[str, int] | None = None,
) -> Path:
    """A complete single-file model folder."""
    write_json(folder / "config.json", config if config is not None else {"model_type": "llama"})
    write_safetensors(folder / "model.safetensors", tensors)
    (folder / tokenizer).write_text("{}")
    return folder


def make_sharded(folder: Path, shards: int = 2) -> list[Path]:
    """A sharded model folder; returns the shard paths."""
    write_json(folder / "config.json", {"model_type": "llama"})
    (folder / "tokenizer.json").write_text("{}")
    paths = [folder / f"model-{i:05d}-of-{shards:05d}.safetensors" for i in range(1, shards + 1)]
    weight_map = {}
    for i, path in enumerate(paths):
        write_safetensors(path, {f"t{i}": 8})
        weight_map[f"t{i}"] = path.name
    write_json(folder / "model.safetensors.index.json", {"metadata": {}, "weight_map": weight_map})
    return paths


def make_adapter(folder: Path, config: dict[str, Any] | None = None) -> Path:
    write_json(
        folder / "adapter_config.json", config if config is not None else {"model": "org/base"}
    )
    write_safetensors(folder / "adapters.safetensors", {"lora_a": 8, "lora_b": 8})
    return folder


def ids(found: list[FoundModel]) -> list[str]:
    return [m.id for m in found]


# --- single folders ----------------------------------------------------------------------


def test_single_file_model(tmp_path: Path) -> None:
    folder = make_model(tmp_path / "tiny", tensors={"a": 16, "b": 32})
    found = describe_folder("tiny", folder)
    assert found is not None
    assert found.kind == "model"
    assert found.path == folder.resolve()
    assert found.size_bytes == (folder / "model.safetensors").stat().st_size
    assert found.owned_by == "local"
    assert found.base_ref is None
    assert found.created == int(folder.stat().st_mtime)
    assert found.trusts_code is False
    assert folder_kind(folder) == "model"


def test_file_from_safetensors_library_is_complete(tmp_path: Path) -> None:
    # Cross-check the header arithmetic against the reference writer when it is installed.
    np = pytest.importorskip("numpy")
    st_numpy = pytest.importorskip("safetensors.numpy")
    folder = tmp_path / "ref"
    write_json(folder / "config.json", {})
    (folder / "tokenizer.json").write_text("{}")
    st_numpy.save_file(
        {"x": np.zeros((3, 5), dtype=np.float32), "y": np.ones(7, dtype=np.int8)},
        str(folder / "model.safetensors"),
    )
    assert folder_kind(folder) == "model"


def test_sharded_model_with_all_shards(tmp_path: Path) -> None:
    shards = make_sharded(tmp_path / "big", shards=3)
    found = describe_folder("big", tmp_path / "big")
    assert found is not None
    assert found.size_bytes == sum(p.stat().st_size for p in shards)


def test_sharded_model_missing_shard_is_not_served(tmp_path: Path) -> None:
    shards = make_sharded(tmp_path / "big", shards=3)
    shards[1].unlink()
    assert folder_kind(tmp_path / "big") is None


def test_index_naming_file_outside_folder_is_refused(tmp_path: Path) -> None:
    write_safetensors(tmp_path / "outside.safetensors")
    folder = tmp_path / "m"
    write_json(folder / "config.json", {})
    (folder / "tokenizer.json").write_text("{}")
    write_json(
        folder / "model.safetensors.index.json", {"weight_map": {"w": "../outside.safetensors"}}
    )
    assert folder_kind(folder) is None


@pytest.mark.parametrize("cut", [1, 7, 8, 20])
def test_truncated_safetensors_is_not_served(tmp_path: Path, cut: int) -> None:
    folder = make_model(tmp_path / "half")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - cut] if cut < len(data) else b"")
    assert folder_kind(folder) is None


def test_safetensors_with_trailing_bytes_is_not_served(tmp_path: Path) -> None:
    folder = make_model(tmp_path / "long")
    with (folder / "model.safetensors").open("ab") as f:
        f.write(b"\0")
    assert folder_kind(folder) is None


def test_garbage_header_is_not_served(tmp_path: Path) -> None:
    folder = make_model(tmp_path / "junk")
    raw = b"not json"
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw)
    assert folder_kind(folder) is None


def test_huge_header_length_is_not_served(tmp_path: Path) -> None:
    folder = make_model(tmp_path / "huge")
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", 2**63) + b"{}")
    assert folder_kind(folder) is None


def test_safetensors_with_a_gap_between_tensors_is_not_served(tmp_path: Path) -> None:
    # Offsets must tile the data exactly (safetensors' own rule), not merely end at the end.
    folder = make_model(tmp_path / "gap")
    header = {
        "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
        "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]},
    }
    raw = json.dumps(header).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(12))
    assert folder_kind(folder) is None


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_fifo_named_like_weights_is_not_served(tmp_path: Path) -> None:
    # Opening a pipe with no writer blocks; the scan must refuse it without waiting.
    folder = make_model(tmp_path / "pipe")
    (folder / "model.safetensors").unlink()
    os.mkfifo(folder / "model.safetensors")
    assert folder_kind(folder) is None


def test_missing_tokenizer_is_not_served(tmp_path: Path) -> None:
    folder = make_model(tmp_path / "notok")
    (folder / "tokenizer.json").unlink()
    assert folder_kind(folder) is None


def test_tokenizer_config_alone_is_not_enough(tmp_path: Path) -> None:
    folder = make_model(tmp_path / "cfgonly", tokenizer="tokenizer_config.json")
    assert folder_kind(folder) is None
    (folder / "vocab.json").write_text("{}")
    assert folder_kind(folder) == "model"


def test_tokenizer_model_variant(tmp_path: Path) -> None:
    folder = make_model(tmp_path / "spm", tokenizer="tokenizer.model")
    assert folder_kind(folder) == "model"


def test_missing_or_broken_config_is_not_served(tmp_path: Path) -> None:
    folder = make_model(tmp_path / "m")
    (folder / "config.json").write_text("{ half written")
    assert folder_kind(folder) is None
    (folder / "config.json").unlink()
    assert folder_kind(folder) is None


def test_no_weights_is_not_served(tmp_path: Path) -> None:
    folder = make_model(tmp_path / "m")
    (folder / "model.safetensors").unlink()
    assert folder_kind(folder) is None


def test_broken_symlinked_weights_is_not_served(tmp_path: Path) -> None:
    folder = make_model(tmp_path / "m")
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").symlink_to(tmp_path / "gone.safetensors")
    assert folder_kind(folder) is None


def test_not_a_folder_or_missing(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    assert folder_kind(tmp_path / "file") is None
    assert describe_folder("x", tmp_path / "missing") is None


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads anything")
def test_unreadable_weights_is_not_served(tmp_path: Path) -> None:
    folder = make_model(tmp_path / "m")
    weights = folder / "model.safetensors"
    weights.chmod(0)
    try:
        assert folder_kind(folder) is None
    finally:
        weights.chmod(0o644)


def test_permission_error_is_not_served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Root ignores file modes, so simulate the refusal the way the OS reports it.
    folder = make_model(tmp_path / "m")
    real_open = os.open

    def deny_weights(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if str(path).endswith(".safetensors"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny_weights)
    assert folder_kind(folder) is None
    assert scan_model_dir(tmp_path) == []


def test_adapter_with_model_field(tmp_path: Path) -> None:
    folder = make_adapter(tmp_path / "lora", {"model": "mlx-community/Base-4bit", "rank": 8})
    found = describe_folder("lora", folder)
    assert found is not None
    assert found.kind == "adapter"
    assert found.base_ref == "mlx-community/Base-4bit"
    assert found.size_bytes == (folder / "adapters.safetensors").stat().st_size
    assert found.context_length is None


def test_adapter_base_model_name_or_path(tmp_path: Path) -> None:
    folder = make_adapter(tmp_path / "peft", {"base_model_name_or_path": "/models/base"})
    found = describe_folder("peft", folder)
    assert found is not None
    assert found.base_ref == "/models/base"


def test_incomplete_adapter_is_not_served(tmp_path: Path) -> None:
    folder = make_adapter(tmp_path / "lora")
    weights = folder / "adapters.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4])
    assert folder_kind(folder) is None


# --- fields ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"max_position_embeddings": 8192, "n_positions": 1024}, 8192),
        ({"n_positions": 1024}, 1024),
        ({"max_seq_len": 4096}, 4096),
        ({"seq_length": 2048}, 2048),
        ({"text_config": {"max_position_embeddings": 131072}}, 131072),
        ({"model_type": "llama"}, None),
        ({"max_position_embeddings": "big"}, None),
        ({"max_position_embeddings": True}, None),
    ],
)
def test_context_length(tmp_path: Path, config: dict[str, Any], expected: int | None) -> None:
    found = describe_folder("m", make_model(tmp_path / "m", config=config))
    assert found is not None
    assert found.context_length == expected


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        (None, ("completion",)),
        ("{{ messages }}", ("chat", "completion")),
        ("{% if tools %}{{ tools }}{% endif %}", ("chat", "completion", "tools")),
        ("{{ '<think>\\n' }}{{ messages }}", ("chat", "completion", "thinking")),
        (
            "{% if enable_thinking is false %}x{% endif %}{{ tools }}",
            ("chat", "completion", "tools", "thinking"),
        ),
    ],
)
def test_capabilities_from_the_chat_template(
    tmp_path: Path, template: str | None, expected: tuple[str, ...]
) -> None:
    folder = make_model(tmp_path / "m")
    if template is not None:
        (folder / "chat_template.jinja").write_text(template)
    found = describe_folder("m", folder)
    assert found is not None
    assert found.capabilities == expected


def test_chat_models_are_typed_chat(tmp_path: Path) -> None:
    found = describe_folder("m", make_model(tmp_path / "m"))
    assert found is not None
    assert (found.model_type, found.dimensions, found.max_input_tokens) == ("chat", None, None)


def test_sentence_transformers_layout_is_an_embedding_model(tmp_path: Path) -> None:
    """MiniLM's layout: the pooling module's width and `max_seq_length` (below the context)."""
    folder = make_model(
        tmp_path / "m",
        config={"architectures": ["BertModel"], "hidden_size": 384, "max_position_embeddings": 512},
    )
    write_json(folder / "1_Pooling" / "config.json", {"word_embedding_dimension": 384})
    write_json(folder / "sentence_bert_config.json", {"max_seq_length": 256})
    (folder / "modules.json").write_text("[]")
    found = describe_folder("m", folder)
    assert found is not None
    assert found.model_type == "embedding"
    assert (found.dimensions, found.max_input_tokens) == (384, 256)
    assert found.capabilities == ("embeddings",)


@pytest.mark.parametrize("architecture", ["BertModel", "XLMRobertaModel", "NomicBertModel"])
def test_encoder_architecture_is_an_embedding_model(tmp_path: Path, architecture: str) -> None:
    """No sentence-transformers files: the hidden size and the context length stand in."""
    config = {"architectures": [architecture], "hidden_size": 768, "max_position_embeddings": 8}
    found = describe_folder("m", make_model(tmp_path / "m", config=config))
    assert found is not None
    assert (found.model_type, found.dimensions, found.max_input_tokens) == ("embedding", 768, 8)


def test_decoder_with_pooling_module_is_an_embedding_model(tmp_path: Path) -> None:
    """Qwen3-Embedding: a causal LM architecture, typed by its sentence-transformers files."""
    folder = make_model(tmp_path / "m", config={"architectures": ["Qwen3ForCausalLM"]})
    write_json(folder / "1_Pooling" / "config.json", {"pooling_mode_lasttoken": True})
    found = describe_folder("m", folder)
    assert found is not None
    assert found.model_type == "embedding"


def test_xlm_roberta_inputs_are_limited_by_its_positions_after_the_padding_id(
    tmp_path: Path,
) -> None:
    config = {
        "architectures": ["XLMRobertaModel"],
        "model_type": "xlm-roberta",
        "max_position_embeddings": 514,
        "pad_token_id": 1,
    }
    found = describe_folder("m", make_model(tmp_path / "m", config=config))
    assert found is not None
    assert found.max_input_tokens == 512


@pytest.mark.parametrize(
    ("config", "unsupported"),
    [
        ({"architectures": ["BertModel"], "model_type": "bert"}, None),
        ({"architectures": ["XLMRobertaModel"], "model_type": "xlm-roberta"}, None),
        ({"architectures": ["RobertaModel"], "model_type": "roberta"}, None),
        ({"architectures": ["NomicBertModel"], "model_type": "nomic_bert"}, "NomicBertModel"),
        ({"architectures": ["ModernBertModel"], "model_type": "modernbert"}, "ModernBertModel"),
        ({"architectures": ["MPNetModel"], "model_type": "mpnet"}, "MPNetModel"),
        # BERT with relative positions is not the absolute-position BERT the engine runs
        (
            {
                "architectures": ["BertModel"],
                "model_type": "bert",
                "position_embedding_type": "relative_key",
            },
            "BertModel",
        ),
        ({"model_type": "modernbert"}, "modernbert"),
        ({"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3"}, None),
    ],
)
def test_encoders_the_engine_cannot_run_are_marked(
    tmp_path: Path, config: dict[str, Any], unsupported: str | None
) -> None:
    folder = make_model(tmp_path / "m", config=config)
    (folder / "modules.json").write_text("[]")
    found = describe_folder("m", folder)
    assert found is not None
    assert (found.model_type, found.unsupported) == ("embedding", unsupported)


@pytest.mark.parametrize(
    ("config", "readme", "declared"),
    [
        ({"matryoshka_dimensions": [32, 64, 128, 256]}, None, True),
        ({}, "---\ntags:\n- sentence-transformers\n- loss:MatryoshkaLoss\n---\ntext", True),
        ({}, "---\ntags: [matryoshka]\n---\n", True),
        ({}, "---\ntags:\n- sentence-transformers\n---\nMatryoshka in prose only", False),
        ({}, "no front matter\ntags:\n- matryoshka\n", False),
        ({}, "---\ntags: [unclosed\n---\n", False),
        ({"matryoshka_dimensions": []}, None, False),
    ],
)
def test_matryoshka_training_is_read_from_the_models_declarations(
    tmp_path: Path, config: dict[str, Any], readme: str | None, declared: bool
) -> None:
    folder = make_model(tmp_path / "m", config={"architectures": ["BertModel"], **config})
    if readme is not None:
        (folder / "README.md").write_text(readme)
    found = describe_folder("m", folder)
    assert found is not None
    assert found.matryoshka is declared


def test_chat_models_never_declare_matryoshka(tmp_path: Path) -> None:
    folder = make_model(tmp_path / "m", config={"matryoshka_dimensions": [64]})
    found = describe_folder("m", folder)
    assert found is not None
    assert (found.model_type, found.matryoshka, found.unsupported) == ("chat", False, None)


@pytest.mark.parametrize(
    "config", [{"auto_map": {"AutoModel": "modeling.Foo"}}, {"model_file": "custom.py"}]
)
def test_remote_code_config_trusts_code(tmp_path: Path, config: dict[str, Any]) -> None:
    found = describe_folder("m", make_model(tmp_path / "m", config=config))
    assert found is not None
    assert found.trusts_code is True


def test_shipped_python_trusts_code(tmp_path: Path) -> None:
    folder = make_model(tmp_path / "m")
    (folder / "modeling_custom.py").write_text("print('hi')\n")
    found = describe_folder("m", folder)
    assert found is not None
    assert found.trusts_code is True


def test_owned_by_from_org(tmp_path: Path) -> None:
    found = describe_folder("acme/tiny", make_model(tmp_path / "m"))
    assert found is not None
    assert found.owned_by == "acme"


def test_created_override(tmp_path: Path) -> None:
    found = describe_folder("m", make_model(tmp_path / "m"), created=1_700_000_000)
    assert found is not None
    assert found.created == 1_700_000_000


def test_fingerprint_tracks_weight_rewrites(tmp_path: Path) -> None:
    folder = make_model(tmp_path / "m")
    weights = folder / "model.safetensors"

    def fingerprint() -> str:
        found = describe_folder("m", folder)
        assert found is not None
        return found.fingerprint

    first = fingerprint()
    assert fingerprint() == first  # stable while nothing changes

    # Same size, new mtime: an in-place replacement with identically shaped weights.
    size = weights.stat().st_size
    write_safetensors(weights)
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert weights.stat().st_size == size
    second = fingerprint()
    assert second != first

    # New size, same mtime: the size alone must still change the value.
    mtime_ns = weights.stat().st_mtime_ns
    write_safetensors(weights, {"w": 32})
    os.utime(weights, ns=(mtime_ns, mtime_ns))
    third = fingerprint()
    assert third not in (first, second)


def test_fingerprint_tracks_tokenizer_and_config(tmp_path: Path) -> None:
    folder = make_model(tmp_path / "m")
    before = describe_folder("m", folder)
    (folder / "tokenizer.json").write_text('{"changed": true}')
    after = describe_folder("m", folder)
    assert before is not None
    assert after is not None
    assert before.fingerprint != after.fingerprint


# --- scan_model_dir ----------------------------------------------------------------------


def test_scan_model_dir_layouts(tmp_path: Path) -> None:
    root = tmp_path / "models"
    make_model(root / "zeta")
    make_model(root / "acme" / "tiny")
    make_adapter(root / "acme" / "tiny-lora")
    make_model(root / "alpha", tokenizer="tokenizer.model")
    (root / "acme" / "notes").mkdir()  # an unrelated folder is ignored
    (root / "README.md").write_text("hi")
    make_model(root / "acme" / "deep" / "too-deep")  # only one extra level is looked into

    found = scan_model_dir(root)
    assert ids(found) == ["acme/tiny", "acme/tiny-lora", "alpha", "zeta"]
    by_id = {m.id: m for m in found}
    assert by_id["acme/tiny"].owned_by == "acme"
    assert by_id["acme/tiny-lora"].kind == "adapter"
    assert by_id["zeta"].owned_by == "local"
    assert by_id["zeta"].path == (root / "zeta").resolve()


def test_scan_model_dir_serves_model_not_its_subfolders(tmp_path: Path) -> None:
    root = tmp_path / "models"
    make_model(root / "base")
    make_adapter(root / "base" / "lora")  # inside a model: not a second-level entry
    assert ids(scan_model_dir(root)) == ["base"]


def test_scan_model_dir_skips_hidden(tmp_path: Path) -> None:
    root = tmp_path / "models"
    make_model(root / ".partial")
    make_model(root / "acme" / ".tmp-copy")
    make_model(root / "visible")
    assert ids(scan_model_dir(root)) == ["visible"]


def test_scan_model_dir_skips_incomplete(tmp_path: Path) -> None:
    root = tmp_path / "models"
    make_model(root / "ok")
    bad = make_model(root / "copying")
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-3])
    assert ids(scan_model_dir(root)) == ["ok"]


def test_scan_model_dir_missing_root(tmp_path: Path) -> None:
    assert scan_model_dir(tmp_path / "nope") == []
    (tmp_path / "file").write_text("x")
    assert scan_model_dir(tmp_path / "file") == []


def test_symlink_escaping_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    outside = make_model(tmp_path / "elsewhere" / "secret")
    (root / "escape").symlink_to(outside, target_is_directory=True)
    (root / "org").mkdir()
    (root / "org" / "escape").symlink_to(outside, target_is_directory=True)
    assert scan_model_dir(root) == []


def test_symlink_inside_root_is_followed(tmp_path: Path) -> None:
    root = tmp_path / "models"
    real = make_model(root / "store" / "real-model")
    (root / "alias").symlink_to(real, target_is_directory=True)
    found = scan_model_dir(root)
    assert ids(found) == ["alias", "store/real-model"]
    assert found[0].path == real.resolve()


def test_symlinked_root_is_resolved(tmp_path: Path) -> None:
    real_root = tmp_path / "real-models"
    make_model(real_root / "m")
    link = tmp_path / "link"
    link.symlink_to(real_root, target_is_directory=True)
    assert ids(scan_model_dir(link)) == ["m"]


def test_symlink_loop_to_root_is_ignored(tmp_path: Path) -> None:
    root = tmp_path / "models"
    make_model(root / "m")
    (root / "loop").symlink_to(root, target_is_directory=True)
    (root / "self").symlink_to(root / "self")  # a symlink pointing at itself
    assert ids(scan_model_dir(root)) == ["m"]


# --- scan_hf_cache -----------------------------------------------------------------------

COMMIT_A = "a" * 40
COMMIT_B = "b" * 40


def hf_repo(
    cache: Path,
    repo_id: str,
    files: dict[str, bytes],
    *,
    commit: str = COMMIT_A,
    ref: str | None = "main",
    repo_type: str = "models",
) -> Path:
    """A hub-cache repo the way huggingface_hub lays it out: content-addressed blobs and a
    snapshot of relative symlinks into them. Returns the snapshot folder."""
    repo = cache / f"{repo_type}--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        blob = repo / "blobs" / f"{commit[:8]}-{name.replace('.', '_')}"
        blob.write_bytes(data)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", blob.name))
    if ref is not None:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot


def model_files(tmp_path: Path, tensors: dict[str, int] | None = None) -> dict[str, bytes]:
    scratch = tmp_path / "scratch.safetensors"
    write_safetensors(scratch, tensors)
    return {
        "config.json": json.dumps({"max_position_embeddings": 2048}).encode(),
        "tokenizer.json": b"{}",
        "model.safetensors": scratch.read_bytes(),
    }


def test_hf_cache_model(tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    files = model_files(tmp_path, {"w": 64})
    snapshot = hf_repo(cache, "mlx-community/Tiny-4bit", files)
    # A dataset repo in the same cache is not a model.
    hf_repo(cache, "acme/data", model_files(tmp_path), repo_type="datasets")

    found = scan_hf_cache(cache)
    assert ids(found) == ["mlx-community/Tiny-4bit"]
    model = found[0]
    assert model.kind == "model"
    assert model.owned_by == "mlx-community"
    assert model.path == snapshot.resolve()
    assert model.context_length == 2048
    # The snapshot holds symlinks; the size is the blob's, not the link's.
    assert model.size_bytes == len(files["model.safetensors"])
    assert (snapshot / "model.safetensors").is_symlink()
    blob_mtime = (snapshot / "model.safetensors").stat().st_mtime
    assert model.created == int(
        max(
            blob_mtime,
            (snapshot / "config.json").stat().st_mtime,
            (snapshot / "tokenizer.json").stat().st_mtime,
        )
    )
    assert model.created > 0


def test_hf_cache_prefers_main_then_newest(tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    files = model_files(tmp_path)
    old = hf_repo(cache, "acme/a", files, commit=COMMIT_A, ref=None)
    new = hf_repo(cache, "acme/a", files, commit=COMMIT_B, ref=None)
    for path, when in ((old, 1_000_000_000), (new, 1_500_000_000)):
        for child in path.iterdir():
            os.utime(child.resolve(), (when, when))
    (found,) = scan_hf_cache(cache)
    assert found.path == new.resolve()
    assert found.created == 1_500_000_000

    # With a `main` ref, that revision wins even though it is older.
    (cache / "models--acme--a" / "refs").mkdir()
    (cache / "models--acme--a" / "refs" / "main").write_text(COMMIT_A)
    (found,) = scan_hf_cache(cache)
    assert found.path == old.resolve()
    assert found.created == 1_000_000_000


def test_hf_cache_missing_dir(tmp_path: Path) -> None:
    assert scan_hf_cache(tmp_path / "no-cache") == []


def test_hf_cache_incomplete_snapshot_not_served(tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    files = model_files(tmp_path)
    files["model.safetensors"] = files["model.safetensors"][:-5]  # download cut short
    hf_repo(cache, "acme/cut", files)
    no_tok = model_files(tmp_path)
    del no_tok["tokenizer.json"]
    hf_repo(cache, "acme/notok", no_tok)
    hf_repo(cache, "acme/ok", model_files(tmp_path))
    assert ids(scan_hf_cache(cache)) == ["acme/ok"]


def test_hf_cache_corrupted_repo_is_skipped(tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    snapshot = hf_repo(cache, "acme/broken", model_files(tmp_path))
    (snapshot / "model.safetensors").resolve().unlink()  # a broken blob symlink
    (cache / "not-a-repo").mkdir()  # huggingface_hub reports this as a warning
    hf_repo(cache, "acme/ok", model_files(tmp_path))
    assert ids(scan_hf_cache(cache)) == ["acme/ok"]


def test_hf_cache_dir_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "hub").write_text("x")
    assert scan_hf_cache(tmp_path / "hub") == []

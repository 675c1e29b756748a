"""An independent reference for all-MiniLM-L6-v2's embeddings (and XLM-RoBERTa checkpoints'),
the sentences the embedding tests compare, and a tiny random XLM-RoBERTa checkpoint.

What the reference proves: `reference_embedding` shares no code with mlxrouter. It reads the
safetensors with NumPy, runs BERT's published equations (post-norm layers, exact-erf GELU,
masked softmax; XLM-RoBERTa's positions counted from after the padding id) and pools as the
model's `1_Pooling/config.json` and `modules.json` say (mean over the real tokens, then L2).
Only the tokenizer is shared (the model's own tokenizer.json, read by the `tokenizers`
library). Agreement to 1e-5 in cosine shows the MLX encoder, its weight loading, masking,
pooling and normalisation compute the sentence-transformers model.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

CAT, KITTEN, STOCKS = (
    "A cat sits on the mat",
    "A kitten is sitting on a rug",
    "Stock markets fell sharply today",
)
_erf = np.vectorize(math.erf)


#: model types whose position ids start after the padding id (RoBERTa's
#: `create_position_ids_from_input_ids`: `padding_idx + 1` for the first real token)
PADDING_OFFSET_TYPES = ("roberta", "xlm-roberta")


def reference_embedding(folder: Path, text: str) -> np.ndarray:
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    config = json.loads((folder / "config.json").read_text())
    w = load_file(str(folder / "model.safetensors"))
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_padding()  # MiniLM's tokenizer.json pads every text to 128 tokens
    ids = tokenizer.encode(text).ids
    eps = config["layer_norm_eps"]
    heads = config["num_attention_heads"]
    first = config["pad_token_id"] + 1 if config["model_type"] in PADDING_OFFSET_TYPES else 0

    def norm(x: np.ndarray, name: str) -> np.ndarray:
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + eps) * w[f"{name}.weight"] + w[f"{name}.bias"]

    def linear(x: np.ndarray, name: str) -> np.ndarray:
        return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]

    e = "embeddings"
    x = (
        w[f"{e}.word_embeddings.weight"][ids]
        + w[f"{e}.position_embeddings.weight"][first : first + len(ids)]
        + w[f"{e}.token_type_embeddings.weight"][0]
    )
    x = norm(x.astype(np.float64), f"{e}.LayerNorm")
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}"
        split = [
            linear(x, f"{p}.attention.self.{n}").reshape(len(ids), heads, -1).transpose(1, 0, 2)
            for n in ("query", "key", "value")
        ]
        q, k, v = split
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(q.shape[-1])
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        attended = (scores / scores.sum(-1, keepdims=True)) @ v
        attended = attended.transpose(1, 0, 2).reshape(len(ids), -1)
        x = norm(
            linear(attended, f"{p}.attention.output.dense") + x, f"{p}.attention.output.LayerNorm"
        )
        inner = linear(x, f"{p}.intermediate.dense")
        inner = 0.5 * inner * (1 + _erf(inner / math.sqrt(2)))
        x = norm(linear(inner, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"]
    assert any("Normalize" in m["type"] for m in json.loads((folder / "modules.json").read_text()))
    pooled = x.mean(0)
    return pooled / np.linalg.norm(pooled)


def make_tiny_xlm_roberta(folder: Path, tokenizer_from: Path, *, seed: int = 0) -> Path:
    """A random XLM-RoBERTa encoder (2 layers, width 32) under the names a sentence-transformers
    XLM-R checkpoint uses, mean-pooled and normalised, with `tokenizer_from`'s tokenizer files
    (any tokenizer will do: the vocabulary is sized for it)."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tokenizer_from / name).is_file():
            (folder / name).write_bytes((tokenizer_from / name).read_bytes())
    vocab = json.loads((tokenizer_from / "config.json").read_text())["vocab_size"]
    hidden, inner, positions = 32, 64, 66
    config = {
        "architectures": ["XLMRobertaModel"],
        "model_type": "xlm-roberta",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": inner,
        "hidden_act": "gelu",
        "max_position_embeddings": positions,
        "type_vocab_size": 1,
        "pad_token_id": 1,
        "layer_norm_eps": 1e-5,
        "position_embedding_type": "absolute",
    }
    (folder / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(seed)

    def normal(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    w = {
        "embeddings.word_embeddings.weight": normal(vocab, hidden),
        "embeddings.position_embeddings.weight": normal(positions, hidden),
        "embeddings.token_type_embeddings.weight": normal(1, hidden),
    }

    def norm(name: str) -> None:
        w[f"{name}.weight"] = 1 + normal(hidden)
        w[f"{name}.bias"] = normal(hidden)

    def linear(name: str, dims_in: int, dims_out: int) -> None:
        w[f"{name}.weight"], w[f"{name}.bias"] = normal(dims_out, dims_in), normal(dims_out)

    norm("embeddings.LayerNorm")
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}"
        for n in ("query", "key", "value"):
            linear(f"{p}.attention.self.{n}", hidden, hidden)
        linear(f"{p}.attention.output.dense", hidden, hidden)
        norm(f"{p}.attention.output.LayerNorm")
        linear(f"{p}.intermediate.dense", hidden, inner)
        linear(f"{p}.output.dense", inner, hidden)
        norm(f"{p}.output.LayerNorm")
    w["pooler.dense.weight"], w["pooler.dense.bias"] = normal(hidden, hidden), normal(hidden)
    save_file(w, str(folder / "model.safetensors"))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": hidden, "pooling_mode_mean_tokens": True})
    )
    modules = [{"type": "sentence_transformers.models.Normalize"}]
    (folder / "modules.json").write_text(json.dumps(modules))
    return folder

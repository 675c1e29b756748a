"""An independent reference for all-MiniLM-L6-v2's embeddings, and the sentences the
embedding tests compare.

What the reference proves: `reference_embedding` shares no code with mlxrouter. It reads the
safetensors with NumPy, runs BERT's published equations (post-norm layers, exact-erf GELU,
masked softmax) and pools as the model's `1_Pooling/config.json` and `modules.json` say (mean
over the real tokens, then L2). Only the tokenizer is shared (the model's own tokenizer.json,
read by the `tokenizers` library). Agreement to 1e-5 in cosine shows the MLX encoder, its
weight loading, masking, pooling and normalisation compute the sentence-transformers model.
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

    def norm(x: np.ndarray, name: str) -> np.ndarray:
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + eps) * w[f"{name}.weight"] + w[f"{name}.bias"]

    def linear(x: np.ndarray, name: str) -> np.ndarray:
        return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]

    e = "embeddings"
    x = (
        w[f"{e}.word_embeddings.weight"][ids]
        + w[f"{e}.position_embeddings.weight"][: len(ids)]
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

"""A BERT encoder on `mlx.nn`, for sentence-transformers embedding models (all-MiniLM-L6-v2,
bge, e5, gte: plain BERT with absolute positions), and RoBERTa / XLM-RoBERTa (multilingual-e5,
bge-m3, paraphrase-multilingual): the same network, whose position ids start after the padding
id (`padding_idx + 1`, as `create_position_ids_from_input_ids` counts them for real tokens).

Our own rather than `mlx-embeddings`: that package is GPL-3.0 (mlxrouter is MIT, so it could only
be an optional extra), and BERT is one embedding table and N identical post-norm layers, about
a hundred lines. The module tree mirrors the Hugging Face checkpoint's names, so its
`model.safetensors` loads as it is (`bert.` prefixes and the unused pooler dropped), strictly:
a missing or misshapen weight fails the load rather than encoding with random numbers.
Engine thread only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlx.core as mx

# From their modules: mypy does not follow `mlx.nn`'s star imports.
from mlx.nn.layers.activations import gelu
from mlx.nn.layers.base import Module
from mlx.nn.layers.embedding import Embedding
from mlx.nn.layers.linear import Linear
from mlx.nn.layers.normalization import LayerNorm

from ..discovery import PADDING_OFFSET_TYPES, RUNNABLE_ENCODERS

__all__ = ["BertEncoder", "is_encoder", "lazy_encoder"]

#: checkpoint name prefixes of the bare encoder inside a task model (`BertForMaskedLM`)
_PREFIXES = ("bert.", "roberta.")

#: weights of heads the embedding does not use; position ids are implicit
_UNUSED = ("pooler.", "cls.", "lm_head.")


def is_encoder(config: dict[str, Any]) -> bool:
    """An encoder this module runs (discovery's `RUNNABLE_ENCODERS`, absolute positions)."""
    return (
        config.get("model_type") in RUNNABLE_ENCODERS
        and config.get("position_embedding_type", "absolute") == "absolute"
    )


def position_offset(config: dict[str, Any]) -> int:
    """The position id of the first token: 0 for BERT, `pad_token_id + 1` for (XLM-)RoBERTa."""
    if config.get("model_type") in PADDING_OFFSET_TYPES:
        return int(config.get("pad_token_id", 1)) + 1
    return 0


class _Embeddings(Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        hidden = config["hidden_size"]
        self.word_embeddings = Embedding(config["vocab_size"], hidden)
        self.position_embeddings = Embedding(config["max_position_embeddings"], hidden)
        self.token_type_embeddings = Embedding(config.get("type_vocab_size", 2), hidden)
        self.LayerNorm = LayerNorm(hidden, eps=config.get("layer_norm_eps", 1e-12))
        self.offset = position_offset(config)

    def __call__(self, tokens: mx.array) -> mx.array:
        # Right padding: the real tokens' positions are the first ones, whatever the padding.
        positions = mx.arange(self.offset, self.offset + tokens.shape[1])
        # One segment: every token has type 0, as sentence-transformers encodes single texts.
        x = (
            self.word_embeddings(tokens)
            + self.position_embeddings(positions)[None]
            + self.token_type_embeddings.weight[0]
        )
        normed: mx.array = self.LayerNorm(x)
        return normed


class _SelfAttention(Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.query = Linear(hidden, hidden)
        self.key = Linear(hidden, hidden)
        self.value = Linear(hidden, hidden)


class _Dense(Module):
    """A linear layer, then (for the residual outputs) a post-norm over it plus the input."""

    def __init__(self, dims_in: int, dims_out: int, eps: float | None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.dense = Linear(dims_in, dims_out)
        if eps is not None:
            self.LayerNorm = LayerNorm(dims_out, eps=eps)


class _Attention(Module):
    def __init__(self, hidden: int, heads: int, eps: float) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.heads = heads
        # `self` is the checkpoint's name for the projections.
        self.self = _SelfAttention(hidden)
        self.output = _Dense(hidden, hidden, eps)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        batch, length, hidden = x.shape
        head_dim = hidden // self.heads

        def split(t: mx.array) -> mx.array:
            return t.reshape(batch, length, self.heads, head_dim).transpose(0, 2, 1, 3)

        proj = self.self
        q, k, v = split(proj.query(x)), split(proj.key(x)), split(proj.value(x))
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=head_dim**-0.5, mask=mask)
        out = out.transpose(0, 2, 1, 3).reshape(batch, length, hidden)
        normed: mx.array = self.output.LayerNorm(self.output.dense(out) + x)
        return normed


class _Layer(Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        hidden, inner = config["hidden_size"], config["intermediate_size"]
        eps = config.get("layer_norm_eps", 1e-12)
        self.attention = _Attention(hidden, config["num_attention_heads"], eps)
        self.intermediate = _Dense(hidden, inner, None)
        self.output = _Dense(inner, hidden, eps)

    def __call__(self, x: mx.array, mask: mx.array) -> mx.array:
        x = self.attention(x, mask)
        inner = gelu(self.intermediate.dense(x))  # BERT's "gelu" is the exact (erf) one
        normed: mx.array = self.output.LayerNorm(self.output.dense(inner) + x)
        return normed


class _Encoder(Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.layer = [_Layer(config) for _ in range(config["num_hidden_layers"])]


class BertEncoder(Module):
    """Token ids (right-padded) and their mask → the last layer's hidden states."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        if config.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"activation {config.get('hidden_act')!r} is not BERT's gelu")
        self.embeddings = _Embeddings(config)
        self.encoder = _Encoder(config)

    def __call__(self, tokens: mx.array, mask: mx.array) -> mx.array:
        x = self.embeddings(tokens)
        # Padding is never attended to: an additive mask over the keys.
        bias = mx.where(mask.astype(mx.bool_), 0.0, -1e9).astype(x.dtype)[:, None, None, :]
        for layer in self.encoder.layer:
            x = layer(x, bias)
        return x


def lazy_encoder(folder: Path, config: dict[str, Any]) -> BertEncoder:
    """The encoder with the folder's weights (every safetensors file) mapped, checked against
    the network's names and shapes, and not yet read: the engine reads them a slice per step
    (`loading.PendingLoads`)."""
    model = BertEncoder(config)
    weights: dict[str, mx.array] = {}
    for file in sorted(folder.glob("*.safetensors")):
        loaded: Any = mx.load(str(file))  # lazy: nothing is read until evaluated
        weights.update(loaded)
    kept = {}
    for full_name, value in weights.items():
        name = next((full_name[len(p) :] for p in _PREFIXES if full_name.startswith(p)), full_name)
        if name.startswith(_UNUSED) or name.endswith("position_ids"):
            continue
        kept[name] = value
    model.load_weights(list(kept.items()), strict=True)
    model.eval()
    return model

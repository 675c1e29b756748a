"""The GGUF tokenizer as Hugging Face files: `tokenizer.json` rebuilt from the `tokenizer.ggml.*`
metadata with the `tokenizers` library, plus `tokenizer_config.json`, `special_tokens_map.json`
and `generation_config.json`. Pure: metadata in, objects to write out."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)

from mlxrouter.errors import GGUFConversionError
from mlxrouter.gguf_reader import Metadata

__all__ = ["convert_tokenizer", "token_ids"]

log = logging.getLogger(__name__)

# llama.cpp token types (llama_token_type).
_TOKEN_NORMAL, _TOKEN_UNKNOWN, _TOKEN_CONTROL, _TOKEN_USER_DEFINED = 1, 2, 3, 4

# Pre-tokenizer split patterns, keyed by `tokenizer.ggml.pre`, as llama.cpp and the original
# Hugging Face tokenizers spell them. The merges were learned on text split this way, so the
# wrong split gives valid but different (worse) token sequences.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT2_PRES = frozenset({"default", "gpt-2", "gpt2", "mpt", "olmo", "jais"})
# StarCoder-style: every digit on its own, then the GPT-2 split (SmolLM2 is one of these).
_DIGIT_PRES = frozenset({"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone"})
_LLAMA3_PRES = frozenset({"llama3", "llama-v3", "llama-bpe", "falcon3", "dbrx", "smaug-bpe"})
_QWEN2_PRES = frozenset({"qwen2", "stablelm2", "deepseek-r1-qwen", "megrez"})
_TEKKEN_PRES = frozenset({"tekken"})


def token_ids(meta: Metadata) -> dict[str, Any]:
    """bos/eos/pad ids for config.json; end-of-turn tokens count as eos so generation stops."""
    ids: dict[str, Any] = {}
    bos = meta.optional_int("tokenizer.ggml.bos_token_id")
    if bos is not None:
        ids["bos_token_id"] = bos
    eos = [
        token
        for key in ("eos_token_id", "eot_token_id", "eom_token_id")
        if (token := meta.optional_int(f"tokenizer.ggml.{key}")) is not None
    ]
    eos = list(dict.fromkeys(eos))
    if eos:
        ids["eos_token_id"] = eos[0] if len(eos) == 1 else eos
    pad = meta.optional_int("tokenizer.ggml.padding_token_id")
    if pad is not None:
        ids["pad_token_id"] = pad
    return ids


def convert_tokenizer(
    meta: Metadata, *, context_length: int | None
) -> dict[str, Tokenizer | dict[str, Any]]:
    """tokenizer.json (+ its config files) rebuilt from the `tokenizer.ggml.*` metadata."""
    name = meta.file_name
    kind = meta.string("tokenizer.ggml.model")
    tokens = meta.strings("tokenizer.ggml.tokens")
    types = meta.numbers("tokenizer.ggml.token_type") or [_TOKEN_NORMAL] * len(tokens)
    if len(types) != len(tokens):
        raise GGUFConversionError(f"{name}: token types do not match the vocabulary")
    pre = meta.string("tokenizer.ggml.pre", "default")
    if kind not in ("gpt2", "llama"):
        raise GGUFConversionError(
            f"{name}: tokenizer model {kind!r} is not supported (only 'gpt2' and 'llama')"
        )

    try:
        if kind == "gpt2":
            tokenizer = _byte_level_bpe(meta, tokens, pre)
            add_bos_default = pre in _LLAMA3_PRES  # what llama.cpp assumes when the flag is absent
        else:
            tokenizer = _sentencepiece_bpe(meta, tokens, types)
            add_bos_default = True
        # Control tokens must stay whole and be skippable; user-defined ones only stay whole.
        specials = [
            AddedToken(token, special=True, normalized=False)
            for token, kind_id in zip(tokens, types, strict=True)
            if kind_id in (_TOKEN_CONTROL, _TOKEN_UNKNOWN)
        ]
        plain = [
            AddedToken(token, special=False, normalized=False)
            for token, kind_id in zip(tokens, types, strict=True)
            if kind_id == _TOKEN_USER_DEFINED
        ]
        tokenizer.add_special_tokens(specials)
        tokenizer.add_tokens(plain)
    except GGUFConversionError:
        raise
    except Exception as exc:  # tokenizers raises bare Exception from Rust
        raise GGUFConversionError(f"{name}: the tokenizer metadata is inconsistent") from exc

    def token(key: str) -> str | None:
        index = meta.optional_int(f"tokenizer.ggml.{key}")
        return tokens[index] if index is not None and 0 <= index < len(tokens) else None

    special_map = {
        role: value
        for role, key in (
            ("bos_token", "bos_token_id"),
            ("eos_token", "eos_token_id"),
            ("unk_token", "unknown_token_id"),
            ("pad_token", "padding_token_id"),
        )
        if (value := token(key)) is not None
    }
    add_bos = meta.optional_bool("tokenizer.ggml.add_bos_token")
    add_bos = add_bos_default if add_bos is None else add_bos
    add_eos = bool(meta.optional_bool("tokenizer.ggml.add_eos_token"))
    tokenizer.post_processor = _post_processor(
        special_map, tokenizer, add_bos=add_bos, add_eos=add_eos, byte_level=kind == "gpt2"
    )

    tokenizer_config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special_map,
        "add_bos_token": add_bos and "bos_token" in special_map,
        "add_eos_token": add_eos and "eos_token" in special_map,
        "clean_up_tokenization_spaces": False,
    }
    if context_length is not None:
        tokenizer_config["model_max_length"] = context_length
    chat_template = meta.raw.get("tokenizer.chat_template")
    if isinstance(chat_template, str) and chat_template:
        tokenizer_config["chat_template"] = chat_template
    else:
        log.warning("%s has no chat template; chat requests will use mlx_lm's fallback", name)

    generation_config = token_ids(meta)
    return {
        "tokenizer.json": tokenizer,
        "tokenizer_config.json": tokenizer_config,
        "special_tokens_map.json": dict(special_map),
        "generation_config.json": generation_config,
    }


def _byte_level_bpe(meta: Metadata, tokens: Sequence[str], pre: str) -> Tokenizer:
    """GPT-2 style byte-level BPE; GGUF stores tokens already in the byte-to-unicode spelling."""
    merges: list[tuple[str, str]] = []
    for merge in meta.strings("tokenizer.ggml.merges"):
        # Byte-level tokens spell a space as "Ġ", so the one real space separates the pair.
        left, _, right = merge.partition(" ")
        if not left or not right:
            raise GGUFConversionError(f"{meta.file_name}: malformed BPE merge {merge!r}")
        merges.append((left, right))
    # Every token keeps its own id, including control tokens spelled outside the byte alphabet,
    # so adding them as special tokens below reuses their ids instead of appending new ones.
    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer = Tokenizer(
        models.BPE(
            vocab=vocab,
            merges=merges,
            fuse_unk=False,
            byte_fallback=False,
            # Llama 3 takes whole words straight from the vocabulary before merging.
            ignore_merges=pre in _LLAMA3_PRES,
        )
    )
    if pre in _DIGIT_PRES:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    elif pre in _LLAMA3_PRES or pre in _QWEN2_PRES or pre in _TEKKEN_PRES:
        split = (
            _LLAMA3_SPLIT
            if pre in _LLAMA3_PRES
            else _QWEN2_SPLIT
            if pre in _QWEN2_PRES
            else _TEKKEN_SPLIT
        )
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        if pre in _QWEN2_PRES:
            tokenizer.normalizer = normalizers.NFC()
    else:
        if pre not in _GPT2_PRES:
            # llama.cpp also falls back to a generic split for names it does not know.
            log.warning("unknown GGUF pre-tokenizer %r; using the GPT-2 split", pre)
        # ByteLevel's built-in regex is the GPT-2 split.
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def _sentencepiece_bpe(meta: Metadata, tokens: Sequence[str], types: Sequence[int]) -> Tokenizer:
    """A SentencePiece BPE vocabulary (Llama 1/2, Mistral...) as an HF BPE with byte fallback.

    GGUF keeps no merges for these, only per-token scores; as in transformers' converter the
    merges are every split of a token into two vocabulary pieces, ranked by the token's score.
    """
    scores = meta.numbers("tokenizer.ggml.scores")
    if scores is None or len(scores) != len(tokens):
        raise GGUFConversionError(f"{meta.file_name}: sentencepiece scores are missing")
    vocab = {token: index for index, token in enumerate(tokens)}
    mergeable = {token for token, kind in zip(tokens, types, strict=True) if kind == _TOKEN_NORMAL}
    ranked: list[tuple[float, int, int, str, str]] = []
    for token, score in zip(tokens, scores, strict=True):
        if token not in mergeable or len(token) < 2:
            continue
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in mergeable and right in mergeable:
                ranked.append((-float(score), vocab[left], vocab[right], left, right))
    ranked.sort()
    merges = [(left, right) for _, _, _, left, right in ranked]

    unk_id = meta.optional_int("tokenizer.ggml.unknown_token_id")
    unk = tokens[unk_id] if unk_id is not None and 0 <= unk_id < len(tokens) else None
    tokenizer = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True)
    )
    add_prefix = meta.optional_bool("tokenizer.ggml.add_space_prefix")
    add_prefix = True if add_prefix is None else add_prefix
    # The "legacy" Llama layout: llama.cpp also puts the prefix space after special tokens.
    steps: list[normalizers.Normalizer] = [normalizers.Replace(" ", "\u2581")]
    if add_prefix:
        steps.insert(0, normalizers.Prepend("\u2581"))
    tokenizer.normalizer = normalizers.Sequence(steps)
    # This exact decoder shape is what mlx_lm recognises for its SentencePiece streaming decoder.
    decode_steps: list[decoders.Decoder] = [
        decoders.Replace("\u2581", " "),
        decoders.ByteFallback(),
        decoders.Fuse(),
    ]
    if add_prefix:
        decode_steps.append(decoders.Strip(" ", 1, 0))
    tokenizer.decoder = decoders.Sequence(decode_steps)
    return tokenizer


def _post_processor(
    special_map: Mapping[str, str],
    tokenizer: Tokenizer,
    *,
    add_bos: bool,
    add_eos: bool,
    byte_level: bool,
) -> processors.PostProcessor | None:
    bos, eos = special_map.get("bos_token"), special_map.get("eos_token")
    add_bos, add_eos = add_bos and bos is not None, add_eos and eos is not None
    if not add_bos and not add_eos:
        return processors.ByteLevel(trim_offsets=False) if byte_level else None
    single = " ".join(
        [*([f"{bos}:0"] if add_bos else []), "$A:0", *([f"{eos}:0"] if add_eos else [])]
    )
    pair = " ".join(
        [single, *([f"{bos}:1"] if add_bos else []), "$B:1", *([f"{eos}:1"] if add_eos else [])]
    )
    used = [t for t, on in ((bos, add_bos), (eos, add_eos)) if on and t is not None]
    return processors.TemplateProcessing(
        single=single,
        pair=pair,
        special_tokens=[(t, tokenizer.token_to_id(t)) for t in used],
    )

"""Tiny random-weight llama models for tests where the text does not matter.

`make_tiny_model(folder)` writes a complete MLX model folder (config.json, model.safetensors,
tokenizer.json, tokenizer_config.json with a chat template) of a few hundred KB. The tokenizer
is a byte-level BPE trained on a few sentences, so any text round-trips.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is the capital of France? Paris is the capital of France.",
    "Hello world, this is a tiny model used by the tests of mlxrouter.",
    "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ",
]


def train_bpe(corpus: list[str], *, vocab_size: int) -> Any:
    """A byte-level BPE `tokenizers.Tokenizer` with the chat special tokens, trained on
    `corpus`: small, yet any text round-trips."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return tok


def save_tokenizer(tok: Any, folder: Path, chat_template: str) -> Any:
    """Save `tok` as a transformers fast tokenizer (tokenizer.json, tokenizer_config.json,
    chat template) with ChatML's special tokens; returns the fast tokenizer."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    fast.chat_template = chat_template
    fast.save_pretrained(str(folder))
    return fast


def write_tokenizer(folder: Path, *, vocab_size: int = 320) -> int:
    tok = train_bpe(CORPUS, vocab_size=vocab_size)
    save_tokenizer(tok, folder, CHAT_TEMPLATE)
    return int(tok.get_vocab_size())


def make_tiny_model(
    folder: Path,
    *,
    seed: int = 0,
    hidden: int = 32,
    layers: int = 2,
    context: int = 256,
    tokenizer: Callable[[Path], int] = write_tokenizer,
) -> Path:
    """Write a random-weight llama model folder that mlx_lm.load opens. Runs mlx on the
    calling thread; tests call it from fixtures, never while an engine uses the arrays.
    `tokenizer` writes the tokenizer files into the folder and returns the vocabulary size."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    folder.mkdir(parents=True, exist_ok=True)
    vocab = tokenizer(folder)
    config = {
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "intermediate_size": hidden * 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "vocab_size": vocab,
        "max_position_embeddings": context,
        "tie_word_embeddings": True,
        "rope_theta": 10000.0,
    }
    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "mlx"})
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def make_tiny_adapter(
    folder: Path, base_folder: Path, *, base_ref: str, seed: int = 0, rank: int = 8, layers: int = 2
) -> Path:
    """Write a LoRA adapter folder (adapter_config.json + adapters.safetensors) for a tiny
    base, in the format mlx_lm.lora saves. Its `lora_b` is random rather than zero (as an
    untrained adapter's would be), so the adapter really changes the base model's answers."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import load_model

    lora = {"rank": rank, "scale": 20.0, "dropout": 0.0}
    mx.random.seed(seed)  # lora_a is initialised randomly too
    model, _ = load_model(base_folder, lazy=True)
    model.freeze()
    linear_to_lora_layers(model, layers, lora)
    adapters = {}
    for name, value in tree_flatten(model.trainable_parameters()):
        adapters[name] = mx.random.normal(value.shape) * 0.5 if name.endswith("lora_b") else value
    return save_adapter(folder, adapters, base_ref=base_ref, layers=layers, lora=lora)


def train_tiny_adapter(
    folder: Path,
    base_folder: Path,
    *,
    base_ref: str,
    prompt: str,
    target: str,
    steps: int = 300,
    max_steps: int = 2000,
) -> Path:
    """Train a real LoRA adapter (mlx_lm's LoRA layers, Adam, cross-entropy) so the base
    model answers `prompt` (a chat message) with `target`. Overfits on one example: seconds
    on a CPU for a tiny base."""
    import mlx.core as mx
    import mlx.optimizers as optim
    from mlx import nn
    from mlx.utils import tree_flatten
    from mlx_lm import generate, load
    from mlx_lm.tuner.utils import linear_to_lora_layers

    mx.random.seed(0)
    model, tokenizer = load(str(base_folder))
    model.freeze()
    keys = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]
    keys += ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
    lora = {"rank": 8, "scale": 10.0, "dropout": 0.0, "keys": keys}
    layers = len(model.layers)
    linear_to_lora_layers(model, layers, lora)
    context = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True
    )
    answer = [*tokenizer.encode(target, add_special_tokens=False), tokenizer.eos_token_id]
    tokens = mx.array([context + answer])
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    weights = mx.array([[0.0] * (len(context) - 1) + [1.0] * len(answer)])

    def loss(model: nn.Module) -> mx.array:
        logits = model(inputs)
        losses = nn.losses.cross_entropy(logits, labels) * weights
        return losses.sum() / weights.sum()

    optimizer = optim.Adam(learning_rate=1e-2)
    step = nn.value_and_grad(model, loss)
    done = 0
    # At least `steps`, then on until greedy decoding gives the target: devices differ in
    # float precision (CUDA may use TF32), so a fixed count is not enough everywhere.
    while done < steps or generate(model, tokenizer, context, max_tokens=len(answer)) != target:
        if done >= max_steps:
            raise RuntimeError(f"the adapter did not learn {target!r} in {max_steps} steps")
        for _ in range(100):
            _, grads = step(model)
            optimizer.update(model, grads)
            mx.eval(model.trainable_parameters(), optimizer.state)
        done += 100
    adapters = dict(tree_flatten(model.trainable_parameters()))
    return save_adapter(folder, adapters, base_ref=base_ref, layers=layers, lora=lora)


def save_adapter(
    folder: Path, adapters: dict[str, Any], *, base_ref: str, layers: int, lora: dict[str, Any]
) -> Path:
    """Write an adapter folder in the format mlx_lm.lora saves (weights + adapter_config)."""
    import mlx.core as mx

    folder.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(folder / "adapters.safetensors"), adapters)
    config = {
        "model": base_ref,
        "fine_tune_type": "lora",
        "num_layers": layers,
        "lora_parameters": lora,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return folder


# Thinking models: ChatML with Qwen3's switch. The template opens a `<think>` block for the
# answer unless `enable_thinking` is false (then it writes an empty, closed one); with
# `open_think: false` it opens none and leaves that to the model. Earlier assistant turns'
# `reasoning_content` is rendered, and tools are offered in the `<tool_call>` JSON format
# (mlx_lm picks its `json_tools` parser: the template names `<tool_call>` and `tool_call.name`).
THINK_TEMPLATE = """\
{%- if tools %}
    {{- '<|im_start|>system\\nCall a tool as <tool_call>\\n{"name": ..., "arguments": ...}\\n\
</tool_call> with one of:' }}
    {%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}
    {{- '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {{- '<|im_start|>' + message.role + '\\n' }}
    {%- if message.role == 'assistant' and message.reasoning_content %}
        {{- '<think>' + message.reasoning_content + '</think>' }}
    {%- endif %}
    {{- message.content }}
    {%- for tool_call in message.tool_calls or [] %}
        {%- set tool_call = tool_call.function %}
        {{- '<tool_call>\\n{"name": "' + tool_call.name + '", "arguments": ' }}
        {{- (tool_call.arguments | tojson) + '}\\n</tool_call>' }}
    {%- endfor %}
    {{- '<|im_end|>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>' }}
    {%- elif open_think is not defined or open_think %}
        {{- '<think>' }}
    {%- endif %}
{%- endif %}
"""
THINK_MARKERS = ["<think>", "</think>"]


def write_thinking_tokenizer(
    folder: Path, *, pieces: Sequence[str] = (), vocab_size: int = 320
) -> int:
    """The tiny BPE plus `<think>` / `</think>` as special tokens (so mlx_lm's tokenizer has
    thinking) and `pieces` as added ordinary tokens; the thinking chat template."""
    from tokenizers import AddedToken

    tok = train_bpe(CORPUS, vocab_size=vocab_size)
    tok.add_tokens([AddedToken(p, special=False, normalized=False) for p in dict.fromkeys(pieces)])
    tok.add_special_tokens([AddedToken(m, special=True, normalized=False) for m in THINK_MARKERS])
    fast = save_tokenizer(tok, folder, THINK_TEMPLATE)
    for piece in [*pieces, *THINK_MARKERS]:
        if len(fast.encode(piece, add_special_tokens=False)) != 1:
            raise ValueError(f"{piece!r} is not a single token")
    return len(fast)


def make_thinking_model(folder: Path, *, seed: int = 0) -> Path:
    """A random-weight model whose tokenizer has thinking markers and whose template opens
    `<think>` unless `enable_thinking` is false."""
    return make_tiny_model(folder, seed=seed, context=4096, tokenizer=write_thinking_tokenizer)

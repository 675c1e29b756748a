"""A tiny llama model that answers every prompt with one fixed tool call, for tool-calling tests.

The reply is a few non-repeating added tokens t1..tn, then `<|im_end|>`. The blocks add nothing
(zero `o_proj`/`down_proj`), so the final hidden state is the last token's one-hot embedding (t_i
on axis i, any other token on axis 0); the untied `lm_head` maps axis 0 to t1, axis i to t_{i+1}
and axis n to EOS, with a ~40-logit margin. The Qwen2.5-style chat template renders `tools`,
`tool_calls` and `tool` messages, and mlx_lm infers its `json_tools` tool parser from it.
"""

from __future__ import annotations

import json
from pathlib import Path

from tinymodel import make_tiny_model, save_tokenizer, train_bpe

# Qwen2.5's template, with a neutral default system prompt. mlx_lm picks the `json_tools` parser
# because it contains both "<tool_call>" and "tool_call.name".
CHAT_TEMPLATE = """\
{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n\
You are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and \
arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \
\\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) \
or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""
# Added but not special, as in Qwen2.5: they decode like ordinary text.
MARKERS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]
CORPUS = [
    "You are a helpful assistant. What is the weather like in Paris today?",
    'The tools: {"type": "function", "function": {"name": "get_weather", "parameters": {}}}',
    "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ",
]
LOGIT = 10.0  # lm_head entry; times the normalised one-hot (sqrt(hidden)) gives the margin


def tool_call_pieces(name: str, arguments: dict[str, object]) -> list[str]:
    """The reply's tokens before EOS; joined, they are the tool-call text."""
    return [
        "<tool_call>",
        '\n{"name": ',
        json.dumps(name),
        ', "arguments": ',
        json.dumps(arguments),
        "}\n",
        "</tool_call>",
    ]


def tool_call_text(name: str = "get_weather", arguments: dict[str, object] | None = None) -> str:
    """The exact text the tool model generates (the EOS token is not part of it)."""
    return "".join(tool_call_pieces(name, {"city": "Paris"} if arguments is None else arguments))


def _write_tokenizer(folder: Path, pieces: list[str]) -> tuple[int, list[int], int]:
    """Write a byte-level BPE tokenizer in which each piece is one added token. Returns the vocab
    size, the pieces' ids, and the EOS id."""
    from tokenizers import AddedToken

    tok = train_bpe(CORPUS, vocab_size=300)
    added = list(dict.fromkeys([*MARKERS, *pieces]))
    tok.add_tokens([AddedToken(p, special=False, normalized=False) for p in added])
    fast = save_tokenizer(tok, folder, CHAT_TEMPLATE)
    ids = [fast.convert_tokens_to_ids(p) for p in pieces]
    for piece, token_id in zip(pieces, ids, strict=True):
        if fast.encode(piece, add_special_tokens=False) != [token_id]:
            raise ValueError(f"{piece!r} is not a single token")
    return len(fast), ids, int(fast.eos_token_id)


def make_tool_model(
    folder: Path, *, name: str = "get_weather", arguments: dict[str, object] | None = None
) -> Path:
    """Write a llama model folder whose greedy reply to any prompt is `tool_call_text(name,
    arguments)` followed by `<|im_end|>`. Runs mlx on the calling thread."""
    import mlx.core as mx
    import numpy as np
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    pieces = tool_call_pieces(name, {"city": "Paris"} if arguments is None else arguments)
    if len(set(pieces)) != len(pieces):
        raise ValueError(f"the tool call's pieces repeat: {pieces}")
    folder.mkdir(parents=True, exist_ok=True)
    vocab, ids, eos = _write_tokenizer(folder, pieces)
    hidden = 16  # axis 0 for "any other token", axes 1..len(pieces) for the pieces
    config = {
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": 1,
        "intermediate_size": 32,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "rms_norm_eps": 1e-5,
        "vocab_size": vocab,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": False,
        "rope_theta": 10000.0,
    }
    mx.random.seed(0)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    weights = dict(tree_flatten(model.parameters()))
    for key, value in weights.items():
        if key.endswith(("o_proj.weight", "down_proj.weight")):
            weights[key] = mx.zeros_like(value)  # the blocks add nothing to the residual stream

    embed = np.zeros((vocab, hidden), dtype=np.float32)
    embed[:, 0] = 1.0
    head = np.zeros((vocab, hidden), dtype=np.float32)
    head[ids[0], 0] = LOGIT  # any other token -> t1
    for axis, token_id in enumerate(ids, start=1):
        embed[token_id] = 0.0
        embed[token_id, axis] = 1.0
        successor = ids[axis] if axis < len(ids) else eos  # t_i -> t_{i+1}, t_n -> EOS
        head[successor, axis] = LOGIT
    weights["model.embed_tokens.weight"] = mx.array(embed)
    weights["lm_head.weight"] = mx.array(head)
    mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "mlx"})
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def make_random_tool_model(folder: Path, *, seed: int = 0) -> Path:
    """A random-weight model with the same tool-calling chat template and markers: left to
    itself it never writes a well-formed tool call, so a call it makes was forced."""
    return make_tiny_model(
        folder, seed=seed, context=4096, tokenizer=lambda target: _write_tokenizer(target, [])[0]
    )


# Tools whose every argument is an enum: a forced call by a random model is short and finite.
CITY_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
            "required": ["city"],
            "additionalProperties": False,  # else a random model may invent endless keys
        },
    },
}

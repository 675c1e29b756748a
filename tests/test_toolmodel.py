"""The tool model (tests/toolmodel.py) behaves as the tool-calling tests rely on, checked with
mlx_lm directly: its tokenizer has tool calling, its reply is the fixed call, and the parser that
mlx_lm picked for its chat template turns that reply into the call."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from toolmodel import make_tool_model, tool_call_pieces, tool_call_text

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
QUESTION = [{"role": "user", "content": "What is the weather like in Paris?"}]
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


@pytest.fixture(scope="module")
def tool_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tool_model(tmp_path_factory.mktemp("tool-model") / "tool")


@pytest.fixture(scope="module")
def loaded(tool_model: Path) -> tuple[Any, Any]:
    import mlx_lm

    return mlx_lm.load(str(tool_model))


def generate(loaded: tuple[Any, Any], messages: list[dict[str, Any]], **kwargs: Any) -> str:
    import mlx_lm

    model, tokenizer = loaded
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, **kwargs)
    return str(mlx_lm.generate(model, tokenizer, prompt, max_tokens=40))


def between_markers(tokenizer: Any, text: str) -> str:
    start = text.index(tokenizer.tool_call_start) + len(tokenizer.tool_call_start)
    return text[start : text.index(tokenizer.tool_call_end, start)]


def test_folder_is_small(tool_model: Path) -> None:
    names = {p.name for p in tool_model.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= names
    assert sum(p.stat().st_size for p in tool_model.iterdir()) < 2_000_000


def test_tool_call_text_is_the_documented_one() -> None:
    assert tool_call_text() == CALL
    assert "".join(tool_call_pieces("get_weather", {"city": "Paris"})) == CALL


def test_mlx_lm_detects_tool_calling(loaded: tuple[Any, Any]) -> None:
    from mlx_lm.tool_parsers import json_tools

    _, tokenizer = loaded
    assert tokenizer.has_tool_calling is True
    assert tokenizer.tool_call_start == "<tool_call>"
    assert tokenizer.tool_call_end == "</tool_call>"
    assert tokenizer.tool_parser is json_tools.parse_tool_call
    # Each marker is a single token, as in Qwen2.5.
    assert len(tokenizer.tool_call_start_tokens) == 1
    assert len(tokenizer.tool_call_end_tokens) == 1


def test_greedy_reply_is_the_tool_call(loaded: tuple[Any, Any]) -> None:
    assert generate(loaded, QUESTION, tools=TOOLS) == CALL


def test_reply_ignores_the_prompt(loaded: tuple[Any, Any]) -> None:
    assert generate(loaded, QUESTION) == CALL
    assert generate(loaded, [{"role": "user", "content": "Hi"}], tools=TOOLS) == CALL


def test_text_prompt_encoded_without_special_tokens(loaded: tuple[Any, Any]) -> None:
    """The engine's path: render to text, then encode it."""
    import mlx_lm

    model, tokenizer = loaded
    text = tokenizer.apply_chat_template(
        QUESTION, tools=TOOLS, add_generation_prompt=True, tokenize=False
    )
    prompt = tokenizer.encode(text, add_special_tokens=False)
    assert mlx_lm.generate(model, tokenizer, prompt, max_tokens=40) == CALL


def test_stream_ends_with_eos_one_piece_per_token(loaded: tuple[Any, Any]) -> None:
    import mlx_lm

    model, tokenizer = loaded
    prompt = tokenizer.apply_chat_template(QUESTION, tools=TOOLS, add_generation_prompt=True)
    responses = list(mlx_lm.stream_generate(model, tokenizer, prompt, max_tokens=40))
    pieces = tool_call_pieces("get_weather", {"city": "Paris"})
    assert [r.text for r in responses] == [*pieces, ""]
    assert responses[-1].token in tokenizer.eos_token_ids
    assert responses[-1].finish_reason == "stop"


def test_sampling_at_temperature_one_gives_the_same_reply(loaded: tuple[Any, Any]) -> None:
    import mlx.core as mx
    import mlx_lm
    from mlx_lm.sample_utils import make_sampler

    model, tokenizer = loaded
    prompt = tokenizer.apply_chat_template(QUESTION, tools=TOOLS, add_generation_prompt=True)
    mx.random.seed(0)
    sampler = make_sampler(temp=1.0)
    for _ in range(3):
        assert mlx_lm.generate(model, tokenizer, prompt, max_tokens=40, sampler=sampler) == CALL


def test_parser_turns_the_reply_into_the_call(loaded: tuple[Any, Any]) -> None:
    _, tokenizer = loaded
    body = between_markers(tokenizer, generate(loaded, QUESTION, tools=TOOLS))
    assert tokenizer.tool_parser(body, TOOLS) == {
        "name": "get_weather",
        "arguments": {"city": "Paris"},
    }


def test_template_renders_the_tools(loaded: tuple[Any, Any]) -> None:
    _, tokenizer = loaded
    text = tokenizer.apply_chat_template(
        QUESTION, tools=TOOLS, add_generation_prompt=True, tokenize=False
    )
    assert '"name": "get_weather"' in text
    assert "<tools>" in text
    assert text.endswith("<|im_start|>assistant\n")
    plain = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    assert "get_weather" not in plain


def test_template_renders_a_tool_call_history(loaded: tuple[Any, Any]) -> None:
    _, tokenizer = loaded
    history = [
        *QUESTION,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    # A dict, as mlx_lm.server passes it after json.loads of the OpenAI string.
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 18}'},
    ]
    text = tokenizer.apply_chat_template(
        history, tools=TOOLS, add_generation_prompt=True, tokenize=False
    )
    assert f"<|im_start|>assistant\n{CALL}<|im_end|>\n" in text
    assert '<|im_start|>user\n<tool_response>\n{"temperature": 18}\n</tool_response>' in text
    assert generate(loaded, history, tools=TOOLS) == CALL


def test_other_name_and_arguments(tmp_path: Path) -> None:
    import mlx_lm

    arguments: dict[str, object] = {"query": "weather", "limit": 2, "exact": True}
    folder = make_tool_model(tmp_path / "search", name="search", arguments=arguments)
    model, tokenizer = mlx_lm.load(str(folder))
    prompt = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True)
    text = mlx_lm.generate(model, tokenizer, prompt, max_tokens=40)
    assert text == tool_call_text("search", arguments)
    body = between_markers(tokenizer, text)
    assert tokenizer.tool_parser(body, None) == {"name": "search", "arguments": arguments}

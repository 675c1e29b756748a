"""Thinking models end to end through the openai SDK: reasoning in `reasoning_content` and
`reasoning`, never in `content`; the switches that turn thinking off; stop strings, tool calls
and `response_format` applying to the answer after `</think>`; earlier turns' reasoning.

Models: the thinking chain model (tests/thinkmodel.py, fixed text: it thinks, then answers),
its twin whose answer is a tool call, a random-weight thinking model, and the plain tiny model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from conftest import running_daemon
from thinkmodel import ANSWER, REASONING, WEAK_STEP_BIAS, make_thinking_chain_model
from tinymodel import make_thinking_model
from toolmodel import CITY_TOOL, tool_call_pieces

THOUGHT = "".join(REASONING)
ANSWERED = "".join(ANSWER)
ASK = [{"role": "user", "content": "What is the capital of France?"}]
CITY_SCHEMA = {
    "type": "object",
    "properties": {"city": {"enum": ["Paris", "Rome", "Oslo"]}, "sunny": {"type": "boolean"}},
    "required": ["city", "sunny"],
    "additionalProperties": False,
}
CITY_FORMAT = {"type": "json_schema", "json_schema": {"name": "weather", "schema": CITY_SCHEMA}}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("thinking-models")
    make_thinking_chain_model(root / "thinker")
    call = tool_call_pieces("get_weather", {"city": "Paris"})
    make_thinking_chain_model(root / "tool-thinker", answer=call)
    make_thinking_model(root / "wild-thinker", seed=3)
    return root


@pytest.fixture(scope="module")
def daemon(models: Path, tiny_models: Path) -> Iterator[tuple[str, Any]]:
    # No prompt cache: the seeded answers compared below are computed the same way each time.
    config = (
        f"hf_cache: false\nmodel_dirs: [{models}, {tiny_models}]\n"
        "pool: {max_models: 4, prompt_cache_bytes: 0}\n"
    )
    with running_daemon(config) as served:
        yield served


def token_id(folder: Path, token: str) -> int:
    from transformers import PreTrainedTokenizerFast

    return int(PreTrainedTokenizerFast.from_pretrained(str(folder)).convert_tokens_to_ids(token))


@pytest.fixture(scope="module")
def client(daemon: tuple[str, Any]) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=daemon[0] + "/v1", api_key="x", max_retries=0, timeout=60) as sdk:
        yield sdk


def ask(client: openai.OpenAI, model: str = "thinker", **fields: Any) -> Any:
    fields = {"messages": ASK, "temperature": 0, "max_tokens": 40, **fields}
    return client.chat.completions.create(model=model, **fields)


def reasoning_of(message: Any) -> str | None:
    """Both names carry the same text (or are both absent)."""
    extra = message.model_extra or {}
    assert extra.get("reasoning_content") == extra.get("reasoning")
    return extra.get("reasoning_content")


def streamed(client: openai.OpenAI, model: str = "thinker", **fields: Any) -> dict[str, Any]:
    """A streamed answer put together: reasoning, content, tool calls, finish, usage."""
    chunks = list(ask(client, model, stream=True, stream_options={"include_usage": True}, **fields))
    parts: dict[str, Any] = {"reasoning": "", "content": "", "calls": [], "finish": None}
    for chunk in chunks:
        if not chunk.choices:
            parts["usage"] = chunk.usage
            continue
        delta, extra = chunk.choices[0].delta, chunk.choices[0].delta.model_extra or {}
        assert extra.get("reasoning_content") == extra.get("reasoning")
        if extra.get("reasoning_content"):
            assert not delta.content  # a chunk of reasoning carries no content
        parts["reasoning"] += extra.get("reasoning_content") or ""
        parts["content"] += delta.content or ""
        parts["calls"] += delta.tool_calls or []
        parts["finish"] = chunk.choices[0].finish_reason or parts["finish"]
    return parts


def test_reasoning_is_separated_from_the_content(client: openai.OpenAI) -> None:
    reply = ask(client)
    message = reply.choices[0].message
    assert reasoning_of(message) == THOUGHT
    assert message.content == ANSWERED
    assert reply.choices[0].finish_reason == "stop"
    usage = reply.usage
    assert usage is not None and usage.completion_tokens_details is not None
    # the reasoning pieces and `</think>` (the template opened the block)
    assert usage.completion_tokens_details.reasoning_tokens == len(REASONING) + 1
    assert usage.completion_tokens == len(REASONING) + 1 + len(ANSWER)


def test_reasoning_is_streamed_in_its_own_fields(client: openai.OpenAI) -> None:
    parts = streamed(client)
    assert parts["reasoning"] == THOUGHT
    assert parts["content"] == ANSWERED
    assert parts["finish"] == "stop"
    assert parts["usage"].completion_tokens_details.reasoning_tokens == len(REASONING) + 1


def test_a_block_the_model_opens_itself_is_reasoning_too(client: openai.OpenAI) -> None:
    """Qwen3-style: the template opens nothing, the answer's first token is `<think>`."""
    reply = ask(client, extra_body={"chat_template_kwargs": {"open_think": False}})
    assert reasoning_of(reply.choices[0].message) == THOUGHT
    assert reply.choices[0].message.content == ANSWERED
    assert reply.usage.completion_tokens_details.reasoning_tokens == len(REASONING) + 2
    parts = streamed(client, extra_body={"chat_template_kwargs": {"open_think": False}})
    assert (parts["reasoning"], parts["content"]) == (THOUGHT, ANSWERED)


@pytest.mark.parametrize(
    "switch",
    [
        {"extra_body": {"chat_template_kwargs": {"enable_thinking": False}}},
        {"reasoning_effort": "none"},
        {"extra_body": {"enable_thinking": False}},
        {"extra_body": {"think": False}},
    ],
    ids=["chat_template_kwargs", "reasoning_effort", "enable_thinking", "think"],
)
def test_switches_turn_thinking_off(client: openai.OpenAI, switch: dict[str, Any]) -> None:
    thinking = ask(client)
    plain = ask(client, **switch)
    assert plain.usage.prompt_tokens != thinking.usage.prompt_tokens  # another prompt
    assert reasoning_of(plain.choices[0].message) is None
    assert plain.choices[0].message.content == ANSWERED
    assert plain.usage.completion_tokens_details.reasoning_tokens == 0
    # The random thinking model's prompt changes too; the template's empty block is closed.
    wild_on, wild_off = ask(client, "wild-thinker"), ask(client, "wild-thinker", **switch)
    assert wild_off.usage.prompt_tokens != wild_on.usage.prompt_tokens
    assert wild_off.usage.completion_tokens_details.reasoning_tokens == 0


def test_later_fields_win_and_effort_levels_reach_the_template(client: openai.OpenAI) -> None:
    on = ask(client).usage.prompt_tokens
    off = ask(client, reasoning_effort="none").usage.prompt_tokens
    assert off != on
    both = {"reasoning_effort": "none", "extra_body": {"enable_thinking": True}}
    assert ask(client, **both).usage.prompt_tokens == on
    both = {"extra_body": {"think": True, "chat_template_kwargs": {"enable_thinking": False}}}
    assert ask(client, **both).usage.prompt_tokens == off
    # An effort other than "none" leaves thinking on (this template does not read it).
    high = ask(client, reasoning_effort="high")
    assert reasoning_of(high.choices[0].message) == THOUGHT


def test_forced_end_of_thinking_splits_at_the_tag(client: openai.OpenAI, models: Path) -> None:
    """A logit_bias on `</think>` strong enough to win only at the chain's weak step ends the
    reasoning after two pieces; the answer follows, whole."""
    bias = {str(token_id(models / "thinker", "</think>")): WEAK_STEP_BIAS}
    reply = ask(client, logit_bias=bias)
    assert reasoning_of(reply.choices[0].message) == "".join(REASONING[:2])
    assert reply.choices[0].message.content == ANSWERED
    assert reply.usage.completion_tokens_details.reasoning_tokens == 3
    parts = streamed(client, logit_bias=bias)
    assert (parts["reasoning"], parts["content"]) == ("".join(REASONING[:2]), ANSWERED)


def test_split_matches_the_raw_text_of_a_random_model(
    client: openai.OpenAI, daemon: tuple[str, Any], models: Path
) -> None:
    """Seeded sampling with `</think>` made likely: the chat answer's reasoning, the tag and
    its content are exactly the text the same prompt gets as a text completion."""
    from transformers import PreTrainedTokenizerFast

    folder = models / "wild-thinker"
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder))
    prompt = tokenizer.apply_chat_template(ASK, add_generation_prompt=True, tokenize=False)
    assert isinstance(prompt, str) and prompt.endswith("<think>")
    bias = {str(token_id(folder, "</think>")): 4}
    split = 0
    for seed in range(6):
        fields = {"temperature": 1.0, "seed": seed, "logit_bias": bias, "max_tokens": 30}
        raw = client.completions.create(model="wild-thinker", prompt=prompt, **fields)
        text = raw.choices[0].text
        reply = ask(client, "wild-thinker", **fields)
        assert reply.usage.prompt_tokens == raw.usage.prompt_tokens
        reasoning = reasoning_of(reply.choices[0].message) or ""
        content = reply.choices[0].message.content or ""
        if "</think>" in text:
            assert (reasoning, content) == tuple(text.split("</think>", 1))
            split += bool(reasoning and content)
        else:
            assert (reasoning, content) == (text, "")
            assert (
                reply.usage.completion_tokens_details.reasoning_tokens
                == raw.usage.completion_tokens
            )
    assert split  # some answers had both parts


def test_response_format_applies_to_the_answer(client: openai.OpenAI) -> None:
    for fields in ({}, {"extra_body": {"chat_template_kwargs": {"open_think": False}}}):
        reply = ask(client, response_format=CITY_FORMAT, **fields)
        assert reasoning_of(reply.choices[0].message) == THOUGHT
        value = json.loads(reply.choices[0].message.content or "")
        assert value["city"] in {"Paris", "Rome", "Oslo"} and isinstance(value["sunny"], bool)
        parts = streamed(client, response_format=CITY_FORMAT, **fields)
        assert parts["reasoning"] == THOUGHT and json.loads(parts["content"]) == value
    # Thinking off: the whole answer is the JSON.
    reply = ask(client, response_format=CITY_FORMAT, reasoning_effort="none")
    assert reasoning_of(reply.choices[0].message) is None
    assert json.loads(reply.choices[0].message.content or "")["city"] in {"Paris", "Rome", "Oslo"}


def test_a_model_still_thinking_is_not_constrained(client: openai.OpenAI, models: Path) -> None:
    """Until `</think>` the model thinks freely: an answer cut while reasoning has no content."""
    never = {str(token_id(models / "wild-thinker", "</think>")): -100}
    reply = ask(client, "wild-thinker", response_format=CITY_FORMAT, logit_bias=never)
    assert reply.choices[0].finish_reason == "length"
    assert reply.choices[0].message.content == ""
    assert reasoning_of(reply.choices[0].message)
    details = reply.usage.completion_tokens_details
    assert details.reasoning_tokens == reply.usage.completion_tokens == 40


def test_stop_strings_apply_to_the_answer_only(client: openai.OpenAI) -> None:
    reply = ask(client, stop=[REASONING[2], ANSWER[1]])
    assert reasoning_of(reply.choices[0].message) == THOUGHT
    assert reply.choices[0].message.content == ANSWER[0]
    assert reply.choices[0].finish_reason == "stop"
    parts = streamed(client, stop=[REASONING[2], ANSWER[1]])
    assert (parts["reasoning"], parts["content"]) == (THOUGHT, ANSWER[0])


@pytest.mark.parametrize("choice", ["auto", "required"])
def test_a_tool_call_after_thinking_is_parsed(client: openai.OpenAI, choice: str) -> None:
    fields = {"tools": [CITY_TOOL], "tool_choice": choice, "max_tokens": 80}
    reply = ask(client, "tool-thinker", **fields)
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "tool_calls"
    assert reasoning_of(message) == THOUGHT
    assert message.content is None
    (call,) = message.tool_calls or []
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    # forced calls are compact JSON of the grammar's choosing; the model's own is the call
    arguments = json.loads(call.function.arguments)  # type: ignore[union-attr]
    assert (
        arguments == {"city": "Paris"}
        if choice == "auto"
        else arguments["city"] in {"Paris", "Rome"}
    )
    parts = streamed(client, "tool-thinker", **fields)
    assert parts["reasoning"] == THOUGHT and parts["content"] == ""
    assert [c.function.name for c in parts["calls"]] == ["get_weather"]
    assert parts["finish"] == "tool_calls"


def test_earlier_reasoning_goes_to_templates_that_take_it(client: openai.OpenAI) -> None:
    def prompt_tokens(model: str, **turn: Any) -> int:
        earlier = {"role": "assistant", "content": "Paris.", **turn}
        messages = [*ASK, earlier, {"role": "user", "content": "And Italy?"}]
        return int(ask(client, model, messages=messages, max_tokens=1).usage.prompt_tokens)

    bare = prompt_tokens("thinker")
    assert prompt_tokens("thinker", reasoning_content=THOUGHT) > bare
    assert prompt_tokens("thinker", reasoning=THOUGHT) == prompt_tokens(
        "thinker", reasoning_content=THOUGHT
    )
    # tiny-a's template does not render reasoning: it is dropped, not an error
    assert prompt_tokens("tiny-a", reasoning_content=THOUGHT) == prompt_tokens("tiny-a")


def test_models_without_thinking_have_no_reasoning(client: openai.OpenAI) -> None:
    reply = ask(client, "tiny-a", max_tokens=8)
    assert reasoning_of(reply.choices[0].message) is None
    assert reply.usage.completion_tokens_details.reasoning_tokens == 0
    # The switches are template variables like any other: harmless for a template without them.
    reply = ask(client, "tiny-a", max_tokens=8, reasoning_effort="none")
    assert reasoning_of(reply.choices[0].message) is None


def test_text_completions_are_the_raw_text(client: openai.OpenAI) -> None:
    raw = client.completions.create(
        model="thinker", prompt="<|im_start|>assistant\n<think>", max_tokens=20, temperature=0
    )
    assert raw.choices[0].text == THOUGHT + "</think>" + ANSWERED
    assert raw.usage.completion_tokens_details.reasoning_tokens == 0


@pytest.mark.parametrize("name", ["chat_template", "tokenize", "add_generation_prompt", "tools"])
def test_template_kwargs_cannot_reach_template_parameters(
    daemon: tuple[str, Any], name: str
) -> None:
    body = {"model": "thinker", "messages": ASK, "chat_template_kwargs": {name: "x"}}
    response = httpx.post(daemon[0] + "/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "chat_template_kwargs"


def test_bad_switch_values_are_400(daemon: tuple[str, Any]) -> None:
    cases = [
        ("reasoning_effort", "maximal"),
        ("think", "x"),
        ("enable_thinking", [True]),
        ("chat_template_kwargs", ["enable_thinking"]),
    ]
    for field, value in cases:
        body = {"model": "thinker", "messages": ASK, field: value}
        response = httpx.post(daemon[0] + "/v1/chat/completions", json=body, timeout=60)
        assert response.status_code == 400, field

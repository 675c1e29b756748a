"""The parts behind reasoning output and the thinking switches, one at a time: where a prompt
leaves the model thinking, which tokens are reasoning, how one answer's tokens become content
and reasoning, and how the OpenAI fields map onto template variables. Real mlx_lm tokenizers
of the tiny thinking models (tests/tinymodel.py, tests/thinkmodel.py); no daemon."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from thinkmodel import ANSWER, REASONING, make_thinking_chain_model
from tinymodel import make_tiny_model

from mlxrouter.api.convert import template_kwargs
from mlxrouter.api.schemas import ChatCompletionRequest
from mlxrouter.engine import Chunk, Finished, GenerationRequest
from mlxrouter.engine.prompt import (
    ReasoningTokens,
    ThinkingMarkers,
    encode_prompt,
    template_variables,
    thinking_markers,
)
from mlxrouter.errors import InvalidRequestError

ASK = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from mlx_lm.tokenizer_utils import load

    return load(make_thinking_chain_model(tmp_path_factory.mktemp("thinker") / "thinker"))


@pytest.fixture(scope="module")
def plain_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from mlx_lm.tokenizer_utils import load

    return load(make_tiny_model(tmp_path_factory.mktemp("plain") / "plain"))


def markers(tokenizer: Any, messages: list[dict[str, Any]], **kwargs: Any) -> ThinkingMarkers:
    request = GenerationRequest(messages=messages, chat_template_kwargs=kwargs)
    found = thinking_markers(tokenizer, request, encode_prompt(tokenizer, request))
    assert found is not None
    return found


def test_a_prompt_ending_in_the_start_marker_leaves_the_model_thinking(tokenizer: Any) -> None:
    assert markers(tokenizer, ASK).opened
    assert not markers(tokenizer, ASK, enable_thinking=False).opened  # closed by the template
    assert not markers(tokenizer, ASK, open_think=False).opened  # left to the model
    # A marker the user wrote, near the end of the prompt, opens nothing.
    said = [{"role": "user", "content": "What does <think> mean? <think>"}]
    assert not markers(tokenizer, said, open_think=False).opened
    found = markers(tokenizer, ASK)
    assert (found.start, found.end) == ("<think>", "</think>")
    assert len(found.start_tokens) == len(found.end_tokens) == 1


def test_no_markers_for_text_completions_or_models_without_them(
    tokenizer: Any, plain_tokenizer: Any
) -> None:
    text = GenerationRequest(prompt="<think>")
    assert thinking_markers(tokenizer, text, encode_prompt(tokenizer, text)) is None
    chat = GenerationRequest(messages=ASK)
    assert thinking_markers(plain_tokenizer, chat, encode_prompt(plain_tokenizer, chat)) is None


def test_reasoning_tokens_with_multi_token_markers() -> None:
    spec = ThinkingMarkers(
        start="<t>", end="</t>", start_tokens=(1, 2), end_tokens=(3, 4), opened=False
    )
    opened = ReasoningTokens(ThinkingMarkers("<t>", "</t>", (1, 2), (3, 4), opened=True))
    for token in (7, 3, 8, 3, 4, 9):  # a lone first half of the end marker does not end it
        opened.feed(token)
    assert (opened.answering, opened.reasoning, opened.answer_from) == (True, 5, 5)

    model_opens = spec.tracker()
    for token in (1, 2, 7, 3, 4, 9):
        model_opens.feed(token)
    assert (model_opens.reasoning, model_opens.answer_from, model_opens.generated) == (5, 5, 6)

    no_block = spec.tracker()
    for token in (1, 5, 1, 2, 3, 4):  # the start marker's first half, then something else
        no_block.feed(token)
    assert (no_block.answering, no_block.reasoning, no_block.answer_from) == (True, 0, 0)

    still = ReasoningTokens(ThinkingMarkers("<t>", "</t>", (1, 2), (3, 4), opened=True))
    for token in (5, 6):
        still.feed(token)
    assert (still.state, still.reasoning) == ("reasoning", 2)


def answer_events(
    tokenizer: Any, pieces: list[str], *, opened: bool, stop: tuple[str, ...] = ()
) -> tuple[str, str, Finished]:
    """Feed the pieces' tokens (each one token), then EOS, through `SequenceOutput`; returns
    the content, the reasoning and the `Finished` event."""
    from mlxrouter.engine.output import SequenceOutput

    request = GenerationRequest(messages=ASK, stop=stop)
    spec = ThinkingMarkers(
        "<think>",
        "</think>",
        tuple(ids(tokenizer, "<think>")),
        tuple(ids(tokenizer, "</think>")),
        opened,
    )
    output = SequenceOutput(tokenizer, request, prompt_tokens=3, cached_tokens=0, thinking=spec)
    events: list[Chunk | Finished] = []
    tokens = [t for piece in pieces for t in ids(tokenizer, piece)]
    for token in tokens:
        events += output.feed(token, None, None)
        if output.finished:
            break
    else:
        events += output.feed(tokenizer.eos_token_id, "stop", None)
    chunks = [e for e in events if isinstance(e, Chunk)]
    (finished,) = [e for e in events if isinstance(e, Finished)]
    return "".join(c.text for c in chunks), "".join(c.reasoning for c in chunks), finished


def ids(tokenizer: Any, piece: str) -> list[int]:
    return list(tokenizer.encode(piece, add_special_tokens=False))


def test_sequence_output_splits_reasoning_from_content(tokenizer: Any) -> None:
    thought, answer = "".join(REASONING), "".join(ANSWER)
    content, reasoning, finished = answer_events(
        tokenizer, [*REASONING, "</think>", *ANSWER], opened=True
    )
    assert (content, reasoning) == (answer, thought)
    assert finished.reasoning_tokens == len(REASONING) + 1
    assert finished.completion_tokens == len(REASONING) + 1 + len(ANSWER)
    # The answer's first token opens the block.
    content, reasoning, finished = answer_events(
        tokenizer, ["<think>", *REASONING, "</think>", *ANSWER], opened=False
    )
    assert (content, reasoning, finished.reasoning_tokens) == (answer, thought, len(REASONING) + 2)


def test_a_block_opens_only_at_the_start_of_the_answer(tokenizer: Any) -> None:
    """Later markers are the answer's text, as the grammar sees them."""
    pieces = [ANSWER[0], "<think>", REASONING[0], "</think>"]
    content, reasoning, finished = answer_events(tokenizer, pieces, opened=False)
    assert (content, reasoning, finished.reasoning_tokens) == ("".join(pieces), "", 0)


def test_stop_strings_cut_the_answer_not_the_reasoning(tokenizer: Any) -> None:
    stop = (REASONING[1].strip(), ANSWER[1])
    pieces = [*REASONING, "</think>", *ANSWER]
    content, reasoning, finished = answer_events(tokenizer, pieces, opened=True, stop=stop)
    assert (content, reasoning) == (ANSWER[0], "".join(REASONING))
    assert finished.finish_reason == "stop"
    # A stop string held back while the opening was undecided still ends the answer.
    stop = (REASONING[0] + REASONING[1],)
    content, reasoning, finished = answer_events(tokenizer, pieces, opened=False, stop=stop)
    assert (content, reasoning, finished.finish_reason) == ("", "", "stop")
    assert finished.completion_tokens == 2


def request(**fields: Any) -> ChatCompletionRequest:
    return msgspec.convert({"messages": ASK, **fields}, ChatCompletionRequest)


def test_thinking_switches_map_onto_template_variables() -> None:
    assert template_kwargs(request()) == {}
    assert template_kwargs(request(reasoning_effort="none")) == {"enable_thinking": False}
    assert template_kwargs(request(reasoning_effort="high")) == {"reasoning_effort": "high"}
    assert template_kwargs(request(think=False)) == {"enable_thinking": False}
    assert template_kwargs(request(think=True)) == {"enable_thinking": True}
    assert template_kwargs(request(think="low")) == {"reasoning_effort": "low"}
    assert template_kwargs(request(enable_thinking=False)) == {"enable_thinking": False}
    # later shapes win: reasoning_effort < think < enable_thinking < chat_template_kwargs
    mixed = request(
        reasoning_effort="medium",
        think="high",
        enable_thinking=False,
        chat_template_kwargs={"enable_thinking": True, "custom": [1]},
    )
    assert template_kwargs(mixed) == {
        "enable_thinking": True,
        "reasoning_effort": "high",
        "custom": [1],
    }


def test_template_variables_never_reach_template_parameters(tokenizer: Any) -> None:
    assert template_variables(tokenizer, {"enable_thinking": False}) == {"enable_thinking": False}
    for name in ("chat_template", "tokenize", "conversation", "return_dict", "tokenizer_kwargs"):
        with pytest.raises(InvalidRequestError) as caught:
            template_variables(tokenizer, {name: "x"})
        assert caught.value.param == "chat_template_kwargs"


def test_earlier_reasoning_is_dropped_for_templates_without_it(
    tokenizer: Any, plain_tokenizer: Any
) -> None:
    turn = {"role": "assistant", "content": "Paris.", "reasoning_content": "Hmm, the user"}
    history = [*ASK, turn, {"role": "user", "content": "And Italy?"}]
    bare = [*ASK, {**turn, "reasoning_content": ""}, history[-1]]
    for tok, longer in ((tokenizer, True), (plain_tokenizer, False)):
        with_it = encode_prompt(tok, GenerationRequest(messages=history))
        without = encode_prompt(tok, GenerationRequest(messages=bare))
        assert (len(with_it) > len(without)) is longer
        assert longer or with_it == without

"""Which stop string ended an answer, and when its first and last tokens came: what
`SequenceOutput` puts on `Finished` (Anthropic's `stop_sequence`, Ollama's durations). Real
mlx_lm tokenizers of the tiny models (tests/tinymodel.py, tests/thinkmodel.py), fed the tokens
a batch would give; no daemon."""

from __future__ import annotations

import time
from typing import Any

import pytest
from thinkmodel import ANSWER, make_thinking_chain_model
from tinymodel import make_tiny_model

from mlxrouter.engine import Chunk, Finished, GenerationRequest
from mlxrouter.engine.prompt import encode_prompt, thinking_markers

ASK = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from mlx_lm.tokenizer_utils import load

    return load(make_tiny_model(tmp_path_factory.mktemp("plain") / "plain"))


@pytest.fixture(scope="module")
def thinker(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from mlx_lm.tokenizer_utils import load

    return load(make_thinking_chain_model(tmp_path_factory.mktemp("thinker") / "thinker"))


def ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def run(
    tokenizer: Any,
    tokens: list[int],
    *,
    stop: tuple[str, ...],
    last_reason: str | None = None,
    **kwargs: Any,
) -> tuple[str, Finished]:
    """Feed `tokens` through `SequenceOutput` as a batch would, the last one with
    `last_reason` (mlx_lm's matcher ending the answer: "stop"), EOS after them when nothing
    ended it; the content and the `Finished` event."""
    from mlxrouter.engine.output import SequenceOutput

    request = GenerationRequest(messages=ASK, stop=stop, chat_template_kwargs=kwargs)
    thinking = thinking_markers(tokenizer, request, encode_prompt(tokenizer, request))
    output = SequenceOutput(tokenizer, request, prompt_tokens=3, cached_tokens=0, thinking=thinking)
    events: list[Chunk | Finished] = []
    for index, token in enumerate(tokens):
        reason = last_reason if index == len(tokens) - 1 else None
        events += output.feed(token, reason, None)
        if output.finished:
            break
    else:
        events += output.feed(tokenizer.eos_token_id, "stop", None)
    (finished,) = [e for e in events if isinstance(e, Finished)]
    return "".join(e.text for e in events if isinstance(e, Chunk)), finished


def test_a_stop_string_matched_in_text_is_named(plain: Any) -> None:
    tokens = ids(plain, "The quick brown fox jumps over the lazy dog.")
    content, finished = run(plain, tokens, stop=("nowhere", "own f", "ick"))
    assert content == "The qu"
    assert (finished.finish_reason, finished.stop_sequence) == ("stop", "ick")


def test_the_longest_of_stop_strings_ending_together_is_named(plain: Any) -> None:
    tokens = ids(plain, "The quick brown fox jumps over the lazy dog.")
    _, finished = run(plain, tokens, stop=("x", "fox"))
    assert finished.stop_sequence == "fox"


def test_a_stop_string_matched_on_tokens_is_named(plain: Any) -> None:
    """mlx_lm's token matcher ends the answer on the stop string's last token, which never
    reaches the text: the name comes from the token ids."""
    head, stop = "The quick", " brown fox"
    tokens = ids(plain, head) + ids(plain, stop)
    assert plain.decode(ids(plain, stop)) == stop
    content, finished = run(plain, tokens, stop=("lazy", stop), last_reason="stop")
    assert content == head
    assert (finished.finish_reason, finished.stop_sequence) == ("stop", stop)


def test_no_stop_string_for_other_ends(plain: Any, thinker: Any) -> None:
    tokens = ids(plain, "The quick brown")
    _, eos = run(plain, tokens, stop=("lazy",))
    assert (eos.finish_reason, eos.stop_sequence) == ("stop", None)
    _, length = run(plain, tokens, stop=("lazy",), last_reason="length")
    assert (length.finish_reason, length.stop_sequence) == ("length", None)
    # a thinking model's stop strings apply to its answer, matched in text only
    answer = [t for piece in ANSWER for t in ids(thinker, piece)]
    content, finished = run(thinker, answer, stop=(" is",), enable_thinking=False)
    assert (content, finished.stop_sequence) == (ANSWER[0], " is")


def test_finished_times_the_prefill_and_the_generation(plain: Any) -> None:
    from mlxrouter.engine.output import SequenceOutput

    request = GenerationRequest(messages=ASK)
    output = SequenceOutput(plain, request, prompt_tokens=3, cached_tokens=0)
    time.sleep(0.05)  # the prefill
    output.feed(ids(plain, "The")[0], None, None)
    time.sleep(0.05)  # the generation
    (finished,) = [
        e for e in output.feed(plain.eos_token_id, "stop", None) if isinstance(e, Finished)
    ]
    assert 0.05 <= finished.prompt_seconds < 1
    assert 0.05 <= finished.generation_seconds < 1

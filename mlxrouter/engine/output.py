"""One sequence's answer as the client sees it: generated tokens in, `Chunk`s and a final
`Finished` out.

`SequenceOutput` owns everything between a sampled token and an event: the streaming
detokenizer, stop strings found in the text (not only on token boundaries), and the states
of the text, matched on decoded text by mlx_lm's `TextStateMachine`: "normal" text is
content, "tool" text is a tool call's body, parsed when the call ends, "reasoning" text is a
thinking model's reasoning (between its `<think>` markers: from the start when the prompt
opened the block, or when the answer's first token opens it, in the "opening" state), and
reaching None means a stop string ended the answer. Stop strings and tool calls belong to the
answer, not to its reasoning. `Finished` names the stop string that ended the answer (matched in
text here, or on tokens by mlx_lm's matcher) and times the prefill and the generation.

Engine thread only (the detokenizer and the logprobs are the engine's), but it keeps no MLX
state of its own.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import deque
from typing import Any

from mlx_lm.generate import TextStateMachine

from .prompt import ThinkingMarkers
from .sampling import token_logprob
from .types import Chunk, Finished, GenerationRequest, TokenLogprob, ToolCall

log = logging.getLogger(__name__)


class SequenceOutput:
    """Turns one sequence's tokens into the events to emit; see `feed`."""

    def __init__(
        self,
        tokenizer: Any,
        request: GenerationRequest,
        *,
        prompt_tokens: int,
        cached_tokens: int,
        thinking: ThinkingMarkers | None = None,
    ) -> None:
        self._tokenizer = tokenizer
        self._detokenizer = tokenizer.detokenizer  # a fresh streaming detokenizer
        self._machine = _text_machine(tokenizer, request, thinking)
        # TextStateMachine state, or None with no stop strings, tools or thinking markers
        self._text_state: Any = None
        if self._machine is not None:
            self._text_state = self._machine.make_state(_first_state(thinking))
        #: which tokens are reasoning (counted, and whether the answer may still open a block)
        self._reasoning = thinking.tracker() if thinking is not None else None
        self._tools = request.tools
        self._top_logprobs = request.logprobs
        self.prompt_tokens = prompt_tokens
        self.cached_tokens = cached_tokens
        self.completion_tokens = 0
        self._tool_text = ""  # the body of the tool call being generated
        self._tool_calls = 0
        self._stops = request.stop
        #: mlx_lm matches stop strings on tokens too (not with thinking markers, see the
        #: engine): their token ids, and the last tokens, tell which one it matched
        self._stop_ids: list[tuple[str, tuple[int, ...]]] = []
        if request.stop and thinking is None:
            self._stop_ids = [
                (stop, tuple(tokenizer.encode(stop, add_special_tokens=False)))
                for stop in request.stop
            ]
        self._recent: deque[int] = deque(maxlen=max((len(t) for _, t in self._stop_ids), default=0))
        #: the stop string that ended the answer, once one did
        self.stop_sequence: str | None = None
        self._accepted = time.perf_counter()
        self._first_token: float | None = None
        #: the answer has ended: its `Finished` was returned
        self.finished = False

    def feed(self, token: int, finish_reason: str | None, logprobs: Any) -> list[Chunk | Finished]:
        """One generated token (with the batch's finish reason for it, and the step's logprobs)
        in; the events it makes out: a `Chunk` when it adds text, logprobs or tool calls, then
        `Finished` when the answer ended, by the batch's reason or by a stop string in text."""
        tokenizer = self._tokenizer
        reason = finish_reason
        is_eos = reason == "stop" and token in tokenizer.eos_token_ids
        if self._first_token is None:
            self._first_token = time.perf_counter()
        if self._stop_ids:
            self._recent.append(token)
        if reason != "stop":
            self._detokenizer.add_token(token)
            self.completion_tokens += 1
            if self._reasoning is not None:
                self._reasoning.feed(token)
        if reason is not None:
            self._detokenizer.finalize()
        text = self._detokenizer.last_segment

        stopped_by_text = False
        calls: list[ToolCall] = []
        reasoning = ""
        if self._text_state is not None:
            self._text_state, segments = self._split(self._text_state, text)
            segments += self._opening_decided()
            if reason is not None and self._text_state[0] is not None:
                if is_eos or reason == "length":
                    self._text_state, rest, state = TextStateMachine.flush(self._text_state)
                    segments.append((state, rest))
                else:  # a stop string matched on tokens: drop the held-back part of it
                    self._text_state, _ = TextStateMachine.discard(self._text_state)
                    self.stop_sequence = self._stop_on_tokens()
            text, reasoning, calls, stopped_by_text = self._route_segments(segments)
            if reason is not None and self._tool_text.strip():
                body = self._tool_text  # the answer ended inside a call (no end marker)
                parsed = self._parse_tool_calls(body)
                if parsed is None:
                    text += tokenizer.tool_call_start + body
                else:
                    calls += parsed

        events: list[Chunk | Finished] = []
        chosen: tuple[TokenLogprob, ...] = ()
        if self._top_logprobs is not None and reason != "stop":
            chosen = (token_logprob(tokenizer, logprobs, token, self._top_logprobs),)
        if text or chosen or calls or reasoning:
            events.append(Chunk(text, chosen, tuple(calls), reasoning))
        if reason is None and not stopped_by_text:
            return events
        finish = "stop" if stopped_by_text or reason is None else reason
        end = time.perf_counter()
        first = self._first_token or end
        events.append(
            Finished(
                finish_reason="tool_calls" if self._tool_calls and finish == "stop" else finish,
                prompt_tokens=self.prompt_tokens,
                completion_tokens=self.completion_tokens,
                cached_tokens=self.cached_tokens,
                reasoning_tokens=self._reasoning.reasoning if self._reasoning else 0,
                stop_sequence=self.stop_sequence if finish == "stop" else None,
                prompt_seconds=first - self._accepted,
                generation_seconds=end - first,
            )
        )
        self.finished = True
        return events

    def _opening_decided(self) -> list[tuple[str | None, str]]:
        """Once the answer's first tokens did not open a thinking block, it may not open one
        later: the text still held back is matched again from the plain "normal" state."""
        if (
            self._reasoning is None
            or self._machine is None
            or not self._reasoning.answering
            or self._text_state[0] != "opening"
        ):
            return []
        held = self._text_state[3]
        self._text_state, segments = self._split(self._machine.make_state(), held)
        return list(segments)

    def _split(self, state: Any, text: str) -> tuple[Any, list[tuple[str | None, str]]]:
        """`TextStateMachine.split`, noting the stop string when one ended the answer: the
        text consumed (the held-back text, then `text`, less what is held back now) ends
        with it."""
        held = state[3]
        state, segments = TextStateMachine.split(state, text)
        if state[0] is None and self.stop_sequence is None:
            seen = held + text
            seen = seen[: len(seen) - len(state[3])]
            ended = [stop for stop in self._stops if seen.endswith(stop)]
            self.stop_sequence = max(ended, key=len, default=None)
        return state, segments

    def _stop_on_tokens(self) -> str | None:
        """The stop string mlx_lm's token matcher found: the longest whose token ids end the
        answer's tokens (the last of them included)."""
        recent = tuple(self._recent)
        ended = [stop for stop, ids in self._stop_ids if ids and recent[-len(ids) :] == ids]
        return max(ended, key=len, default=None)

    def _route_segments(
        self, segments: list[tuple[str | None, str]]
    ) -> tuple[str, str, list[ToolCall], bool]:
        """Text of the "normal" (and "opening") state is content; text of the "reasoning"
        state is reasoning; text of the "tool" state is a call's body, parsed when the state
        is left; reaching None means a stop string ended the answer. Returns the content, the
        reasoning, the calls and whether a stop string ended the answer."""
        content: list[str] = []
        reasoning: list[str] = []
        calls: list[ToolCall] = []
        for index, (state, piece) in enumerate(segments):
            last = index == len(segments) - 1
            if state == "tool":
                self._tool_text += piece
                if not last:  # the end marker closed this call
                    body = self._tool_text
                    parsed = self._parse_tool_calls(body)
                    if parsed is None:  # not a call after all: keep the text
                        content.append(
                            self._tokenizer.tool_call_start + body + self._tokenizer.tool_call_end
                        )
                    else:
                        calls += parsed
            elif state == "reasoning":
                reasoning.append(piece)
            elif state is None:
                return "".join(content), "".join(reasoning), calls, True
            else:
                content.append(piece)
        return "".join(content), "".join(reasoning), calls, False

    def _parse_tool_calls(self, body: str) -> list[ToolCall] | None:
        """mlx_lm's parser for this model family; None when it cannot parse the body (the
        caller keeps it as content)."""
        self._tool_text = ""
        try:
            parsed = self._tokenizer.tool_parser(body, self._tools)
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("could not parse a tool call; returning it as text")
            return None
        calls = []
        for call in parsed if isinstance(parsed, list) else [parsed]:
            arguments = call.get("arguments", {})
            self._tool_calls += 1
            calls.append(
                ToolCall(
                    id=f"call_{uuid.uuid4().hex[:24]}",
                    name=str(call.get("name", "")),
                    arguments=arguments if isinstance(arguments, str) else json.dumps(arguments),
                )
            )
        return calls


def _text_machine(
    tokenizer: Any, request: GenerationRequest, thinking: ThinkingMarkers | None
) -> TextStateMachine | None:
    """Text-level states of an answer: a stop string ends it (transition to None, the string
    cut and partial matches held back); with tools, the model's tool-call markers switch to
    the "tool" state, whose text is parsed by mlx_lm's tool parser for the model family; with
    thinking markers, the "reasoning" state lasts until the end marker. "opening" is "normal"
    while the answer's first tokens may still open a thinking block."""
    transitions: dict[str, list[tuple[str, str | None]]] = {"normal": []}
    if request.tools and tokenizer.has_tool_calling:
        transitions["normal"].append((tokenizer.tool_call_start, "tool"))
        end = tokenizer.tool_call_end
        transitions["tool"] = [(end, "normal")] if end else []
    for stop in request.stop:
        transitions["normal"].append((stop, None))
    if thinking is not None:
        transitions["reasoning"] = [(thinking.end, "normal")]
        transitions["opening"] = [(thinking.start, "reasoning"), *transitions["normal"]]
    if not any(transitions.values()):
        return None
    return TextStateMachine(transitions)


def _first_state(thinking: ThinkingMarkers | None) -> str:
    if thinking is None:
        return "normal"
    return "reasoning" if thinking.opened else "opening"

"""A request's prompt in tokens, and the checks it must pass before it is queued: the chat
template (or a role mapping) with the request's template variables, the token budget against
the model's context, token ids inside the vocabulary; and a thinking model's markers: whether
the prompt left the model thinking, and which generated tokens are reasoning.

Pure functions over an mlx_lm tokenizer wrapper and plain data; this module imports no MLX.
They run on the engine thread, where the tokenizer lives, and raise the request's errors.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from jinja2 import TemplateSyntaxError

from ..errors import ConfigError, ContextLengthExceededError, InvalidRequestError
from .types import GenerationRequest

# mlx_lm.server's default prompt layout for models without a chat template.
DEFAULT_ROLE_MAPPING = {
    "system_prompt": (
        "A chat between a curious user and an artificial intelligence assistant. The "
        "assistant follows the given rules no matter what."
    ),
    "system": "ASSISTANT's RULE: ",
    "user": "USER: ",
    "assistant": "ASSISTANT: ",
    "stop": "\n",
}


def encode_prompt(tokenizer: Any, request: GenerationRequest) -> list[int]:
    """The prompt's token ids: a text prompt encoded (or token ids as given), or the chat
    messages through the model's chat template or a role mapping."""
    if request.messages is None:
        if isinstance(request.prompt, list):
            return list(request.prompt)
        return list(tokenizer.encode(request.prompt or ""))
    text, templated = chat_text(tokenizer, request)
    if templated:
        return list(tokenizer.encode(text, add_special_tokens=False))
    return list(tokenizer.encode(text))


def chat_text(tokenizer: Any, request: GenerationRequest) -> tuple[str, bool]:
    """A chat request's prompt as text, and whether a chat template rendered it (its special
    tokens are then in the text; a role-mapped prompt has none)."""
    if request.tools and not tokenizer.has_tool_calling:
        raise InvalidRequestError(
            "This model's chat template does not support tools; for structured output use "
            "`response_format` with type `json_schema` instead",
            param="tools",
        )
    messages = request.messages or []
    template = request.options.chat_template
    if not _template_mentions(tokenizer, template, "developer"):
        # OpenAI's newer name for the system role; most templates know only `system`.
        messages = [{**m, "role": "system"} if m["role"] == "developer" else m for m in messages]
    if not _template_mentions(tokenizer, template, "reasoning_content"):
        # A prior turn's reasoning goes only to templates that render it.
        messages = [{k: v for k, v in m.items() if k != "reasoning_content"} for m in messages]
    if (tokenizer.has_chat_template or template is not None) and request.role_mapping is None:
        variables = template_variables(tokenizer, request.chat_template_kwargs)
        return _render(tokenizer, template, messages, request.tools, variables), True
    return role_mapped_prompt(messages, request.role_mapping), False


def _render(
    tokenizer: Any,
    template: str | None,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    variables: dict[str, Any],
) -> str:
    """The chat template's text for `messages`: the model's own template, or the owner's
    (`template`, given to transformers directly: mlx_lm's wrapper would prefer a custom
    renderer). A template that is not valid Jinja is the owner's fault, not the request's."""
    try:
        if template is None:
            return str(
                tokenizer.apply_chat_template(
                    messages, tools=tools, add_generation_prompt=True, tokenize=False, **variables
                )
            )
        return str(
            tokenizer._tokenizer.apply_chat_template(
                messages,
                tools=tools,
                add_generation_prompt=True,
                tokenize=False,
                return_dict=False,
                chat_template=template,
                **variables,
            )
        )
    except TemplateSyntaxError as exc:
        if template is None:
            raise _rejected(exc) from None
        raise ConfigError(
            f"The chat template configured for this model is not valid Jinja: {exc}"
        ) from None
    except Exception as exc:  # noqa: BLE001 - a template error is the request's fault
        raise _rejected(exc) from None


def _rejected(exc: Exception) -> InvalidRequestError:
    return InvalidRequestError(
        f"The model's chat template rejected the messages: {exc}", param="messages"
    )


def _template_mentions(tokenizer: Any, template: str | None, word: str) -> bool:
    template = template or getattr(tokenizer, "chat_template", None)
    return bool(template) and word in str(template)


# apply_chat_template's own parameters (transformers 4.x-5.x): a request's template variables
# must not reach them, or a client could pass its own template (`chat_template`) or change how
# the prompt is built.
_TEMPLATE_PARAMETERS = frozenset(
    {
        "conversation",
        "messages",
        "tools",
        "documents",
        "chat_template",
        "add_generation_prompt",
        "continue_final_message",
        "tokenize",
        "sanitize_control_tokens",
        "padding",
        "truncation",
        "max_length",
        "return_tensors",
        "return_dict",
        "return_assistant_tokens_mask",
        "tokenizer_kwargs",
        "processor_kwargs",
    }
)


def template_variables(tokenizer: Any, variables: dict[str, Any]) -> dict[str, Any]:
    """The request's `chat_template_kwargs`, checked: variables for the template only, never
    one of `apply_chat_template`'s own parameters."""
    if not variables:
        return {}
    reserved = _TEMPLATE_PARAMETERS | _named_parameters(getattr(tokenizer, "_tokenizer", None))
    clash = sorted(name for name in variables if name in reserved)
    if clash:
        raise InvalidRequestError(
            f"`chat_template_kwargs` cannot set `{clash[0]}`: only template variables "
            "(such as `enable_thinking`) may be given",
            param="chat_template_kwargs",
        )
    return dict(variables)


def _named_parameters(tokenizer: Any) -> frozenset[str]:
    """The named parameters of a tokenizer's `apply_chat_template` (none if it has none)."""
    method = getattr(type(tokenizer), "apply_chat_template", None)
    try:
        parameters = inspect.signature(method).parameters.values() if method else ()
    except (TypeError, ValueError):
        return frozenset()
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return frozenset(p.name for p in parameters if p.kind in named and p.name != "self")


# How far from the prompt's end a thinking marker opened by the template is looked for
# (mlx_lm.server looks as far for its prompt cache's "thinking tail").
_THINK_TAIL_TOKENS = 11


@dataclass(frozen=True, slots=True)
class ThinkingMarkers:
    """A chat answer of a model with thinking markers (mlx_lm's `TokenizerWrapper.think_start`
    / `think_end` and their token ids): its reasoning is the text between them."""

    start: str
    end: str
    start_tokens: tuple[int, ...]
    end_tokens: tuple[int, ...]
    #: the prompt's template opened a thinking block and left it open
    opened: bool

    def tracker(self) -> ReasoningTokens:
        return ReasoningTokens(self)


def thinking_markers(
    tokenizer: Any, request: GenerationRequest, prompt: list[int]
) -> ThinkingMarkers | None:
    """The thinking markers of a chat answer; None for a model without them, and for text
    completions (returned as the model writes them). `opened`: the rendered prompt ends with
    the start marker, give or take whitespace (DeepSeek R1, Qwen3 thinking and kin open
    `<think>` in the template), so the answer starts as reasoning. A marker in a message, or
    a block the template closed (thinking switched off), is followed by more than that."""
    if request.messages is None or not tokenizer.has_thinking:
        return None
    start_tokens = tuple(tokenizer.think_start_tokens)
    tail = len(prompt) - len(start_tokens) - _THINK_TAIL_TOKENS
    start = tokenizer.rfind_think_start(prompt, start=max(tail, 0))
    after = prompt[start + len(start_tokens) :] if start >= 0 else None
    return ThinkingMarkers(
        start=tokenizer.think_start,
        end=tokenizer.think_end,
        start_tokens=start_tokens,
        end_tokens=tuple(tokenizer.think_end_tokens),
        opened=after is not None and not str(tokenizer.decode(after)).strip(),
    )


@dataclass(slots=True)
class ReasoningTokens:
    """Which of an answer's generated tokens are reasoning, fed one by one: all of them up to
    the end marker (included) when the prompt opened the block or the answer's first tokens
    are the start marker; none otherwise. `answer_from` is where the answer proper starts."""

    markers: ThinkingMarkers
    #: "opening" (the first tokens may open a block), "reasoning" or "answer"
    state: str = ""
    #: generated tokens seen, and how many of them are reasoning
    generated: int = 0
    reasoning: int = 0
    #: index (among the generated tokens) of the answer's first token, once it is known
    answer_from: int = 0
    _window: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.state = self.state or ("reasoning" if self.markers.opened else "opening")

    @property
    def answering(self) -> bool:
        return self.state == "answer"

    def feed(self, token: int) -> None:
        self.generated += 1
        if self.state == "answer":
            return
        self._window.append(token)
        if self.state == "opening":
            start = self.markers.start_tokens
            if tuple(self._window) != start[: len(self._window)]:
                self._answer()  # the answer does not open with the marker: no reasoning
            elif len(self._window) == len(start):
                self.reasoning += len(start)
                self.state = "reasoning"
                self._window.clear()
            return
        self.reasoning += 1
        end = self.markers.end_tokens
        del self._window[: -len(end)]
        if tuple(self._window) == end:
            self._answer(self.generated)

    def _answer(self, start: int = 0) -> None:
        self.state = "answer"
        self.answer_from = start
        self._window.clear()


def role_mapped_prompt(messages: list[dict[str, Any]], role_mapping: dict[str, str] | None) -> str:
    """The messages laid out as plain text, each prefixed by its role's string."""
    mapping = role_mapping or DEFAULT_ROLE_MAPPING
    parts = [mapping.get("system_prompt", "")]
    for message in messages:
        prefix = mapping.get(message["role"], "")
        parts.append(f"{prefix}{message.get('content') or ''}{mapping.get('stop', '')}")
    parts.append(mapping.get("assistant", "").rstrip())
    return "".join(parts)


def token_budget(request: GenerationRequest, prompt_tokens: int, context: int | None) -> int:
    """How many tokens the answer may have: `max_tokens` if it fits the context beside the
    prompt (an error if not, or that room with `cap_max_tokens`), else the default, capped by
    the room the context leaves."""
    if prompt_tokens == 0:
        raise InvalidRequestError("The prompt is empty", param="prompt")
    if context is not None and prompt_tokens >= context:
        raise ContextLengthExceededError(
            f"This model's maximum context length is {context} tokens, but the prompt has "
            f"{prompt_tokens} tokens",
            param="messages" if request.messages is not None else "prompt",
        )
    if request.max_tokens is None:
        room = context - prompt_tokens if context is not None else request.default_max_tokens
        return min(request.default_max_tokens, room)
    if context is not None and prompt_tokens + request.max_tokens > context:
        if request.cap_max_tokens:
            return context - prompt_tokens
        raise ContextLengthExceededError(
            f"This model's maximum context length is {context} tokens, but {prompt_tokens} "
            f"prompt tokens plus max_tokens={request.max_tokens} exceed it",
            param="max_tokens",
        )
    return request.max_tokens


def check_token_ids(request: GenerationRequest, vocab_size: int) -> None:
    """Token ids the request names itself (a token prompt, logit_bias) must be in the vocab."""
    if isinstance(request.prompt, list) and any(not 0 <= t < vocab_size for t in request.prompt):
        raise InvalidRequestError("The prompt has token ids outside the vocabulary", param="prompt")
    bias = request.sampling.logit_bias or {}
    if any(not 0 <= t < vocab_size for t in bias):
        raise InvalidRequestError(
            "logit_bias has token ids outside the vocabulary", param="logit_bias"
        )


def effective_context(model: int | None, cap: int | None) -> int | None:
    """The context a request gets: the model's own, or the owner's `context_length` below it."""
    if cap is None or model is None:
        return cap if model is None else model
    return min(model, cap)


def context_length(args: Any) -> int | None:
    """The context length a model's config names (`model.args`), under any of its usual
    names; None when it names none."""
    for name in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(args, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None

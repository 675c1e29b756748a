"""A request's prompt in tokens, and the checks it must pass before it is queued: the chat
template (or a role mapping), the token budget against the model's context, token ids inside
the vocabulary.

Pure functions over an mlx_lm tokenizer wrapper and plain data; this module imports no MLX.
They run on the engine thread, where the tokenizer lives, and raise the request's errors.
"""

from __future__ import annotations

from typing import Any

from ..errors import ContextLengthExceededError, InvalidRequestError
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
    if request.tools and not tokenizer.has_tool_calling:
        raise InvalidRequestError(
            "This model's chat template does not support tools; for structured output use "
            "`response_format` with type `json_schema` instead",
            param="tools",
        )
    messages = request.messages
    if not _template_mentions(tokenizer, "developer"):
        # OpenAI's newer name for the system role; most templates know only `system`.
        messages = [{**m, "role": "system"} if m["role"] == "developer" else m for m in messages]
    if tokenizer.has_chat_template and request.role_mapping is None:
        try:
            text = tokenizer.apply_chat_template(
                messages, tools=request.tools, add_generation_prompt=True, tokenize=False
            )
        except Exception as exc:  # noqa: BLE001 - a template error is the request's fault
            raise InvalidRequestError(
                f"The model's chat template rejected the messages: {exc}", param="messages"
            ) from None
        return list(tokenizer.encode(text, add_special_tokens=False))
    return list(tokenizer.encode(role_mapped_prompt(messages, request.role_mapping)))


def _template_mentions(tokenizer: Any, word: str) -> bool:
    template = getattr(tokenizer, "chat_template", None)
    return bool(template) and word in str(template)


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
    prompt (an error if not), else the default, capped by the room the context leaves."""
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


def context_length(args: Any) -> int | None:
    """The context length a model's config names (`model.args`), under any of its usual
    names; None when it names none."""
    for name in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(args, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None

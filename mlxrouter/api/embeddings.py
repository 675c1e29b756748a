"""`POST /v1/embeddings` as OpenAI defines it, and the input checks every embeddings surface
shares (Ollama's `/api/embed` too).

The request becomes one `EmbeddingRequest`, run by a `CompletionSession` like any completion:
the same registry, lease, pool and engine thread. Its `Embedded` vectors become OpenAI's list,
as floats or as base64 of little-endian float32 (what the openai SDK asks for by default).
"""

from __future__ import annotations

import base64
from dataclasses import replace
from typing import Any, Literal

import msgspec
import numpy as np
from litestar import Request, post
from litestar.datastructures import State
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody

from ..daemon import Daemon
from ..engine import EmbeddingRequest
from ..errors import InvalidRequestError
from ..status import ErrorResponse
from .session import CompletionSession

__all__ = ["EmbeddingList", "EmbeddingsRequest", "embedding_request", "embeddings"]


class EmbeddingsRequest(msgspec.Struct, kw_only=True):
    #: a string, a list of strings, a list of token ids, or a list of token-id lists
    input: str | list[Any]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


class Embedding(msgspec.Struct, kw_only=True):
    object: Literal["embedding"] = "embedding"
    index: int
    #: floats, or base64 of their little-endian float32 bytes
    embedding: list[float] | str


class EmbeddingUsage(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


def _is_token(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _item(value: object, param: str) -> str | tuple[int, ...]:
    if isinstance(value, str):
        if not value:
            raise InvalidRequestError(f"{param} is an empty string", param=param)
        return value
    if isinstance(value, list) and value and all(_is_token(t) for t in value):
        return tuple(value)
    if isinstance(value, list) and not value:
        raise InvalidRequestError(f"{param} is an empty list of tokens", param=param)
    raise InvalidRequestError(
        f"{param} must be a string or a list of token ids (non-negative integers)", param=param
    )


def embedding_request(
    value: object, *, limit: int, truncate: bool = False, param: str = "input"
) -> EmbeddingRequest:
    """The inputs of any embeddings surface, checked: a string, a list of strings, a list of
    token ids or a list of token-id lists; at most `limit` of them. Errors name the `param`
    and, for one input of many, its index (`input[3]`)."""
    if isinstance(value, list) and value and all(_is_token(t) for t in value):
        items: list[object] = [value]  # one input given as token ids
    elif isinstance(value, list):
        items = list(value)
    else:
        items = [value]
    if not items:
        raise InvalidRequestError(f"`{param}` is an empty list", param=param)
    if len(items) > limit:
        raise InvalidRequestError(
            f"`{param}` has {len(items)} inputs; at most {limit} are taken "
            "(`max_embedding_inputs`)",
            param=param,
        )
    many = isinstance(value, list) and len(items) > 1
    inputs = tuple(
        _item(item, f"{param}[{index}]" if many else param) for index, item in enumerate(items)
    )
    return EmbeddingRequest(inputs=inputs, truncate=truncate, param=param)


def check_dimensions(daemon: Daemon, model: str | None, dimensions: int | None) -> int | None:
    """The length to cut vectors to, or None for the model's own. Shorter vectors are given
    only by a model trained for them (Matryoshka, as its files declare: `FoundModel`); cut
    from any other, they would not be meaningful embeddings, so that is a 400."""
    if dimensions is None:
        return None
    found = daemon.target(model, None).model.found
    own = found.dimensions
    if found.model_type != "embedding" or dimensions == own:
        return None  # another type is refused by the session, naming what it serves
    if dimensions < 1:
        raise InvalidRequestError(
            f"`dimensions` must be a positive integer, not {dimensions}", param="dimensions"
        )
    if own is not None and dimensions > own:
        raise InvalidRequestError(
            f"`dimensions` {dimensions} is more than this model's {own}", param="dimensions"
        )
    if not found.matryoshka:
        raise InvalidRequestError(
            f"`dimensions` {dimensions} is not available: this model's vectors have {own} "
            "and it was not trained to shorten them (no Matryoshka declaration)",
            param="dimensions",
        )
    return dimensions


def encoded(vector: np.ndarray, encoding: Literal["float", "base64"]) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    values: list[float] = vector.astype(np.float32).tolist()
    return values


_ERRORS = {
    status: ResponseSpec(ErrorResponse, description="OpenAI error", generate_examples=False)
    for status in (400, 401, 403, 404, 409, 413, 500, 503, 507)
}


@post(
    ["/v1/embeddings", "/embeddings"],
    status_code=200,
    responses={200: ResponseSpec(EmbeddingList, description="The vectors"), **_ERRORS},
)
async def embeddings(
    request: Request[Any, Any, Any], state: State, data: JSONBody[EmbeddingsRequest]
) -> EmbeddingList:
    daemon: Daemon = state.daemon
    job = embedding_request(data.input, limit=daemon.config.max_embedding_inputs)
    job = replace(job, dimensions=check_dimensions(daemon, data.model, data.dimensions))
    session = CompletionSession(
        daemon, "embeddings", model=data.model, adapters=None, keep_alive=None, serves="embedding"
    )
    await session.open(lambda _: [job])
    answer = await session.embeddings(request)
    vectors = np.asarray(answer.vectors)
    return EmbeddingList(
        data=[
            Embedding(index=i, embedding=encoded(vector, data.encoding_format))
            for i, vector in enumerate(vectors)
        ],
        model=session.model,
        usage=EmbeddingUsage(prompt_tokens=answer.prompt_tokens, total_tokens=answer.prompt_tokens),
    )

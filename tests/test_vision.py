"""Vision-language models, the model side: typed `vision` from mlx-vlm's own registry (or a
`vision_config`), loaded and run with mlx-vlm on the engine's thread, answers equal to
mlx-vlm's own in-process generation, images keyed by content in the prompt cache, text-only
requests, and the VLM in the pool beside a text model."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import json
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import numpy as np
import ollama
import openai
import pytest
from conftest import running_daemon
from imagedata import b64, data_url
from PIL import Image
from tinymodel import make_tiny_model
from visionmodel import make_tiny_vlm

from mlxrouter import status, targets
from mlxrouter.discovery import describe_folder
from mlxrouter.engine import Chunk, Engine, Finished, GenerationRequest, LoadSpec, SamplingParams
from mlxrouter.engine.types import ImageInput, Started
from mlxrouter.engine.vision import cache_key
from mlxrouter.vision_types import vision_model_types

GREEDY = SamplingParams(temperature=0)
QUESTION = "What is in the picture?"


def noise_png(seed: int, size: tuple[int, int] = (56, 56)) -> bytes:
    """A PNG of random pixels: each seed a different picture of the same size."""
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "PNG")
    return out.getvalue()


def image_input(data: bytes) -> ImageInput:
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
    return ImageInput(
        data, hashlib.sha256(data).hexdigest(), "messages[0].content[0]", width, height
    )


def image_turn(text: str = QUESTION) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder holding the tiny Qwen2-VL `vlm` and the tiny text model `text`."""
    root = tmp_path_factory.mktemp("vision-models")
    make_tiny_vlm(root / "vlm")
    make_tiny_model(root / "text", seed=1)
    return root


def reference(folder: Path, messages: list[dict[str, Any]], images: list[bytes], n: int) -> str:
    return reference_run(folder, messages, images, n)[0]


def reference_run(
    folder: Path, messages: list[dict[str, Any]], images: list[bytes], n: int
) -> tuple[str, int]:
    """mlx-vlm's own greedy answer and its count of prompt tokens, in this process (this
    thread's MLX stream): the prompt through the model's chat template, then
    `mlx_vlm.generate`. Its tokens are rendered by mlx_lm's streaming detokenizer, as the
    daemon renders every model's tokens (mlx-vlm's own text drops the bytes of a cut
    character, which a stream shows)."""
    from mlx_lm.utils import load_tokenizer
    from mlx_vlm import generate, load
    from mlx_vlm.utils import load_image

    model, processor = load(str(folder))
    prompt = processor.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False
    )
    pictures = [load_image(io.BytesIO(data)) for data in images]
    result = generate(model, processor, prompt, pictures or None, max_tokens=n, temperature=0.0)
    tokenizer = load_tokenizer(folder)
    detokenizer = tokenizer.detokenizer
    for token in result.token_ids:
        if token not in tokenizer.eos_token_ids:
            detokenizer.add_token(token)
    detokenizer.finalize()
    return str(detokenizer.text), int(result.prompt_tokens)


async def answer(
    engine: Engine,
    messages: list[dict[str, Any]],
    images: list[bytes],
    n: int = 8,
    **fields: Any,
) -> tuple[str, Started, Finished]:
    stream = await engine.generate(
        "vlm",
        GenerationRequest(
            messages=messages,
            images=tuple(image_input(d) for d in images),
            max_tokens=n,
            **{"sampling": GREEDY, **fields},
        ),
    )
    text, started, finished = [], None, None
    async for event in stream:
        if isinstance(event, Chunk):
            text.append(event.text)
        elif isinstance(event, Started):
            started = event
        elif isinstance(event, Finished):
            finished = event
    assert started is not None and finished is not None
    return "".join(text), started, finished


@pytest.fixture
async def engine(vlm_dir: Path) -> AsyncIterator[Engine]:
    engine = Engine()
    await engine.load(LoadSpec("vlm", vlm_dir / "vlm", vision=True))
    yield engine
    engine.close()


# ---- typing ---------------------------------------------------------------------------------


def test_vision_types_come_from_mlx_vlms_registry() -> None:
    """Families with a vision tower (and mlx-vlm's aliases of them) are vision; the text-only
    families mlx-vlm also carries (llama, qwen2) are not."""
    types = vision_model_types()
    assert {"qwen2_vl", "idefics3", "smolvlm", "gemma3", "lfm2-vl"} <= types
    assert not {"llama", "qwen2", "mistral"} & types


def test_a_vlm_folder_is_typed_vision(vlm_dir: Path, tmp_path: Path) -> None:
    found = describe_folder("vlm", vlm_dir / "vlm", vision_types=vision_model_types())
    assert found is not None and found.model_type == "vision"
    assert "vision" in found.capabilities
    text = describe_folder("text", vlm_dir / "text", vision_types=vision_model_types())
    assert text is not None and text.model_type == "chat" and "vision" not in text.capabilities
    # a `vision_config` makes a vision model whatever mlx-vlm knows of its type
    other = tmp_path / "other"
    shutil.copytree(vlm_dir / "vlm", other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "model_type": "someday_vl"}))
    found = describe_folder("other", other)
    assert found is not None and found.model_type == "vision"


def test_image_tokens_are_keyed_by_content() -> None:
    """The prompt cache's key: the same picture gives the same key, another picture of the
    same size (the same placeholder tokens) another one; text tokens are kept."""
    prompt = [5, 6, 9, 9, 9, 7, 9, 9, 8]
    a, b = "a" * 64, "b" * 64
    assert cache_key(prompt, 9, [a, b]) == cache_key(prompt, 9, [a, b])
    key = cache_key(prompt, 9, [a, b])
    assert [key[i] for i in (0, 1, 5, 8)] == [5, 6, 7, 8]
    assert all(key[i] < 0 for i in (2, 3, 4, 6, 7))
    assert cache_key(prompt, 9, [b, b])[2:5] != key[2:5]
    assert cache_key(prompt, 9, [b, b])[6:8] == key[6:8]  # the second image is the same
    assert cache_key(prompt, 9, []) == prompt


# ---- the engine -----------------------------------------------------------------------------


async def test_greedy_answer_equals_mlx_vlms(engine: Engine, vlm_dir: Path) -> None:
    """For two pictures, the engine's greedy answer is mlx-vlm's; and the pictures matter
    (their answers differ), so the image really reached the model."""
    answers = []
    for seed in (1, 2):
        picture = noise_png(seed)
        text, started, finished = await answer(engine, [image_turn()], [picture])
        assert text == reference(vlm_dir / "vlm", [image_turn()], [picture], 8)
        # 56 x 56 pixels: 4 x 4 patches, merged 2 x 2, are 4 image tokens of the prompt
        assert started.prompt_tokens == finished.prompt_tokens > 4
        answers.append(text)
    assert answers[0] != answers[1]


async def test_two_images_in_one_request(engine: Engine, vlm_dir: Path) -> None:
    """Each image in its place: the answer is mlx-vlm's for the same two pictures, and a
    follow-up about both starts after both images from the cache."""
    pictures = [noise_png(8), noise_png(9)]
    turn = {
        "role": "user",
        "content": [
            {"type": "image"},
            {"type": "text", "text": "Compare"},
            {"type": "image"},
            {"type": "text", "text": QUESTION},
        ],
    }
    text, started, _ = await answer(engine, [turn], pictures)
    assert text == reference(vlm_dir / "vlm", [turn], pictures, 8)
    swapped, _, _ = await answer(engine, [turn], pictures[::-1])
    assert swapped != text
    follow_up = [turn, {"role": "assistant", "content": text}, {"role": "user", "content": "?"}]
    _, again, _ = await answer(engine, follow_up, pictures)
    assert again.cached_tokens >= started.prompt_tokens


async def test_stop_strings_and_seeds_work_as_for_text(engine: Engine) -> None:
    """The tokens go through the same stop handling and seeded sampler as a text model's."""
    picture = noise_png(1)
    greedy, _, _ = await answer(engine, [image_turn()], [picture])
    cut = greedy[2:4]
    stopped, _, finished = await answer(engine, [image_turn()], [picture], stop=(cut,))
    assert finished.finish_reason == "stop" and finished.stop_sequence == cut
    assert stopped == greedy[: greedy.index(cut)]
    seeded = SamplingParams(temperature=1.0, seed=7)
    first, _, _ = await answer(engine, [image_turn()], [picture], n=12, sampling=seeded)
    second, _, _ = await answer(engine, [image_turn()], [picture], n=12, sampling=seeded)
    assert first == second


async def test_logprobs_come_with_each_token(engine: Engine) -> None:
    """mlx-vlm's logprobs (the whole vocabulary's) feed the same logprobs as a text model's:
    the chosen token's, and the two most likely, the chosen one first under greedy decoding."""
    stream = await engine.generate(
        "vlm",
        GenerationRequest(
            messages=[image_turn()],
            images=(image_input(noise_png(1)),),
            max_tokens=4,
            sampling=GREEDY,
            logprobs=2,
        ),
    )
    chosen = [lp async for event in stream if isinstance(event, Chunk) for lp in event.logprobs]
    assert len(chosen) == 4
    for logprob in chosen:
        assert len(logprob.top) == 2 and logprob.logprob <= 0
        assert logprob.top[0] == (logprob.token, logprob.logprob)


async def test_a_reload_reuses_the_vision_models_tokenizer(engine: Engine, vlm_dir: Path) -> None:
    """As for text models (tests/test_memory_leaks.py): the same files give the same mlx_lm
    tokenizer wrapper back (tokenizers keeps memory from every instance that encodes)."""

    def tokenizer() -> Any:
        return engine._models["vlm"].tokenizer

    first = await engine.call(tokenizer)
    for _ in range(2):
        await engine.unload("vlm")
        await engine.load(LoadSpec("vlm", vlm_dir / "vlm", vision=True))
        assert await engine.call(tokenizer) is first
    text, _, _ = await answer(engine, [image_turn()], [noise_png(1)])
    assert text == reference(vlm_dir / "vlm", [image_turn()], [noise_png(1)], 8)


async def test_text_only_request_to_a_vision_model(engine: Engine, vlm_dir: Path) -> None:
    messages = [{"role": "user", "content": "Hello there"}]
    text, _, finished = await answer(engine, messages, [])
    assert finished.completion_tokens > 0
    assert text == reference(vlm_dir / "vlm", messages, [], 8)


async def test_second_turn_about_the_same_image_reuses_the_cache(
    engine: Engine, vlm_dir: Path
) -> None:
    picture = noise_png(3)
    first, _, turn = await answer(engine, [image_turn()], [picture])
    assert turn.cached_tokens == 0
    follow_up = [
        image_turn(),
        {"role": "assistant", "content": first},
        {"role": "user", "content": "And the colours?"},
    ]
    again, started, finished = await answer(engine, follow_up, [picture])
    # the whole first prompt, its image tokens included, came from the cache
    assert started.cached_tokens == finished.cached_tokens >= turn.prompt_tokens
    uncached = Engine(prompt_cache_bytes=0)
    try:
        await uncached.load(LoadSpec("vlm", vlm_dir / "vlm", vision=True))
        fresh, _, finished = await answer(uncached, follow_up, [picture])
    finally:
        uncached.close()
    assert finished.cached_tokens == 0
    assert again == fresh


async def test_another_picture_of_the_same_size_is_not_taken_from_the_cache(
    engine: Engine,
) -> None:
    """Its placeholder tokens are the same as the first picture's: only the text before the
    image may come from the cache."""
    _, _, first = await answer(engine, [image_turn()], [noise_png(4)])
    _, started, _ = await answer(engine, [image_turn()], [noise_png(5)])
    assert started.cached_tokens < first.prompt_tokens - 4


async def test_concurrent_requests_to_one_vision_model_each_get_their_answer(
    engine: Engine,
) -> None:
    """They run one at a time (mlx-vlm keeps positions on the model), so each answer is the
    one it gets alone."""
    pictures = [noise_png(6), noise_png(7), noise_png(6)]
    alone = [(await answer(engine, [image_turn()], [p]))[0] for p in pictures]
    together = await asyncio.gather(*(answer(engine, [image_turn()], [p]) for p in pictures))
    assert [text for text, _, _ in together] == alone


# ---- the daemon -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(vlm_dir: Path) -> Iterator[str]:
    with running_daemon(f"model_dirs: [{vlm_dir}]\nhf_cache: false\n") as (url, _):
        yield url


def test_models_list_the_vlm_as_vision_and_the_pool_holds_it_beside_a_text_model(
    served: str, vlm_dir: Path
) -> None:
    with httpx.Client(base_url=served, timeout=300) as client:
        cards = {card["id"]: card for card in client.get("/v1/models").json()["data"]}
        assert cards["vlm"]["type"] == "vision" and cards["vlm"]["available"] is True
        assert "vision" in cards["vlm"]["capabilities"]
        assert cards["text"]["type"] == "chat" and "vision" not in cards["text"]["capabilities"]
        shown = client.post("/api/show", json={"model": "vlm"}).json()
        assert "vision" in shown["capabilities"]
        for model in ("vlm", "text"):
            body = {"model": model, "messages": [{"role": "user", "content": "Hi"}]}
            reply = client.post("/v1/chat/completions", json={**body, "max_tokens": 3})
            assert reply.status_code == 200, reply.text
        # no draft model for a vision model
        body = {"model": "vlm", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        reply = client.post("/v1/chat/completions", json={**body, "draft_model": "text"})
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"]["param"] == "draft_model"
        # a text completion to the vision model, too
        body = {"model": "vlm", "prompt": "Hello", "max_tokens": 3}
        reply = client.post("/v1/completions", json=body)
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["completion_tokens"] > 0
        pool = {e["id"]: e for e in client.get("/admin/pool").json()["entries"]}
        assert pool["vlm"]["type"] == "vision" and pool["text"]["type"] == "chat"
        # the vision tower's weights count in the entry's size
        tower, total = _weight_bytes(vlm_dir / "vlm" / "model.safetensors", "vision_tower.")
        assert tower > 0 and pool["vlm"]["bytes"] >= total


def _weight_bytes(path: Path, prefix: str) -> tuple[int, int]:
    """The bytes of the tensors named `prefix...` in a safetensors file, and of all of them."""
    from safetensors import safe_open

    part = total = 0
    with safe_open(str(path), framework="numpy") as weights:
        for name in weights.keys():  # noqa: SIM118 - safe_open is not a mapping
            size = weights.get_tensor(name).nbytes
            total += size
            part += size if name.startswith(prefix) else 0
    return part, total


def test_without_mlx_vlm_a_vision_model_is_listed_unavailable(
    vlm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mlx-vlm's absence, as the registry and the cards see it (a daemon of its own: nothing
    loaded, no listing cached from before)."""
    monkeypatch.setattr(status, "vision_installed", lambda: False)
    monkeypatch.setattr(targets, "vision_installed", lambda: False)
    config = f"model_dirs: [{vlm_dir}]\nhf_cache: false\n"
    with running_daemon(config) as (url, _), httpx.Client(base_url=url, timeout=60) as client:
        cards = {card["id"]: card for card in client.get("/v1/models").json()["data"]}
        assert cards["vlm"]["available"] is False and cards["text"]["available"] is True
        body = {"model": "vlm", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        reply = client.post("/v1/chat/completions", json=body)
        # listed but not servable here, as an encoder architecture the engine cannot run: refused
        # before any load is tried
        assert reply.status_code == 400
        assert reply.json()["error"]["code"] == "model_not_supported"
        assert "mlxrouter[vision]" in reply.json()["error"]["message"]
        assert client.get("/admin/pool").json()["entries"] == []


# ---- the client SDKs, on a served daemon --------------------------------------------------------

PICTURE_SEED = 11


@functools.cache
def expected_run(folder: Path, seed: int, n: int = 8) -> tuple[str, int]:
    return reference_run(folder, [image_turn()], [noise_png(seed)], n)


def expected(folder: Path, seed: int) -> str:
    return expected_run(folder, seed)[0]


def test_openai_sdk_with_a_data_url(served: str, vlm_dir: Path) -> None:
    """Plain and streamed answers are mlx-vlm's; usage counts the image tokens; a second turn
    about the same picture reports cached prompt tokens."""
    picture = noise_png(PICTURE_SEED)
    turn: Any = {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": data_url(picture)}},
            {"type": "text", "text": QUESTION},
        ],
    }
    with openai.OpenAI(base_url=served + "/v1", api_key="x", max_retries=0, timeout=300) as sdk:
        plain = sdk.chat.completions.create(
            model="vlm",
            messages=[turn],
            max_tokens=8,
            temperature=0,
        )
        assert plain.choices[0].message.content == expected(vlm_dir / "vlm", PICTURE_SEED)
        # the image's tokens counted, as mlx-vlm counts them
        assert plain.usage is not None
        assert plain.usage.prompt_tokens == expected_run(vlm_dir / "vlm", PICTURE_SEED)[1]
        chunks = sdk.chat.completions.create(
            model="vlm",
            messages=[turn],
            max_tokens=8,
            temperature=0,
            stream=True,
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == plain.choices[0].message.content
        follow_up: Any = [
            turn,
            {"role": "assistant", "content": plain.choices[0].message.content},
            {"role": "user", "content": "And the colours?"},
        ]
        again = sdk.chat.completions.create(
            model="vlm",
            messages=follow_up,
            max_tokens=4,
            temperature=0,
        )
        details = again.usage.prompt_tokens_details if again.usage else None
        assert details is not None and (details.cached_tokens or 0) >= plain.usage.prompt_tokens


def test_anthropic_sdk_with_a_base64_block(served: str, vlm_dir: Path) -> None:
    picture = noise_png(PICTURE_SEED)
    source: Any = {"type": "base64", "media_type": "image/png", "data": b64(picture)}
    with anthropic.Anthropic(base_url=served, api_key="x", max_retries=0, timeout=300) as sdk:
        message = sdk.messages.create(
            model="vlm",
            max_tokens=8,
            extra_body={"temperature": 0},
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "source": source},
                        {"type": "text", "text": QUESTION},
                    ],
                }
            ],
        )
    text = "".join(block.text for block in message.content if block.type == "text")
    assert text == expected(vlm_dir / "vlm", PICTURE_SEED)
    # counting the prompt counts its image tokens as the answer's usage does
    with anthropic.Anthropic(base_url=served, api_key="x", max_retries=0, timeout=300) as sdk:
        counted = sdk.messages.count_tokens(
            model="vlm",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "source": source},
                        {"type": "text", "text": QUESTION},
                    ],
                }
            ],
        )
    usage = message.usage  # Anthropic's input_tokens leave out those read from the cache
    assert counted.input_tokens == usage.input_tokens + (usage.cache_read_input_tokens or 0)


def test_ollama_package_with_images(served: str, vlm_dir: Path) -> None:
    picture = noise_png(PICTURE_SEED)
    with ollama.Client(host=served, timeout=300) as client:
        reply = client.chat(
            model="vlm",
            messages=[{"role": "user", "content": QUESTION, "images": [picture]}],
            options={"temperature": 0, "num_predict": 8},
        )
    assert reply.message.content == expected(vlm_dir / "vlm", PICTURE_SEED)


def test_responses_input_image_and_ollama_generate_images(served: str, vlm_dir: Path) -> None:
    """The other two ways in: a Responses `input_image` (the openai SDK) and Ollama's
    `/api/generate` with `images` (one user turn: the images, then the prompt)."""
    picture = noise_png(PICTURE_SEED)
    with openai.OpenAI(base_url=served + "/v1", api_key="x", max_retries=0, timeout=300) as sdk:
        response = sdk.responses.create(
            model="vlm",
            input=[
                {
                    "role": "user",
                    "content": [
                        {"type": "input_image", "image_url": data_url(picture), "detail": "auto"},
                        {"type": "input_text", "text": QUESTION},
                    ],
                }
            ],
            max_output_tokens=8,
            temperature=0,
            store=False,
        )
    assert response.output_text == expected(vlm_dir / "vlm", PICTURE_SEED)
    with ollama.Client(host=served, timeout=300) as client:
        generated = client.generate(
            model="vlm",
            prompt=QUESTION,
            images=[picture],
            options={"temperature": 0, "num_predict": 8},
        )
    assert generated.response == expected(vlm_dir / "vlm", PICTURE_SEED)


def test_a_vision_model_is_evicted_and_loaded_again_like_any_entry(vlm_dir: Path) -> None:
    """One entry at a time: the text model's request evicts the VLM, the next image request
    loads it again and gets the same answer."""
    config = f"model_dirs: [{vlm_dir}]\nhf_cache: false\npool: {{max_models: 1}}\n"
    turn = {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": data_url(noise_png(PICTURE_SEED))}},
            {"type": "text", "text": QUESTION},
        ],
    }
    body = {"model": "vlm", "messages": [turn], "max_tokens": 8, "temperature": 0}
    with running_daemon(config) as (url, _), httpx.Client(base_url=url, timeout=300) as client:
        first = client.post("/v1/chat/completions", json=body)
        assert first.status_code == 200, first.text
        text = {"model": "text", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        assert client.post("/v1/chat/completions", json=text).status_code == 200
        assert [e["id"] for e in client.get("/admin/pool").json()["entries"]] == ["text"]
        again = client.post("/v1/chat/completions", json=body)
        assert again.status_code == 200, again.text
    answer = again.json()["choices"][0]["message"]["content"]
    assert answer == first.json()["choices"][0]["message"]["content"]
    assert answer == expected(vlm_dir / "vlm", PICTURE_SEED)


def test_an_adapter_on_a_vision_model_is_refused(vlm_dir: Path, tmp_path: Path) -> None:
    """mlx-vlm's models are not mlx_lm's: an adapter naming the VLM as its base answers 400
    before anything loads."""
    from safetensors.numpy import save_file

    adapter = tmp_path / "vlm-lora"
    adapter.mkdir()
    save_file({"x": np.zeros(2, dtype=np.float32)}, str(adapter / "adapters.safetensors"))
    (adapter / "adapter_config.json").write_text(json.dumps({"model": "vlm"}))
    config = (
        f"model_dirs: [{vlm_dir}]\nhf_cache: false\n"
        f"models:\n  vlm-lora: {{path: {adapter}, base: vlm}}\n"
    )
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    with running_daemon(config) as (url, _), httpx.Client(base_url=url, timeout=60) as client:
        reply = client.post("/v1/chat/completions", json={**body, "model": "vlm-lora"})
        assert reply.status_code == 400, reply.text
        assert "adapters on vision models" in reply.json()["error"]["message"]
        assert client.get("/admin/pool").json()["entries"] == []

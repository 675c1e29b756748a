"""Images in prompts, the input side: `images.py`'s checks and URL policy (a real loopback HTTP
server for the fetches), each surface's translation into `{"type": "image"}` parts and
`GenerationRequest.images`, and the served daemon's 400s through the real SDKs."""

from __future__ import annotations

import asyncio
import hashlib
import io
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import anthropic
import httpx
import msgspec
import ollama
import openai
import pytest
from conftest import running_daemon, wait_until, watched_daemon
from imagedata import b64, data_url, garbage_png, huge_png, png
from PIL import Image

from mlxrouter import images as image_checks
from mlxrouter.api import convert
from mlxrouter.api.anthropic import convert as anthropic_convert
from mlxrouter.api.anthropic.schemas import MessagesRequest
from mlxrouter.api.ollama import convert as ollama_convert
from mlxrouter.api.ollama.schemas import ChatRequest, GenerateRequest
from mlxrouter.api.responses_api import convert as responses_convert
from mlxrouter.api.responses_api.schemas import InputItem, ResponsesRequest
from mlxrouter.api.schemas import ChatCompletionRequest
from mlxrouter.api.session import request_images, with_images
from mlxrouter.config import ImagesConfig, ModelSettings, parse_config
from mlxrouter.engine import GenerationRequest, ImageInput
from mlxrouter.errors import ConfigError, InvalidRequestError
from mlxrouter.images import ImageRef, fetch_urls, load_inline
from mlxrouter.registry import build_registry
from mlxrouter.targets import resolve

WHERE = "messages[0].content[1]"
PNG = png()


def _inline(source: str, kind: str = "url", **limits: Any) -> list[ImageInput | ImageRef]:
    ref = ImageRef(where=WHERE, source=source, kind=kind)  # type: ignore[arg-type]
    return asyncio.run(load_inline([ref], ImagesConfig(**limits)))


def _refused(source: str, kind: str = "url", **limits: Any) -> str:
    with pytest.raises(InvalidRequestError) as info:
        _inline(source, kind, **limits)
    assert info.value.param == WHERE
    assert WHERE in info.value.message
    return info.value.message


# ---- images.py: inline images ---------------------------------------------------------------


def test_a_data_url_and_plain_base64_become_the_same_verified_image() -> None:
    (from_url,) = _inline(data_url(PNG))
    (from_base64,) = _inline(b64(PNG), "base64")
    assert from_url == from_base64
    assert isinstance(from_url, ImageInput)
    assert from_url.data == PNG
    assert from_url.digest == hashlib.sha256(PNG).hexdigest()
    assert (from_url.where, from_url.width, from_url.height) == (WHERE, 8, 8)
    # base64 wrapped over lines (as some encoders write it) is the same image
    wrapped = "\n".join(b64(PNG)[i : i + 76] for i in range(0, len(b64(PNG)), 76))
    assert _inline(wrapped, "base64") == [from_url]


def test_jpeg_webp_and_gif_are_taken() -> None:
    for kind in ("JPEG", "WEBP", "GIF"):
        buffer = io.BytesIO()
        Image.new("RGB", (5, 3), "blue").save(buffer, kind)
        (image,) = _inline(b64(buffer.getvalue()), "base64")
        assert isinstance(image, ImageInput) and (image.width, image.height) == (5, 3)


def test_bad_inline_images_are_refused_naming_where_they_were() -> None:
    assert "not valid base64" in _refused("data:image/png;base64,@@@@")
    assert "not valid base64" in _refused("%%%%", "base64")
    assert "not a valid PNG, JPEG, WebP or GIF" in _refused(data_url(garbage_png()))
    assert "not a valid PNG, JPEG, WebP or GIF" in _refused(data_url(b"plain text, no image"))
    assert "not a valid PNG" in _refused(data_url(PNG[: len(PNG) // 2]))  # truncated
    assert "without base64" in _refused("data:image/png,rawbytes")
    assert "not an image" in _refused("data:text/plain;base64," + b64(PNG))
    assert "must be a data URL" in _refused(b64(PNG))  # plain base64 where a URL is asked for
    assert "larger than the 100-byte limit" in _refused(data_url(png(64, 64)), max_bytes=100)
    assert "larger than the 140-byte limit" in _refused(data_url(png(64, 64)), max_bytes=140)
    bmp = io.BytesIO()
    Image.new("RGB", (4, 4)).save(bmp, "BMP")
    assert "not a valid PNG, JPEG, WebP or GIF" in _refused(data_url(bmp.getvalue()))


def test_an_image_declaring_too_many_pixels_is_never_decoded() -> None:
    # 30,000 x 30,000: past twice the limit, Pillow's own error
    assert "more than 40000000 pixels" in _refused(data_url(huge_png()))
    # between the limit and twice it (Pillow would only warn): refused all the same
    assert "more than 1000 pixels" in _refused(data_url(png(40, 40)), max_pixels=1000)
    assert "more than 1000 pixels" in _refused(data_url(png(33, 33)), max_pixels=1000)
    assert len(_inline(data_url(png(31, 32)), max_pixels=1000)) == 1


def test_an_animated_image_is_refused_and_a_multi_picture_jpeg_taken() -> None:
    frames = [Image.new("RGB", (4, 4), color) for color in ("red", "green")]
    for kind in ("GIF", "PNG", "WEBP"):
        buffer = io.BytesIO()
        frames[0].save(buffer, kind, save_all=True, append_images=frames[1:])
        assert "animated" in _refused(data_url(buffer.getvalue()))
    # a camera JPEG carrying a second picture (MPO) is a still photo: its first picture
    photo = io.BytesIO()
    Image.new("RGB", (6, 4)).save(photo, "MPO", save_all=True, append_images=[frames[0]])
    (image,) = _inline(b64(photo.getvalue()), "base64")
    assert isinstance(image, ImageInput) and (image.width, image.height) == (6, 4)


def test_more_images_than_the_limit_are_refused_naming_the_first_one_over() -> None:
    refs = [ImageRef(where=f"images[{i}]", source=b64(PNG), kind="base64") for i in range(9)]
    with pytest.raises(InvalidRequestError) as info:
        asyncio.run(load_inline(refs, ImagesConfig()))
    assert info.value.param == "images[8]"
    assert "9 images; at most 8" in info.value.message
    assert len(asyncio.run(load_inline(refs[:8], ImagesConfig()))) == 8


def test_url_policy_without_allow_urls() -> None:
    message = _refused("http://example.com/cat.png")
    assert "does not fetch image URLs" in message and "images.allow_urls" in message
    assert "does not fetch" in _refused("https://example.com/cat.png")
    assert "file: URL" in _refused("file:///etc/passwd")
    assert "file: URL" in _refused("file:///etc/passwd", allow_urls=True, allowed_hosts=["*"])
    assert "must be a data URL" in _refused("ftp://example.com/cat.png", allow_urls=True)
    assert "not in `images.allowed_hosts`" in _refused("http://example.com/a.png", allow_urls=True)


# ---- images.py: fetching, from a loopback server this test runs ----------------------------


class _Handler(BaseHTTPRequestHandler):
    """/cat.png; /big.png (no length given); /missing; /slow (waits for the test's event);
    /to-cat (same-host redirect); /to-localhost (redirect to another host name); /loop."""

    release = threading.Event()
    #: the paths asked for, in order
    asked: ClassVar[list[str]] = []
    #: their Host headers, in the same order
    hosts: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.asked.append(self.path)
        self.hosts.append(self.headers.get("Host", ""))
        path = self.path.split("?")[0]  # a query only tells the asks apart
        port = self.server.server_address[1]
        redirects = {
            "/to-cat": "/cat.png",
            "/to-localhost": f"http://localhost:{port}/cat.png",
            "/loop": "/loop",
        }
        if path in redirects:
            self.send_response(302)
            self.send_header("Location", redirects[path])
            self.end_headers()
        elif path == "/cat.png":
            self._send(PNG, length=True)
        elif path == "/big.png":
            self._send(png(64, 64), length=False)
        elif path == "/slow":
            self.release.wait(10)
            self._send(PNG, length=True)
        else:
            self.send_response(404)
            self.end_headers()

    def _send(self, body: bytes, *, length: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def image_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        _Handler.release.set()
        server.shutdown()
        server.server_close()
        thread.join(10)


def _fetch(url: str, **limits: Any) -> ImageInput:
    config = ImagesConfig(**{"allow_urls": True, "allowed_hosts": ["127.0.0.1"], **limits})
    ref = ImageRef(where=WHERE, source=url)

    async def run() -> ImageInput:
        (image,) = await fetch_urls(await load_inline([ref], config), config)
        return image

    return asyncio.run(run())


def _fetch_refused(url: str, **limits: Any) -> str:
    with pytest.raises(InvalidRequestError) as info:
        _fetch(url, **limits)
    assert info.value.param == WHERE
    return info.value.message


def test_an_allowlisted_loopback_host_is_fetched(image_server: str) -> None:
    image = _fetch(image_server + "/cat.png")
    assert image.data == PNG and image.digest == hashlib.sha256(PNG).hexdigest()
    assert _fetch(image_server + "/to-cat").data == PNG  # a redirect on the same host


def test_fetches_outside_the_policy_are_refused(image_server: str) -> None:
    message = _fetch_refused(image_server + "/to-localhost")  # redirect to a host not listed
    assert "`localhost`" in message and "not in `images.allowed_hosts`" in message
    # a wildcard does not reach a loopback (or private) address; only naming the host does
    message = _fetch_refused(image_server + "/cat.png", allowed_hosts=["*"])
    assert "loopback, link-local or private" in message
    assert "more than 3 times" in _fetch_refused(image_server + "/loop")
    assert "HTTP 404" in _fetch_refused(image_server + "/missing")
    assert "60-byte limit" in _fetch_refused(image_server + "/cat.png", max_bytes=60)
    assert "60-byte limit" in _fetch_refused(image_server + "/big.png", max_bytes=60)
    assert "longer than 0.5 s" in _fetch_refused(image_server + "/slow", fetch_timeout=0.5)
    closed = image_server.rsplit(":", 1)[0] + ":9"  # discard port: nothing listens
    assert "could not be fetched" in _fetch_refused(closed + "/cat.png")


def test_the_session_checks_the_model_before_fetching(tiny_models: Path, image_server: str) -> None:
    config = parse_config(
        f"hf_cache: false\nmodel_dirs: [{tiny_models}]\n"
        f"models:\n  seer: {{path: {tiny_models / 'tiny-a'}, type: vision}}\n"
        "images: {allow_urls: true, allowed_hosts: [127.0.0.1]}\n"
    )
    registry = build_registry(config)
    refs = [
        ImageRef(where="messages[0].content[0]", source=b64(PNG), kind="base64"),
        ImageRef(where="messages[0].content[1]", source=image_server + "/cat.png?session"),
    ]
    text_model = resolve(registry, config, "tiny-a", None)
    with pytest.raises(InvalidRequestError, match="`tiny-a` does not take images") as info:
        asyncio.run(request_images(config.images, text_model, refs))
    assert info.value.param == "messages[0].content[0]"
    assert "/cat.png?session" not in _Handler.asked  # nothing fetched for a text model
    vision_model = resolve(registry, config, "seer", None)
    images = asyncio.run(request_images(config.images, vision_model, refs))
    assert [(i.where, i.data) for i in images] == [(r.where, PNG) for r in refs]
    assert _Handler.asked.count("/cat.png?session") == 1
    assert asyncio.run(request_images(config.images, text_model, [])) == ()


def test_a_wildcard_host_is_fetched_from_the_address_that_was_checked(
    image_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host matched by `*` is resolved once, checked, and connected to at that address with
    its own name in the Host header (no second lookup a rebinding DNS could answer).
    Loopback stands in for a public address here: the test has no other."""
    monkeypatch.setattr(image_checks, "_public", lambda address: True)
    port = image_server.rsplit(":", 1)[1]
    first = socket.getaddrinfo("localhost", int(port), type=socket.SOCK_STREAM)[0][4][0]
    host = "localhost" if first == "127.0.0.1" else "127.0.0.1"  # the server listens on IPv4
    image = _fetch(f"http://{host}:{port}/cat.png?pinned", allowed_hosts=["*"])
    assert image.data == PNG
    assert _Handler.hosts[_Handler.asked.index("/cat.png?pinned")] == f"{host}:{port}"


def test_a_pinned_request_keeps_the_hosts_name() -> None:
    assert image_checks._pinned("https://user@img.example.com:8443/a.png?x=1", "93.184.216.34") == (
        "https://93.184.216.34:8443/a.png?x=1",
        {"Host": "img.example.com:8443"},
        {"sni_hostname": "img.example.com"},  # the certificate is checked against the name
    )
    assert image_checks._pinned("http://img.example.com/a.png", "2606:2800:220:1::1") == (
        "http://[2606:2800:220:1::1]/a.png",
        {"Host": "img.example.com"},
        {},
    )


# ---- each surface's translation -------------------------------------------------------------


def _image(i: int, where: str) -> ImageInput:
    return ImageInput(data=b"%d" % i, digest=str(i), where=where)


def test_openai_chat_image_url_parts_become_image_parts_in_order() -> None:
    body = msgspec.convert(
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "data:a", "detail": "low"}},
                        {"type": "text", "text": "Compare "},
                        {"type": "image_url", "image_url": "data:b"},  # the URL alone
                        {"type": "text", "text": "with that."},
                    ],
                },
                {"role": "assistant", "content": "Done."},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "And "}, {"type": "text", "text": "now?"}],
                },
            ]
        },
        ChatCompletionRequest,
    )
    refs = convert.image_refs(body.messages)
    assert refs == [
        ImageRef(where="messages[1].content[0]", source="data:a"),
        ImageRef(where="messages[1].content[2]", source="data:b"),
    ]
    request = convert.chat_request(body, ModelSettings(), default_max_tokens=8)
    assert request.messages is not None
    assert request.messages[1]["content"] == [
        {"type": "image"},
        {"type": "text", "text": "Compare "},
        {"type": "image"},
        {"type": "text", "text": "with that."},
    ]
    assert request.messages[3]["content"] == "And now?"  # text parts alone stay one string
    images = (_image(0, refs[0].where), _image(1, refs[1].where))
    (attached,) = with_images([request], images)
    assert isinstance(attached, GenerationRequest) and attached.images == images


def test_openai_images_outside_user_messages_are_refused() -> None:
    image = {"type": "image_url", "image_url": {"url": "data:a"}}
    body = msgspec.convert(
        {"messages": [{"role": "assistant", "content": [image]}]}, ChatCompletionRequest
    )
    with pytest.raises(InvalidRequestError, match="user messages only") as info:
        convert.image_refs(body.messages)
    assert info.value.param == "messages[0].content[0]"


def test_anthropic_image_blocks_become_image_parts() -> None:
    body = msgspec.convert(
        {
            "model": "m",
            "max_tokens": 5,
            "system": "Be brief.",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Look: "},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": "QUJD"},
                        },
                    ],
                },
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t1",
                            "content": [
                                {"type": "text", "text": "Screenshot:"},
                                {"type": "image", "source": {"type": "base64", "data": "REVG"}},
                            ],
                        },
                        {
                            "type": "image",
                            "source": {"type": "url", "url": "https://example.com/b.png"},
                        },
                    ],
                },
            ],
        },
        MessagesRequest,
    )
    assert anthropic_convert.image_refs(body) == [
        ImageRef(where="messages[0].content[1]", source="QUJD", kind="base64"),
        ImageRef(where="messages[2].content[0].content[1]", source="REVG", kind="base64"),
        ImageRef(where="messages[2].content[1]", source="https://example.com/b.png"),
    ]
    messages = anthropic_convert.template_messages(body, ModelSettings())
    assert messages[1] == {
        "role": "user",
        "content": [{"type": "text", "text": "Look: "}, {"type": "image"}],
    }
    assert messages[3] == {
        "role": "tool",
        "tool_call_id": "t1",
        "content": [{"type": "text", "text": "Screenshot:"}, {"type": "image"}],
    }
    assert messages[4] == {"role": "user", "content": [{"type": "image"}]}


def test_anthropic_image_blocks_without_a_usable_source_are_refused() -> None:
    for source in ({"type": "file", "file_id": "f"}, {"type": "base64"}, {"type": "url"}):
        block = {"type": "image", "source": source}
        body = msgspec.convert(
            {"max_tokens": 5, "messages": [{"role": "user", "content": [block]}]},
            MessagesRequest,
        )
        with pytest.raises(InvalidRequestError, match="needs a `source`"):
            anthropic_convert.image_refs(body)


def test_responses_input_image_parts_become_chat_image_parts() -> None:
    earlier = msgspec.convert(
        [
            {"role": "user", "content": [{"type": "input_image", "image_url": "data:old"}]},
            {"role": "assistant", "content": "A cat."},
        ],
        list[InputItem],
    )
    body = msgspec.convert(
        {
            "input": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "And this one?"},
                        {"type": "input_image", "image_url": "data:new", "detail": "high"},
                    ],
                }
            ]
        },
        ResponsesRequest,
    )
    items = [*earlier, *responses_convert.input_items(body)]
    refs = responses_convert.image_refs(items, len(earlier))
    assert [(r.where, r.source) for r in refs] == [
        ("previous_response_id's input[0].content[0]", "data:old"),
        ("input[0].content[1]", "data:new"),
    ]
    chat = responses_convert.chat_body(body, items)
    request = convert.chat_request(chat, ModelSettings(), default_max_tokens=8)
    assert request.messages is not None
    assert [m["content"] for m in request.messages] == [
        [{"type": "image"}],
        "A cat.",
        [{"type": "text", "text": "And this one?"}, {"type": "image"}],
    ]
    assert convert.image_refs(chat.messages) == [  # the same order on the chat path
        ImageRef(where="messages[0].content[0]", source="data:old"),
        ImageRef(where="messages[2].content[1]", source="data:new"),
    ]


def test_ollama_images_come_first_in_their_message() -> None:
    chat = msgspec.convert(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "user", "content": "What are these?", "images": ["QUJD", "REVG"]},
            ],
        },
        ChatRequest,
    )
    assert ollama_convert.image_refs(chat) == [
        ImageRef(where="messages[1].images[0]", source="QUJD", kind="base64"),
        ImageRef(where="messages[1].images[1]", source="REVG", kind="base64"),
    ]
    (request,) = ollama_convert.chat_request(chat, ModelSettings(), default_max_tokens=8)
    assert request.messages is not None
    assert request.messages[0]["content"] == "Hi"
    assert request.messages[1]["content"] == [
        {"type": "image"},
        {"type": "image"},
        {"type": "text", "text": "What are these?"},
    ]


def test_ollama_generate_with_images_is_one_user_turn() -> None:
    body = GenerateRequest(model="m", prompt="Describe it.", system="Be brief.", images=["QUJD"])
    assert ollama_convert.image_refs(body) == [
        ImageRef(where="images[0]", source="QUJD", kind="base64")
    ]
    (request,) = ollama_convert.generate_request(body, ModelSettings(), default_max_tokens=8)
    assert request.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]},
    ]
    with pytest.raises(InvalidRequestError, match="not `raw`"):
        ollama_convert.image_refs(GenerateRequest(model="m", prompt="x", raw=True, images=["QUJD"]))


# ---- the served daemon, through the real SDKs -----------------------------------------------


@pytest.fixture(scope="module")
def daemon(tiny_models: Path, image_server: str) -> Iterator[str]:
    """`tiny-a` (a text model) and `seer`, the same weights typed as a vision model so that
    requests reach the image checks that come after the model's type; URLs allowed from the
    test's loopback server only, two images per request."""
    config = (
        f"hf_cache: false\nmodel_dirs: [{tiny_models}]\n"
        f"models:\n  seer: {{path: {tiny_models / 'tiny-a'}, type: vision}}\n"
        "images: {allow_urls: true, allowed_hosts: [127.0.0.1], max_per_request: 2}\n"
    )
    with running_daemon(config) as (url, _):
        yield url


def _still_serves(url: str) -> None:
    with openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as client:
        answer = client.chat.completions.create(
            model="tiny-a", messages=[{"role": "user", "content": "hi"}], max_tokens=1
        )
        assert answer.choices[0].finish_reason in ("stop", "length")


def _openai_refusal(url: str, model: str, *image_urls: str) -> dict[str, Any]:
    content: list[Any] = [{"type": "text", "text": "What is this?"}]
    content += [{"type": "image_url", "image_url": {"url": u}} for u in image_urls]
    with (
        openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0) as client,
        pytest.raises(openai.BadRequestError) as info,
    ):
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": content}], max_tokens=1
        )
    body: dict[str, Any] = info.value.body  # type: ignore[assignment]
    return body


def test_openai_sdk_sees_each_image_refusal(daemon: str, image_server: str) -> None:
    refusal = _openai_refusal(daemon, "tiny-a", data_url(PNG))
    assert refusal["param"] == WHERE and "`tiny-a` does not take images" in refusal["message"]
    # a bad image is named as such, whatever the model
    refusal = _openai_refusal(daemon, "tiny-a", data_url(garbage_png()))
    assert "not a valid PNG" in refusal["message"]
    refusal = _openai_refusal(daemon, "seer", image_server + "/to-localhost")
    assert refusal["param"] == WHERE and "not in `images.allowed_hosts`" in refusal["message"]
    refusal = _openai_refusal(daemon, "seer", data_url(PNG), data_url(PNG), data_url(PNG))
    assert refusal["param"] == "messages[0].content[3]" and "at most 2" in refusal["message"]
    refusal = _openai_refusal(daemon, "seer", "file:///etc/passwd")
    assert "file: URL" in refusal["message"]
    _still_serves(daemon)


def test_anthropic_sdk_sees_each_image_refusal(daemon: str, image_server: str) -> None:
    sources = [
        ({"type": "base64", "media_type": "image/png", "data": "@@@@"}, "not valid base64"),
        ({"type": "base64", "media_type": "image/png", "data": b64(huge_png())}, "pixels"),
        ({"type": "url", "url": image_server + "/missing"}, "HTTP 404"),
    ]
    with anthropic.Anthropic(base_url=daemon, api_key="x", max_retries=0) as client:
        for source, reason in sources:
            block = {"type": "image", "source": source}
            with pytest.raises(anthropic.BadRequestError) as info:
                client.messages.create(
                    model="seer",
                    max_tokens=1,
                    messages=[{"role": "user", "content": [block]}],  # type: ignore[list-item]
                )
            message = info.value.body["error"]["message"]  # type: ignore[index]
            assert "messages[0].content[0]" in message and reason in message
    _still_serves(daemon)


def test_ollama_package_sees_each_image_refusal(daemon: str) -> None:
    cases = [
        ("tiny-a", [PNG], "does not take images"),
        ("seer", [garbage_png()], "not a valid PNG"),
        ("seer", [PNG, huge_png()], "pixels"),
    ]
    with ollama.Client(host=daemon, timeout=60) as client:
        for model, images, reason in cases:
            _ollama_refusals(client, model, images, reason)
    _still_serves(daemon)


def _ollama_refusals(client: ollama.Client, model: str, images: list[bytes], reason: str) -> None:
    """Both /api/chat and /api/generate refuse the images, naming the last one."""
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(
            model=model,
            messages=[{"role": "user", "content": "What is it?", "images": images}],
            options={"num_predict": 1},
        )
    assert info.value.status_code == 400
    assert f"messages[0].images[{len(images) - 1}]" in info.value.error
    assert reason in info.value.error
    with pytest.raises(ollama.ResponseError) as info:
        client.generate(model=model, prompt="What is it?", images=images)
    assert info.value.status_code == 400
    assert f"images[{len(images) - 1}]" in info.value.error and reason in info.value.error


def test_image_limits_follow_config_edits(tiny_models: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    base = f"hf_cache: false\nmodel_dirs: [{tiny_models}]\n"
    config.write_text(base + "images: {max_per_request: 0}\n")
    image = [{"type": "image_url", "image_url": {"url": data_url(PNG)}}]
    body = {"model": "tiny-a", "messages": [{"role": "user", "content": image}], "max_tokens": 1}

    with watched_daemon(config) as (url, _), httpx.Client(base_url=url, timeout=30) as client:

        def refusal() -> str:
            answer = client.post("/v1/chat/completions", json=body)
            assert answer.status_code == 400
            message: str = answer.json()["error"]["message"]
            return message

        assert "at most 0" in refusal()
        config.write_text(base + "images: {max_per_request: 1}\n")
        wait_until(lambda: "does not take images" in refusal(), what="the edit applied")


def test_the_images_section_is_typed() -> None:
    config = parse_config("images: {max_bytes: 5MB, allowed_hosts: [img.example.com]}")
    assert config.images.max_bytes == 5_000_000
    assert config.images.allowed_hosts == ["img.example.com"]
    assert config.images.allow_urls is False
    assert config.images.max_per_request == 8
    assert 30_000 * 30_000 > config.images.max_pixels >= 7680 * 4320  # refuses 30k, takes 8K
    with pytest.raises(ConfigError, match=r"`images\.max_pixels`"):
        parse_config("images: {max_pixels: 0}")
    for entry in ("http://img.example.com", "dead.beef:8080", "img.example.com/a", "a..b"):
        with pytest.raises(ConfigError, match="is not a host name"):
            parse_config(f"images: {{allowed_hosts: ['{entry}']}}")
    hosts = ["*", "*.example.com", "img.example.com", "127.0.0.1", "::1", "localhost"]
    assert parse_config(f"images: {{allowed_hosts: {hosts}}}").images.allowed_hosts == hosts
    with pytest.raises(ConfigError, match="unknown field `alow_urls`"):
        parse_config("images: {alow_urls: true}")

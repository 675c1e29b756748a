"""Guards (API key, Host allowlist, CORS, body limit), slow readers, faults that must stay
one model's problem, and a property test on id resolution."""

from __future__ import annotations

import json
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import running_daemon, wait_until
from hypothesis import given, settings
from hypothesis import strategies as st
from tinymodel import make_tiny_adapter, make_tiny_model

from mlxrouter.config import parse_config
from mlxrouter.errors import ModelNotFoundError
from mlxrouter.registry import build_registry

CHAT = {"model": "tiny-a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def guarded(tiny_models: Path) -> Iterator[tuple[str, Any]]:
    config = (
        f"hf_cache: false\nmodel_dirs: [{tiny_models}]\napi_key: s3cret\n"
        "allowed_hosts: [mlx.example.lan]\ncors_origins: ['http://app.example']\n"
        "max_request_bytes: 4096\n"
    )
    with running_daemon(config) as served:
        yield served


def test_api_key_is_required_everywhere_but_health(guarded: tuple[str, Any]) -> None:
    url, _ = guarded
    for method, path, body in [
        ("GET", "/v1/models", None),
        ("POST", "/v1/chat/completions", CHAT),
        ("GET", "/admin/pool", None),
        ("GET", "/metrics", None),
    ]:
        response = httpx.request(method, url + path, json=body)
        assert response.status_code == 401, path
        assert response.json()["error"]["type"] == "authentication_error"
        wrong = httpx.request(
            method, url + path, json=body, headers={"Authorization": "Bearer nope"}
        )
        assert wrong.status_code == 401
    assert httpx.get(url + "/health").status_code == 200
    ok = httpx.post(
        url + "/v1/chat/completions",
        json=CHAT,
        headers={"Authorization": "Bearer s3cret"},
        timeout=60,
    )
    assert ok.status_code == 200


def test_api_key_from_the_environment(tiny_models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLXROUTER_API_KEY", "from-env")
    with running_daemon(f"hf_cache: false\nmodel_dirs: [{tiny_models}]\n") as (url, _):
        assert httpx.get(url + "/v1/models").status_code == 401
        assert (
            httpx.get(url + "/v1/models", headers={"Authorization": "Bearer from-env"}).status_code
            == 200
        )


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("localhost", 200),
        ("127.0.0.1:8080", 200),
        ("[::1]:8080", 200),
        ("127.5.5.5", 200),
        ("mlx.example.lan:8080", 200),
        ("evil.example.com", 403),
        ("attacker.test:8080", 403),
        ("192.168.1.10", 403),
    ],
)
def test_host_allowlist(guarded: tuple[str, Any], host: str, status: int) -> None:
    url, _ = guarded
    response = httpx.get(url + "/health", headers={"Host": host})
    assert response.status_code == status
    if status == 403:
        assert response.json()["error"]["code"] == "host_not_allowed"


def test_cors_only_for_configured_origins(guarded: tuple[str, Any]) -> None:
    url, _ = guarded
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    allowed = httpx.options(
        url + "/v1/chat/completions", headers={"Origin": "http://app.example", **preflight}
    )
    assert allowed.headers.get("access-control-allow-origin") == "http://app.example"
    other = httpx.options(
        url + "/v1/chat/completions", headers={"Origin": "http://evil.example", **preflight}
    )
    assert other.headers.get("access-control-allow-origin") not in ("*", "http://evil.example")
    simple = httpx.get(url + "/health", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in simple.headers


def test_no_cors_by_default(tiny_models: Path) -> None:
    with running_daemon(f"hf_cache: false\nmodel_dirs: [{tiny_models}]\n") as (url, _):
        response = httpx.get(url + "/v1/models", headers={"Origin": "http://anything.example"})
        assert "access-control-allow-origin" not in response.headers


def test_oversized_body_is_413_before_reading_it(guarded: tuple[str, Any]) -> None:
    url, _ = guarded
    host, port = url.removeprefix("http://").split(":")
    # Announce a huge body but send none: the answer must come without waiting for it.
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n"
            b"Authorization: Bearer s3cret\r\nContent-Type: application/json\r\n"
            b"Content-Length: 10000000\r\n\r\n"
        )
        reply = _read_whole_reply(sock)
    assert reply.startswith("HTTP/1.1 413")
    assert '"type":"invalid_request_error"' in reply


def _read_whole_reply(sock: socket.socket) -> str:
    """Read one HTTP reply: headers and body may arrive in separate segments."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data.decode()
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return (head + b"\r\n\r\n" + body).decode()


def test_slow_reader_is_cut_off_and_its_lease_freed(tmp_path: Path) -> None:
    """The daemon bounds each connection's kernel send buffer (mlxrouter.listener), so a client
    that stops reading stalls the writes after a few hundred KB whatever the host's
    `net.ipv4.tcp_wmem`; the write timeout then cuts it off. The client's own receive buffer is
    made small too: what a client's kernel accepted counts as read, and no server can tell."""
    make_tiny_model(tmp_path / "models" / "long", seed=3, context=8192)
    config = f"hf_cache: false\nmodel_dirs: [{tmp_path / 'models'}]\nwrite_timeout: 1\n"
    with running_daemon(config) as (url, app), socket.socket() as sock:
        host, port = url.removeprefix("http://").split(":")
        body = json.dumps(
            {
                "model": "long",
                "prompt": "Hi",
                "max_tokens": 8000,
                "stream": True,
                "logit_bias": {"2": -100},
            }
        ).encode()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills fast when unread
        sock.connect((host, int(port)))
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        pool = app.state.daemon.pool
        wait_until(lambda: any(e.in_flight for e in pool.entries()), what="the stream to start")
        # Never read: the server must give up on this client and release the lease.
        wait_until(
            lambda: all(e.in_flight == 0 for e in pool.entries()),
            timeout=30,
            what="the lease to be freed",
        )
        metrics = httpx.get(url + "/metrics").text
        assert 'mlxrouter_requests_total{model="long",status="499"} 1.0' in metrics


async def test_accepted_connections_have_nagle_off() -> None:
    """A small answer must not wait for the client's delayed ACK (about 40 ms a request)."""
    import asyncio

    from mlxrouter.listener import bind_socket

    accepted: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def connected(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        accepted.set_result(bool(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)))
        writer.close()

    with bind_socket("127.0.0.1", 0) as listener:
        server = await asyncio.start_server(connected, sock=listener)
        async with server:
            _, writer = await asyncio.open_connection(*listener.getsockname())
            assert await asyncio.wait_for(accepted, 30)
            writer.close()
            await writer.wait_closed()


def test_accepted_connections_get_the_bounded_send_buffer() -> None:
    from mlxrouter.listener import SEND_BUFFER_BYTES, bind_socket

    with bind_socket("127.0.0.1", 0) as listener, socket.socket() as client:
        client.connect(listener.getsockname())
        accepted, _ = listener.accept()
        with accepted:
            # Linux reports twice the value set (its bookkeeping share); others report it.
            size = accepted.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
            assert SEND_BUFFER_BYTES <= size <= 2 * SEND_BUFFER_BYTES


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path) -> Path:
    root = tmp_path_factory.mktemp("faulty")
    shutil.copytree(tiny_models / "tiny-a", root / "good")
    # A safetensors file whose header is whole but whose tensors do not fit the model.
    bad = shutil.copytree(tiny_models / "tiny-a", root / "bad-weights")
    make_tiny_model(root / "other-shape", seed=1, hidden=64)
    shutil.copy(root / "other-shape" / "model.safetensors", bad / "model.safetensors")
    shutil.rmtree(root / "other-shape")
    broken_tok = shutil.copytree(tiny_models / "tiny-a", root / "bad-tokenizer")
    (broken_tok / "tokenizer.json").write_text("{ this is not a tokenizer")
    make_tiny_adapter(root / "misfit", tiny_models / "tiny-a", base_ref="good", seed=1)
    # The adapter was made for another shape of base: rewrite it for a wider model.
    make_tiny_model(root / "wide", seed=1, hidden=64)
    make_tiny_adapter(root / "misfit", root / "wide", base_ref="good", seed=1)
    shutil.rmtree(root / "wide")
    return root


@pytest.mark.parametrize("model", ["bad-weights", "bad-tokenizer", "misfit"])
def test_faulty_models_fail_alone(faulty: Path, model: str) -> None:
    with running_daemon(f"hf_cache: false\nmodel_dirs: [{faulty}]\n") as (url, app):
        response = httpx.post(
            url + "/v1/chat/completions", json={**CHAT, "model": model}, timeout=60
        )
        assert response.status_code == 500
        error = response.json()["error"]
        assert error["code"] == "model_load_failed"
        assert str(faulty) not in response.text
        good = httpx.post(url + "/v1/chat/completions", json={**CHAT, "model": "good"}, timeout=60)
        assert good.status_code == 200
        assert app.state.daemon.health().ok
        assert model not in {e.key for e in app.state.daemon.pool.entries()}


def test_weights_deleted_while_loaded_keep_serving_until_rebuild(
    faulty: Path, tmp_path: Path
) -> None:
    models = tmp_path / "m"
    shutil.copytree(faulty / "good", models / "fleeting")
    with running_daemon(f"hf_cache: false\nmodel_dirs: [{models}]\n") as (url, _):
        assert (
            httpx.post(
                url + "/v1/chat/completions", json={**CHAT, "model": "fleeting"}, timeout=60
            ).status_code
            == 200
        )
        (models / "fleeting" / "model.safetensors").unlink()
        # Weights were read into memory at load: the loaded entry keeps answering.
        assert (
            httpx.post(
                url + "/v1/chat/completions", json={**CHAT, "model": "fleeting"}, timeout=60
            ).status_code
            == 200
        )


REGISTERED = ["tiny-a", "org/model"]


@settings(max_examples=300, deadline=None)
@given(
    name=st.one_of(
        st.text(),
        st.sampled_from(
            [
                "",
                ".",
                "..",
                "~",
                "/",
                "tiny-a/",
                "/tiny-a",
                "./tiny-a",
                "tiny-a\x00",
                "TINY-A",
                "org",
                "org/",
                "model",
            ]
        ),
        st.builds(lambda a, b: a + b, st.sampled_from(REGISTERED), st.text(min_size=1)),
    )
)
def test_only_registered_ids_resolve(
    name: str, tiny_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    registry = _registry(tiny_models, tmp_path_factory)
    if name in REGISTERED:
        assert registry.resolve(name).id == name
    else:
        with pytest.raises(ModelNotFoundError) as info:
            registry.resolve(name)
        # The answer is the same whether or not such a path exists on disk.
        assert info.value.message == f"The model `{name}` does not exist"


_cached: dict[str, Any] = {}


def _registry(tiny_models: Path, factory: pytest.TempPathFactory) -> Any:
    if "registry" not in _cached:
        root = factory.mktemp("resolve")
        shutil.copytree(tiny_models / "tiny-a", root / "tiny-a")
        shutil.copytree(tiny_models / "tiny-b", root / "org" / "model")
        _cached["registry"] = build_registry(parse_config(f"hf_cache: false\nmodel_dirs: [{root}]"))
        assert sorted(_cached["registry"].ids()) == sorted(REGISTERED)
    return _cached["registry"]


def test_symlink_out_of_a_model_dir_is_refused(tiny_models: Path, tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    (root / "escape").symlink_to(tiny_models / "tiny-a")
    registry = build_registry(parse_config(f"hf_cache: false\nmodel_dirs: [{root}]"))
    assert "escape" not in registry.ids()

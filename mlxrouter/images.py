"""Images in prompts, from what a client sent to verified bytes (`ImageInput`): data URLs and
base64 decoded, each checked with Pillow (a real PNG, JPEG, WebP or GIF, its declared size
within `images.max_pixels` before any pixel is decoded, then decoded whole so truncated or
garbage data is refused), within `images.max_bytes`, at most `images.max_per_request`.

Image URLs: `file:` and unknown schemes are always refused; `http(s)` ones only fetched when
the owner sets `images.allow_urls`, and then only from `images.allowed_hosts` (see
`_host_allowed`), each redirect checked again. No MLX here; every failure is an
`InvalidRequestError` naming where the image was (`messages[0].content[1]`)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
import ipaddress
import re
import socket
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urljoin, urlsplit

import httpx
from PIL import Image

from .config import ImagesConfig
from .engine.types import ImageInput
from .errors import InvalidRequestError

#: the formats taken (those OpenAI and Anthropic take); Pillow tries no other parser
FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
#: redirects followed per image URL
MAX_REDIRECTS = 3
_REDIRECTS = {301, 302, 303, 307, 308}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")

# Pillow warns (rather than refuses) between its pixel limit and twice it; an image past the
# limit is refused here either way, so its warning is an error like Pillow's own.
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


@dataclass(frozen=True, slots=True)
class ImageRef:
    """An image as a client sent it, before any check: `source` is a URL (a data URL too) for
    `kind` "url", raw base64 for "base64"; `where` names its place in the request."""

    where: str
    source: str
    kind: Literal["url", "base64"] = "url"


def _refuse(ref: ImageRef, why: str) -> InvalidRequestError:
    return InvalidRequestError(f"The image at {ref.where} {why}", param=ref.where)


def check_count(refs: Sequence[ImageRef], limits: ImagesConfig) -> None:
    """Refuse a request with more images than `max_per_request`, naming the first one over."""
    if len(refs) > limits.max_per_request:
        over = refs[limits.max_per_request]
        raise InvalidRequestError(
            f"The request has {len(refs)} images; at most {limits.max_per_request} are taken "
            f"per request (the first one over is at {over.where})",
            param=over.where,
        )


async def load_inline(
    refs: Sequence[ImageRef], limits: ImagesConfig
) -> list[ImageInput | ImageRef]:
    """Check the count, decode and verify every data-URL or base64 image (in a worker thread:
    Pillow decodes the pixels), and check the URL policy for the others, which are returned
    as they are for `fetch_urls` (once the model is known to take images)."""
    check_count(refs, limits)
    out: list[ImageInput | ImageRef] = []
    for ref in refs:
        data = _inline_bytes(ref, limits)
        if data is None:
            _check_url(ref, ref.source, limits)
            out.append(ref)
        else:
            out.append(await asyncio.to_thread(verify, ref, data, limits))
    return out


async def fetch_urls(
    items: Sequence[ImageInput | ImageRef],
    limits: ImagesConfig,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
) -> tuple[ImageInput, ...]:
    """`items` with each URL fetched and verified (on the event loop; Pillow in a thread)."""
    out: list[ImageInput] = []
    for item in items:
        if isinstance(item, ImageInput):
            out.append(item)
            continue
        data = await fetch(item, limits, transport=transport)
        out.append(await asyncio.to_thread(verify, item, data, limits))
    return tuple(out)


# ---- bytes as sent -------------------------------------------------------------------------


def _inline_bytes(ref: ImageRef, limits: ImagesConfig) -> bytes | None:
    """The image's bytes when it was sent inline; None for a URL to fetch."""
    if ref.kind == "base64":
        return _base64(ref, ref.source, limits)
    scheme = _SCHEME.match(ref.source)
    if scheme is None:
        raise _refuse(ref, "must be a data URL (data:image/png;base64,...) or an http(s) URL")
    if scheme.group(1).lower() != "data":
        return None
    header, comma, payload = ref.source.partition(",")
    if not comma or not header.lower().endswith(";base64"):
        raise _refuse(ref, "is a data URL without base64 data (data:image/png;base64,...)")
    media = header[5:].split(";")[0].strip().lower()
    if media and not media.startswith("image/"):
        raise _refuse(ref, f"is a data URL of type `{media}`, not an image")
    return _base64(ref, payload, limits)


def _base64(ref: ImageRef, text: str, limits: ImagesConfig) -> bytes:
    if len(text) // 4 * 3 > limits.max_bytes + 3:  # judged before decoding it
        raise _refuse(ref, f"is larger than the {limits.max_bytes}-byte limit")
    if any(c.isspace() for c in text[:80]) or any(c.isspace() for c in text[-80:]):
        text = "".join(text.split())
    text += "=" * (-len(text) % 4)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _refuse(ref, "is not valid base64") from None
    if not data:
        raise _refuse(ref, "is empty")
    return data


def verify(ref: ImageRef, data: bytes, limits: ImagesConfig) -> ImageInput:
    """`data` as an `ImageInput` once Pillow reads it as a whole, still image of an allowed
    format and size. Blocking (it decodes the pixels): call it off the event loop."""
    if len(data) > limits.max_bytes:
        raise _refuse(ref, f"is larger than the {limits.max_bytes}-byte limit")
    too_large = f"has more than {limits.max_pixels} pixels (images.max_pixels)"
    try:
        width, height, frames = _read(data, limits.max_pixels)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _refuse(ref, too_large) from None
    except Exception:  # noqa: BLE001 - Pillow raises many types for bad data (OSError, SyntaxError, ...)
        raise _refuse(ref, "is not a valid PNG, JPEG, WebP or GIF image") from None
    if width * height > limits.max_pixels:
        raise _refuse(ref, too_large)
    if frames > 1:
        raise _refuse(ref, "is animated; send a still image")
    digest = hashlib.sha256(data).hexdigest()
    return ImageInput(data=data, digest=digest, where=ref.where, width=width, height=height)


def _read(data: bytes, max_pixels: int) -> tuple[int, int, int]:
    """Width, height and frames; the pixels are decoded (truncated data fails) only for a
    still image within `max_pixels`, which Pillow also refuses to open past (set here)."""
    Image.MAX_IMAGE_PIXELS = max_pixels
    with Image.open(io.BytesIO(data), formats=FORMATS) as image:
        width, height = image.size
        frames = getattr(image, "n_frames", 1)
        if width * height <= max_pixels and frames == 1:
            image.load()
        return width, height, frames


# ---- URLs ----------------------------------------------------------------------------------


def _check_url(ref: ImageRef, url: str, limits: ImagesConfig) -> str:
    """The URL's host once its scheme and host are allowed (addresses are checked on fetch)."""
    match = _SCHEME.match(url)
    scheme = match.group(1).lower() if match else ""
    if scheme == "file":
        raise _refuse(ref, "is a file: URL; the daemon never reads files for a request")
    if scheme not in ("http", "https"):
        raise _refuse(ref, "must be a data URL (data:image/png;base64,...) or an http(s) URL")
    if not limits.allow_urls:
        raise _refuse(
            ref,
            "is a URL, and this daemon does not fetch image URLs unless its owner sets "
            "`images.allow_urls`; send the image as a data URL (base64) instead",
        )
    host = (urlsplit(url).hostname or "").lower()
    if not host or _host_allowed(host, limits.allowed_hosts) is None:
        raise _refuse(ref, f"names the host `{host}`, which is not in `images.allowed_hosts`")
    return host


def _host_allowed(host: str, allowed: Sequence[str]) -> bool | None:
    """None: `host` matches no entry; True: an entry names it exactly (its addresses may be
    loopback or private: the owner said so); False: only a wildcard (`*`, `*.example.com`)
    matches, so it must resolve to public addresses only."""
    entries = [entry.strip().lower().rstrip(".") for entry in allowed]
    if host.rstrip(".") in entries:
        return True
    for entry in entries:
        if entry == "*" or (entry.startswith("*.") and host.endswith(entry[1:])):
            return False
    return None


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", maxsplit=1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


async def _check_addresses(ref: ImageRef, url: str, limits: ImagesConfig) -> None:
    """A hop's host is in the allowlist, and (unless named exactly) every address it resolves
    to is public: no loopback, link-local, private or reserved address."""
    host = _check_url(ref, url, limits)
    if _host_allowed(host, limits.allowed_hosts):
        return
    port = urlsplit(url).port or (443 if url.lower().startswith("https") else 80)
    try:
        found = await asyncio.get_running_loop().getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM
        )
    except OSError:
        raise _refuse(ref, f"names the host `{host}`, which does not resolve") from None
    if not found or not all(_public(str(info[4][0])) for info in found):
        raise _refuse(
            ref,
            f"names the host `{host}`, which resolves to a loopback, link-local or private "
            "address that `images.allowed_hosts` does not name",
        )


async def fetch(
    ref: ImageRef, limits: ImagesConfig, *, transport: httpx.AsyncBaseTransport | None = None
) -> bytes:
    """The bytes at `ref`'s URL: each hop checked (`_check_addresses`), redirects followed
    by hand (at most `MAX_REDIRECTS`), the body read until `max_bytes`, all within
    `fetch_timeout`. No proxies from the environment (they would bypass the checks)."""
    try:
        async with (
            asyncio.timeout(limits.fetch_timeout),
            httpx.AsyncClient(
                follow_redirects=False,
                trust_env=False,
                timeout=limits.fetch_timeout,
                transport=transport,
            ) as client,
        ):
            url = ref.source
            for _ in range(MAX_REDIRECTS + 1):
                await _check_addresses(ref, url, limits)
                async with client.stream("GET", url) as answer:
                    if answer.status_code in _REDIRECTS and "location" in answer.headers:
                        url = urljoin(url, answer.headers["location"])
                        continue
                    if answer.status_code != 200:
                        raise _refuse(ref, f"could not be fetched (HTTP {answer.status_code})")
                    return await _body(ref, answer, limits)
            raise _refuse(ref, f"redirects more than {MAX_REDIRECTS} times")
    except (TimeoutError, httpx.TimeoutException):
        raise _refuse(ref, f"took longer than {limits.fetch_timeout} s to fetch") from None
    except httpx.HTTPError:
        raise _refuse(ref, "could not be fetched (connection failed)") from None


async def _body(ref: ImageRef, answer: httpx.Response, limits: ImagesConfig) -> bytes:
    declared = answer.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_bytes:
        raise _refuse(ref, f"is larger than the {limits.max_bytes}-byte limit")
    body = bytearray()
    async for piece in answer.aiter_bytes():
        body += piece
        if len(body) > limits.max_bytes:
            raise _refuse(ref, f"is larger than the {limits.max_bytes}-byte limit")
    return bytes(body)

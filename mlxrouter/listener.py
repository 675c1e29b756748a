"""The daemon's listening socket, made before uvicorn starts.

Its send buffer is bounded, and connections accepted from it inherit that bound. Without it the
kernel grows each connection's buffer up to `net.ipv4.tcp_wmem`'s maximum (megabytes on many
hosts), so a client that stopped reading is noticed only once megabytes of tokens have queued.
With it, a stalled reader fills the buffer after a few hundred KB of output at most, asyncio's
flow control pauses uvicorn's writes, and the write timeout (`api/guards.py`) cuts the client off,
whatever the host's TCP settings. Token streams need far less than this bound per round trip.
"""

from __future__ import annotations

import socket

#: per-connection kernel send buffer (Linux doubles the value it is given)
SEND_BUFFER_BYTES = 128 * 1024


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port); port 0 picks a free one, read back from
    `getsockname()`. Binding here, not in uvicorn, means the port is known before serving."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # The protocol named, not left 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets
    # whose proto is TCP, and without it a small answer waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        sock.bind((host, port))
        sock.listen(2048)
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock

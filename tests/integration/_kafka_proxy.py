"""A TCP proxy in front of a Kafka-protocol broker that refuses short session timeouts.

Apache Kafka and Redpanda refuse a JoinGroup whose ``session.timeout.ms`` is below the broker's
``group.min.session.timeout.ms`` (6000 by default) with ``INVALID_SESSION_TIMEOUT``; Tansu
accepts any. Put in front of Tansu (advertising the proxy's address, so that every connection of a
client goes through it), this answers a JoinGroup below ``min_session_timeout_ms`` itself, as
such a broker would, without passing it on (the broker never hears of the refused member).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

JOIN_GROUP = 11  # the JoinGroup API key
INVALID_SESSION_TIMEOUT = 26
_FLEXIBLE_FROM = 6  # JoinGroup versions from 6 use compact strings and tagged fields


def _uvarint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def join_session_timeout(frame: bytes) -> tuple[int, int, int] | None:
    """(correlation id, API version, session timeout) of a JoinGroup request frame, else None."""
    api_key, version, correlation = struct.unpack_from(">hhi", frame, 0)
    if api_key != JOIN_GROUP:
        return None
    (client_len,) = struct.unpack_from(">h", frame, 8)
    pos = 10 + max(client_len, 0)
    if version >= _FLEXIBLE_FROM:
        tags, pos = _uvarint(frame, pos)
        for _ in range(tags):
            _, pos = _uvarint(frame, pos)
            size, pos = _uvarint(frame, pos)
            pos += size
        group_len, pos = _uvarint(frame, pos)
        pos += group_len - 1
    else:
        (group_len,) = struct.unpack_from(">h", frame, pos)
        pos += 2 + group_len
    (session_timeout,) = struct.unpack_from(">i", frame, pos)
    return correlation, version, session_timeout


def refusal(correlation: int, version: int) -> bytes:
    """The INVALID_SESSION_TIMEOUT response frame to a JoinGroup request (versions 0 to 5)."""
    throttle = struct.pack(">i", 0) if version >= 2 else b""
    empty = struct.pack(">h", 0)  # protocol name, leader, member id: empty strings
    return (
        struct.pack(">i", correlation)
        + throttle
        + struct.pack(">hi", INVALID_SESSION_TIMEOUT, -1)
        + empty * 3
        + struct.pack(">i", 0)  # no members
    )


@dataclass
class RefusingProxy:
    """Listens on a free loopback port and forwards to ``upstream_port``; see the module docstring."""

    upstream_port: int
    min_session_timeout_ms: int = 6000
    port: int = 0
    refused: list[int] = field(default_factory=list)  # session timeouts refused
    accepted: list[int] = field(default_factory=list)  # and let through
    _server: socket.socket | None = None
    _closing: bool = False
    _open: list[socket.socket] = field(default_factory=list)

    def start(self) -> RefusingProxy:
        server = socket.create_server(("127.0.0.1", self.port))
        self._server = server
        self.port = server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def close(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
        _close(*self._open)

    def _accept(self) -> None:
        assert self._server is not None
        while not self._closing:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:  # the broker is stopping: so is the client's connection
                _close(client)
                continue
            self._open += [client, upstream]
            lock = threading.Lock()  # both directions write to the client
            threading.Thread(target=self._requests, args=(client, upstream, lock), daemon=True).start()
            threading.Thread(target=self._responses, args=(upstream, client, lock), daemon=True).start()

    def _requests(self, src: socket.socket, dst: socket.socket, lock: threading.Lock) -> None:
        for frame in _frames(src):
            join = join_session_timeout(frame)
            if join is not None:
                correlation, version, timeout = join
                if timeout < self.min_session_timeout_ms and version < _FLEXIBLE_FROM:
                    self.refused.append(timeout)
                    with lock:
                        _send(src, refusal(correlation, version))
                    continue
                self.accepted.append(timeout)
            if not _send(dst, frame):
                break
        _close(src, dst)

    def _responses(self, src: socket.socket, dst: socket.socket, lock: threading.Lock) -> None:
        for frame in _frames(src):
            with lock:
                sent = _send(dst, frame)
            if not sent:
                break
        _close(src, dst)


def _frames(sock: socket.socket) -> Iterator[bytes]:
    """The size-prefixed frames read from ``sock`` until it closes (without their size)."""
    buffer = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except OSError:
            return
        if not chunk:
            return
        buffer += chunk
        while len(buffer) >= 4:
            (size,) = struct.unpack_from(">i", buffer, 0)
            if len(buffer) < 4 + size:
                break
            yield buffer[4 : 4 + size]
            buffer = buffer[4 + size :]


def _send(sock: socket.socket, frame: bytes) -> bool:
    try:
        sock.sendall(struct.pack(">i", len(frame)) + frame)
    except OSError:
        return False
    return True


def _close(*socks: socket.socket) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()

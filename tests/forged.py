"""A forging WeChat Pay on a real loopback socket: the emulator's answer, then tampered with.

:class:`ForgedServer` listens on 127.0.0.1 (a free port), reads each HTTP/1.1 request off the
raw socket, asks the real :class:`~shim.sandbox.Emulator` for its answer (so request signatures
are checked and answers signed as WeChat Pay would) and lets the test rewrite that answer
(status, headers, body, even raw bytes) before writing it back and closing the connection.
That is how a hostile upstream that holds valid keys (a compromised proxy, a mixed-up
gateway, a replay) plays against the shim: its answers pass verification and carry the attack.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus

from shim.sandbox import Emulator, SandboxReply, SandboxRequest


@dataclass
class Answer:
    """An answer to write: status, header pairs (values str or raw bytes), body."""

    status: int
    headers: list[tuple[str, str | bytes]]
    body: bytes

    @classmethod
    def of(cls, reply: SandboxReply) -> Answer:
        return cls(reply.status, list(reply.headers), reply.body)

    def header(self, name: str) -> str | bytes | None:
        low = name.lower()
        return next((v for k, v in self.headers if k.lower() == low), None)

    def set_header(self, name: str, value: str | bytes) -> None:
        low = name.lower()
        self.headers = [(k, v) for k, v in self.headers if k.lower() != low] + [(name, value)]

    def with_body(self, body: bytes) -> Answer:
        self.body = body
        self.set_header("content-length", str(len(body)))
        return self

    def raw(self) -> bytes:
        try:
            reason = HTTPStatus(self.status).phrase
        except ValueError:
            reason = "Unknown"
        head = f"HTTP/1.1 {self.status} {reason}\r\n".encode()
        for k, v in self.headers:
            value = v if isinstance(v, bytes) else v.encode("utf-8")
            head += k.encode("latin-1") + b": " + value + b"\r\n"
        return head + b"connection: close\r\n\r\n" + self.body


#: Given the request the emulator saw and its answer, the answer to send instead.
Forge = Callable[[SandboxRequest, Answer], Answer]


@dataclass
class ForgedServer:
    """A raw-socket server answering every request with ``forge(emulator's answer)``."""

    emulator: Emulator
    forge: Forge
    sock: socket.socket = field(init=False)
    requests: list[SandboxRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5.0)
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0"))
                while len(body) < length:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    body += chunk
                request = SandboxRequest(
                    method, target.encode("latin-1"), headers, body, client_host="127.0.0.1"
                )
                self.requests.append(request)
                answer = self.forge(request, Answer.of(self.emulator.handle(request)))
                conn.sendall(answer.raw())
            except OSError:
                return

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.sock.close()
        self._thread.join(timeout=5)


@contextmanager
def forged_server(emulator: Emulator, forge: Forge) -> Iterator[ForgedServer]:
    """Run a :class:`ForgedServer` for the duration of the block."""
    server = ForgedServer(emulator, forge)
    try:
        yield server
    finally:
        server.close()


def upstream_at(url: str) -> dict[str, dict[str, str]]:
    """The config tables that point both routes at ``url``."""
    return {"upstream": {"v2_base_url": url, "v3_base_url": url}}

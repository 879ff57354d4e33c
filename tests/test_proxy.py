"""Environment proxies (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, NO_PROXY) on both twins.

A forwarding proxy of the test's own, on loopback, stands in front of the emulator:
absolute-form requests for ``http://`` upstreams, ``CONNECT`` tunnels for ``https://`` ones
(the emulator served over TLS with a trustme CA). Both twins' own clients go through it when
the environment says so, and around it when ``NO_PROXY`` names the host; a proxy that drips
or never answers ``CONNECT`` still ends a sync call within its budget, because every
proxied connection runs on the deadline backend.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn

from shim import CouponStockShim, DeadlineTransport, ShimError, UpstreamError

# private: the transports' internals (deadline streams, limits)
from shim._transport import SyncPool, proxy_mounts
from shim.sandbox import Emulator, SandboxState
from tests.conftest import Twin
from tests.fault_cases import build_twin, parse_emulator_config
from tests.hostile import Conn, HostileServer, Request
from tests.wait import wait_until

STOCK = "1757"
MCH = "10000098"
BUDGET = 0.6
SLACK = 0.5  # no call lives past budget_s + 0.5 s
DRIP = 0.02
PROXY_VARS = [
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "REQUEST_METHOD",  # urllib ignores HTTP_PROXY under CGI
]


@pytest.fixture(autouse=True)
def _no_ambient_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine's own proxy settings (either case) never leak into these tests."""
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


# -- a tiny forwarding proxy ----------------------------------------------------------------


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("client went away")
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def _relay(a: socket.socket, b: socket.socket, stopping: threading.Event) -> None:
    """Copy bytes both ways until either side closes (one thread, so TLS sockets are safe)."""
    socks = [a, b]
    while not stopping.is_set():
        ready = [s for s in socks if isinstance(s, ssl.SSLSocket) and s.pending()]
        if not ready:
            ready, _, _ = select.select(socks, [], [], 0.05)
        for src in ready:
            dst = b if src is a else a
            try:
                data = src.recv(65536)
                if not data:
                    return
                dst.sendall(data)
            except OSError:
                return


@dataclass
class ForwardProxy:
    """An HTTP proxy on 127.0.0.1: ``behaviour`` is ``forward``, ``drip`` (answers one byte
    per DRIP, never finishing) or ``silent`` (reads the request, never answers). With
    ``tls`` (a server ``SSLContext``) clients speak TLS to the proxy itself."""

    behaviour: str = "forward"
    tls: ssl.SSLContext | None = None
    seen: list[str] = field(default_factory=list)  # request lines, in arrival order

    def __post_init__(self) -> None:
        self._stopping = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port = self._listener.getsockname()[1]
        scheme = "https" if self.tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> ForwardProxy:
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(10)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, sock: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            sock.settimeout(10)
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_side=True)
            head, rest = _read_head(sock)
            line, *headers = head.decode("latin-1").split("\r\n")
            self.seen.append(line)
            method, target, version = line.split(" ")
            if self.behaviour == "silent":
                self._stopping.wait(8)
                return
            if self.behaviour == "drip":
                for byte in b"HTTP/1.1 200 " + b"O" * 2000:
                    if self._stopping.wait(DRIP):
                        return
                    sock.sendall(bytes([byte]))
                return
            if method == "CONNECT":
                host, port = target.rsplit(":", 1)
                upstream = socket.create_connection((host, int(port)), timeout=10)
                sock.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                url = urlsplit(target)  # absolute form: http://host:port/path
                upstream = socket.create_connection((url.hostname, url.port or 80), timeout=10)
                kept = [
                    h
                    for h in headers
                    if not h.lower().startswith(("proxy-", "connection:", "keep-alive:"))
                ]
                path = url.path + (f"?{url.query}" if url.query else "")
                out = "\r\n".join([f"{method} {path} {version}", *kept, "Connection: close"])
                upstream.sendall(out.encode("latin-1") + b"\r\n\r\n" + rest)
            _relay(sock, upstream, self._stopping)
        except (OSError, ValueError, ConnectionError):
            pass
        finally:
            if upstream is not None:
                upstream.close()
            sock.close()


# -- the emulator over TLS ------------------------------------------------------------------


@dataclass
class Tls:
    ca_file: str
    cert_file: str
    key_file: str
    server: ssl.SSLContext  # for the proxy's own TLS
    client: ssl.SSLContext  # trusts the CA


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    import trustme

    folder = tmp_path_factory.mktemp("proxy-tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    cert.private_key_pem.write_to_path(str(folder / "key.pem"))
    cert.private_key_and_cert_chain_pem.write_to_path(str(folder / "cert.pem"))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server)
    client = ssl.create_default_context(cafile=str(folder / "ca.pem"))
    return Tls(
        str(folder / "ca.pem"), str(folder / "cert.pem"), str(folder / "key.pem"), server, client
    )


@pytest.fixture(scope="module")
def tls_server(_session_emulator: Emulator, tls: Tls) -> Iterator[str]:
    """The session emulator served by uvicorn over TLS on 127.0.0.1: its https:// URL."""
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        _session_emulator.asgi_app,
        http="h11",
        lifespan="off",
        log_config=None,
        access_log=False,
        ssl_certfile=tls.cert_file,
        ssl_keyfile=tls.key_file,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), "TLS emulator did not start")
    assert server.started, "TLS emulator thread died"
    yield f"https://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture
async def make_twin(
    twin_kind: str, sandbox_state: SandboxState, tmp_path: Path, emulator: Emulator
) -> AsyncIterator[Callable[..., Twin]]:
    """``make_twin(url, mode)``: a twin of the fixture's kind whose own client reaches
    ``url`` over real sockets (the environment decides about proxies)."""
    made: list[Twin] = []

    def build(url: str, mode: str = "legacy", **kwargs: Any) -> Twin:
        tables = {
            "upstream": {"timeout_s": 5.0, "connect_timeout_s": 5.0, "budget_s": BUDGET},
            "retry": {"attempts": 1},
            "routing": {"mode": mode, "fallback_to_legacy": False},
        }
        cfg = parse_emulator_config(sandbox_state, tmp_path, url, tables)
        twin = build_twin(twin_kind, cfg, emulator, inprocess=False, **kwargs)
        made.append(twin)
        return twin

    yield build
    for twin in made:
        await twin.close()


async def outcome(twin: Twin) -> dict[str, str] | ShimError:
    """One query's answer or typed error."""
    try:
        return await twin.query(STOCK, mch_id=MCH)
    except ShimError as exc:
        return exc


async def timed(twin: Twin) -> tuple[float, dict[str, str] | ShimError]:
    """One query's wall time, and its answer or typed error."""
    start = time.monotonic()
    try:
        result: dict[str, str] | ShimError = await twin.query(STOCK, mch_id=MCH)
    except ShimError as exc:
        result = exc
    return time.monotonic() - start, result


# -- calls go through the proxy the environment names -----------------------------------------


@pytest.mark.parametrize("mode", ["legacy", "v3"])
@pytest.mark.parametrize("var", ["HTTP_PROXY", "http_proxy", "ALL_PROXY"])
async def test_http_calls_go_through_the_env_proxy(
    make_twin: Callable[..., Twin],
    server: Any,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
    var: str,
) -> None:
    """An http:// upstream: the request reaches the proxy in absolute form, and the real
    signed answer comes back through it."""
    with ForwardProxy() as proxy:
        monkeypatch.setenv(var, proxy.url)
        twin = make_twin(server.base_url, mode)
        result = await outcome(twin)
    assert isinstance(result, dict), result
    assert result["result_code"] == "SUCCESS"
    assert proxy.seen, "the call did not go through the proxy"
    assert all(line.split(" ")[1].startswith(server.base_url) for line in proxy.seen), proxy.seen


@pytest.mark.parametrize("mode", ["legacy", "v3"])
async def test_https_calls_tunnel_through_the_env_proxy(
    make_twin: Callable[..., Twin],
    tls: Tls,
    tls_server: str,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
) -> None:
    """An https:// upstream: one CONNECT tunnel to it, TLS verified end to end inside."""
    monkeypatch.setenv("SSL_CERT_FILE", tls.ca_file)
    with ForwardProxy() as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # the wrong scheme's proxy
        twin = make_twin(tls_server, mode)
        result = await outcome(twin)
    assert isinstance(result, dict), result
    assert result["result_code"] == "SUCCESS"
    authority = tls_server.removeprefix("https://")
    assert proxy.seen and all(line.startswith(f"CONNECT {authority} ") for line in proxy.seen)


@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "localhost,127.0.0.1", "*"])
async def test_no_proxy_bypasses_the_proxy(
    make_twin: Callable[..., Twin],
    server: Any,
    monkeypatch: pytest.MonkeyPatch,
    no_proxy: str,
) -> None:
    with ForwardProxy() as proxy:
        monkeypatch.setenv("ALL_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", no_proxy)
        twin = make_twin(server.base_url)
        result = await outcome(twin)
    assert isinstance(result, dict), result
    assert proxy.seen == []


async def test_without_proxy_env_calls_go_direct(
    make_twin: Callable[..., Twin], server: Any
) -> None:
    with ForwardProxy() as proxy:
        twin = make_twin(server.base_url)
        result = await outcome(twin)
    assert isinstance(result, dict), result
    assert proxy.seen == []


def test_the_env_mapping_does_not_decide_proxies(
    sandbox_state: SandboxState,
    tmp_path: Path,
    emulator: Emulator,
    server: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Proxies are the process's network settings, read from os.environ as httpx reads
    them; ``env=`` (kill switch, overrides) neither adds nor removes one."""
    cfg = parse_emulator_config(sandbox_state, tmp_path, server.base_url, {})
    with ForwardProxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        with CouponStockShim(cfg, env={}) as shim:
            assert shim.query_coupon_stock(STOCK, mch_id=MCH)
        seen = list(proxy.seen)
        monkeypatch.delenv("HTTP_PROXY")
        with CouponStockShim(cfg, env={"HTTP_PROXY": proxy.url}) as shim:
            assert shim.query_coupon_stock(STOCK, mch_id=MCH)
    assert len(seen) == 1 and proxy.seen == seen


def test_an_explicit_transport_is_used_as_given(
    sandbox_state: SandboxState,
    tmp_path: Path,
    emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As in httpx: a transport the caller passes is not wrapped in env proxies."""
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
    cfg = parse_emulator_config(sandbox_state, tmp_path, "http://sandbox", {})
    with CouponStockShim(cfg, env={}, transport=emulator.mock_transport()) as shim:
        assert shim.query_coupon_stock(STOCK, mch_id=MCH)


# -- the same rules as httpx --------------------------------------------------------------------

ENVS = [
    {},
    {"HTTP_PROXY": "http://p1:3128"},
    {"https_proxy": "p2:8080"},  # no scheme: http:// is assumed
    {"ALL_PROXY": "socks5://p3:1080", "HTTPS_PROXY": "http://p2:8080"},
    {"HTTP_PROXY": "http://p1:3128", "NO_PROXY": "example.com, .internal,10.0.0.1,::1,localhost"},
    {"HTTP_PROXY": "http://p1:3128", "NO_PROXY": "*"},
    {"ALL_PROXY": "http://user:secret@p1:3128", "NO_PROXY": "http://direct.example"},
]


def _routes(mounts: dict[Any, Any]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for pattern, transport in mounts.items():
        key = getattr(pattern, "pattern", pattern)
        if transport is None:
            out[key] = None
        else:
            pool = transport._pool
            url = pool._proxy_url
            out[key] = f"{url.scheme.decode()}://{url.host.decode()}:{url.port}"
    return out


@pytest.mark.parametrize("env", ENVS, ids=range(len(ENVS)))
def test_proxy_routes_match_httpx_default(
    env: dict[str, str],
    sandbox_state: SandboxState,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sync shim's own client routes every URL pattern exactly as a default
    httpx.Client (the async twin's) does, and every proxy route is a DeadlineTransport."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        plain = httpx.Client()
    except ImportError:  # a socks5:// proxy without the socksio package: both refuse alike
        with pytest.raises(ImportError, match="socksio"):
            proxy_mounts()
        return
    with plain:
        expected = _routes(plain._mounts)
    mounts = proxy_mounts()
    assert _routes(mounts) == expected
    assert all(t is None or isinstance(t, DeadlineTransport) for t in mounts.values())
    cfg = parse_emulator_config(sandbox_state, tmp_path, "http://127.0.0.1:9", {})
    with CouponStockShim(cfg, env={}) as shim:
        client = shim._client
        if all(route is None for route in expected.values()):
            # no proxy for any URL: the shim's own lean pool connects directly
            assert isinstance(client, SyncPool)
            return
        assert isinstance(client, httpx.Client)
        assert _routes(client._mounts) == expected
        assert isinstance(client._transport, DeadlineTransport)
        for url in ("http://example.com/x", "https://a.internal/y", "http://10.0.0.1/",
                    "https://api.mch.weixin.qq.com/pay", "http://[::1]:80/"):
            want = plain_transport_kind(env, url)
            got = client._transport_for_url(httpx.URL(url))
            assert (got is client._transport) == (want is None), (url, env)


def plain_transport_kind(env: dict[str, str], url: str) -> Any:
    """What a default httpx.Client picks for ``url``: None for its direct transport."""
    with httpx.Client() as plain:
        got = plain._transport_for_url(httpx.URL(url))
        return None if got is plain._transport else got


def test_bad_proxy_urls_fail_clearly() -> None:
    with pytest.raises(ValueError, match="proxy URL"):
        DeadlineTransport(proxy="ftp://p:21")


# -- hostile proxies stay within the budget ------------------------------------------------------


def _drip_status(conn: Conn, req: Request) -> None:
    conn.drip(b"HTTP/1.1 200 " + b"O" * 5000, DRIP)


@pytest.mark.parametrize(
    "case", ["proxy_drips", "connect_unanswered", "connect_drips", "upstream_drips"]
)
async def test_a_hostile_proxy_ends_within_the_budget(
    make_twin: Callable[..., Twin],
    tls: Tls,
    tls_server: str,
    monkeypatch: pytest.MonkeyPatch,
    twin_kind: str,
    case: str,
) -> None:
    """Whatever the proxy (or the upstream behind it) drips or withholds, every read being
    far shorter than timeout_s, the call ends by budget_s + 0.5 s as a budget error."""
    monkeypatch.setenv("SSL_CERT_FILE", tls.ca_file)
    behaviour = {"proxy_drips": "drip", "connect_drips": "drip"}.get(case, "silent")
    if case == "upstream_drips":
        behaviour = "forward"
    with contextlib.ExitStack() as stack:
        proxy = stack.enter_context(ForwardProxy(behaviour))
        if case == "upstream_drips":
            url = stack.enter_context(HostileServer(_drip_status)).url
        elif case == "proxy_drips":
            url = "http://127.0.0.1:9"  # never reached: the proxy answers (slowly) itself
        else:
            url = tls_server
        monkeypatch.setenv("ALL_PROXY", proxy.url)
        twin = make_twin(url)
        elapsed, result = await timed(twin)
    print(f"BOUND proxy {case} {twin_kind}: {elapsed:.3f} s vs {BUDGET} s -> {result!r}")
    assert proxy.seen, "the call did not go through the proxy"
    assert isinstance(result, UpstreamError), result
    if twin_kind == "sync":
        assert result.kind == "budget", result
    else:
        assert result.kind in ("budget", "timeout"), result
    assert elapsed <= BUDGET + SLACK, f"{case}: {elapsed:.2f} s against a {BUDGET} s budget"


# -- TLS to the proxy itself (https:// proxy, https:// upstream: TLS inside TLS) ------------------


def test_tls_inside_a_tls_proxy_tunnel(
    sandbox_state: SandboxState, tmp_path: Path, emulator: Emulator, tls: Tls, tls_server: str
) -> None:
    """An https:// proxy in front of an https:// upstream: the deadline backend runs the
    inner TLS over memory buffers (an SSLSocket cannot be wrapped again)."""
    cfg = parse_emulator_config(sandbox_state, tmp_path, tls_server, {})
    with ForwardProxy(tls=tls.server) as proxy:
        transport = DeadlineTransport(
            verify=tls.client, proxy=httpx.Proxy(proxy.url, ssl_context=tls.client)
        )
        with (
            httpx.Client(transport=transport) as client,
            CouponStockShim(cfg, env={}, client=client) as shim,
        ):
            for _ in range(2):  # the second call reuses the pooled tunnel
                answer = shim.query_coupon_stock(STOCK, mch_id=MCH)
                assert answer["result_code"] == "SUCCESS"
    assert proxy.seen and proxy.seen[0].startswith("CONNECT ")


def test_an_unanswered_tls_proxy_tunnel_ends_within_the_budget(
    sandbox_state: SandboxState, tmp_path: Path, emulator: Emulator, tls: Tls
) -> None:
    """TLS to the proxy, then a CONNECT it never answers: still a budget error in time."""
    tables = {
        "upstream": {"timeout_s": 5.0, "connect_timeout_s": 5.0, "budget_s": BUDGET},
        "retry": {"attempts": 1},
    }
    cfg = parse_emulator_config(sandbox_state, tmp_path, "https://127.0.0.1:9", tables)
    with ForwardProxy("silent", tls=tls.server) as proxy:
        transport = DeadlineTransport(
            verify=tls.client, proxy=httpx.Proxy(proxy.url, ssl_context=tls.client)
        )
        with (
            httpx.Client(transport=transport) as client,
            CouponStockShim(cfg, env={}, client=client) as shim,
        ):
            start = time.monotonic()
            with pytest.raises(UpstreamError) as info:
                shim.query_coupon_stock(STOCK, mch_id=MCH)
            elapsed = time.monotonic() - start
    assert proxy.seen
    assert info.value.kind == "budget", info.value
    assert elapsed <= BUDGET + SLACK

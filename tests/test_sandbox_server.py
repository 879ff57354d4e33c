"""The emulator's plugs and state: uvicorn server, admin endpoint, config, CLI runner."""

from __future__ import annotations

import re
import shutil
import stat
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import xmltodict

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import shim.sandbox as sandbox

# The CLI's runner (banner, config notes): command code, not part of shim.sandbox.
# private: CLI command internals (exit codes, helpers)
from shim._commands.sandbox import run_forever
from shim.sandbox import (
    FAULT_KINDS,
    SEEDED_STOCKS,
    V2_PATH,
    Emulator,
    SandboxState,
    describe_stocks,
    render_xml,
    serve,
    v2_sign,
)
from tests.wait import wait_until

# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def state(tmp_path_factory: pytest.TempPathFactory) -> SandboxState:
    """One key set for the whole session (key generation is slow)."""
    return SandboxState.load_or_create(tmp_path_factory.mktemp("sandbox-server-state"))


@pytest.fixture
def emulator(state: SandboxState) -> Emulator:
    """A fresh emulator."""
    return Emulator(state)


def v2_body(state: SandboxState, stock_id: str = "1717") -> bytes:
    """A signed v2 request for merchant 10000098."""
    m = state.merchants["10000098"]
    fields = {"appid": m.appid, "mch_id": m.mchid, "nonce_str": "abc", "coupon_stock_id": stock_id}
    fields["sign"] = v2_sign(fields, m.v2_key)
    return render_xml(fields)


def sandbox_threads() -> set[threading.Thread]:
    """Live server threads started by serve() (other modules' session servers included)."""
    return {t for t in threading.enumerate() if t.name.startswith("coupon-shim-sandbox-")}


@pytest.fixture(autouse=True)
def preexisting() -> Iterator[set[threading.Thread]]:
    """Server threads alive before the test (e.g. a session server); none may be added."""
    before = sandbox_threads()
    yield before
    assert sandbox_threads() - before == set()


# ----------------------------------------------------------------------------- serve


def test_serve_starts_on_free_port_and_stops(
    emulator: Emulator, state: SandboxState, preexisting: set[threading.Thread]
) -> None:
    """serve() binds 127.0.0.1 on a free port, answers, and leaves no thread or listener."""
    with serve(emulator) as server:
        assert server.host == "127.0.0.1"
        assert server.port > 0
        assert server.base_url == f"http://127.0.0.1:{server.port}"
        response = httpx.post(server.base_url + V2_PATH, content=v2_body(state))
        assert xmltodict.parse(response.content)["xml"]["result_code"] == "SUCCESS"
        assert len(sandbox_threads() - preexisting) == 1
    assert sandbox_threads() == preexisting
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.base_url + "/", timeout=1)


def test_two_servers_side_by_side(emulator: Emulator) -> None:
    """Two servers of one emulator run at once on different ports."""
    with serve(emulator) as one, serve(emulator) as two:
        assert one.port != two.port
        assert httpx.get(one.base_url + "/nowhere").status_code == 404
        assert httpx.get(two.base_url + "/nowhere").status_code == 404


def test_stop_cuts_pending_delay_short(emulator: Emulator, state: SandboxState) -> None:
    """Leaving serve() ends a pending long delay: the waiting client gets the normal answer."""
    emulator.set_fault("v2", "1717", "delay", delay_s=600)
    result: dict[str, object] = {}
    with serve(emulator) as server:

        def call() -> None:
            with httpx.Client(timeout=60) as c:
                result["response"] = c.post(server.base_url + V2_PATH, content=v2_body(state))

        thread = threading.Thread(target=call)
        thread.start()
        wait_until(lambda: emulator.requests, "the call never reached the emulator")
    thread.join()
    response = result["response"]
    assert isinstance(response, httpx.Response)
    assert xmltodict.parse(response.content)["xml"]["result_code"] == "SUCCESS"


def test_reset_over_uvicorn_sends_no_answer(emulator: Emulator, state: SandboxState) -> None:
    """reset over uvicorn drops the connection with no byte of answer; the server carries on."""
    emulator.set_fault("v2", "1717", "reset", times=1)
    with serve(emulator) as server, httpx.Client(base_url=server.base_url) as c:
        with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
            c.post(V2_PATH, content=v2_body(state))
        assert c.post(V2_PATH, content=v2_body(state)).status_code == 200


def test_truncated_over_uvicorn(emulator: Emulator, state: SandboxState) -> None:
    """truncated over uvicorn: headers promise more than the body delivers."""
    emulator.set_fault("v2", "1717", "truncated", times=1)
    with serve(emulator) as server, httpx.Client(base_url=server.base_url) as c:
        with pytest.raises(httpx.RemoteProtocolError):
            c.post(V2_PATH, content=v2_body(state))
        assert c.post(V2_PATH, content=v2_body(state)).status_code == 200


def test_oversized_body_over_uvicorn(emulator: Emulator) -> None:
    """A request body above the read cap is not buffered and gets the v2 FAIL answer."""
    with serve(emulator) as server:
        response = httpx.post(server.base_url + V2_PATH, content=b"<xml>" + b"x" * 2_000_000)
    answer = xmltodict.parse(response.content)["xml"]
    assert answer["return_code"] == "FAIL"
    assert "too large" in answer["return_msg"]


# ----------------------------------------------------------------------------- admin


def test_admin_endpoint_from_loopback(emulator: Emulator, state: SandboxState) -> None:
    """POST arms a fault, GET lists faults and counts, DELETE clears them, over loopback."""
    with serve(emulator) as server, httpx.Client(base_url=server.base_url) as c:
        armed = c.post(
            "/__admin/faults",
            json={"side": "v2", "stock_id": "1717", "fault": "http_503", "times": 1},
        )
        assert armed.status_code == 201
        assert armed.json()["armed"]["fault"] == "http_503"
        assert c.post(V2_PATH, content=v2_body(state)).status_code == 503
        assert c.post(V2_PATH, content=v2_body(state)).status_code == 200
        c.post("/__admin/faults", json={"side": "v3", "stock_id": "*", "fault": "reset"})
        listing = c.get("/__admin/faults").json()
        assert listing["faults"] == [
            {"side": "v3", "stock_id": "*", "fault": "reset", "times": None, "delay_s": 1.0}
        ]
        assert listing["request_counts"] == {"v2": 2}
        assert c.delete("/__admin/faults").json() == {"cleared": 1}
        assert emulator.faults == []


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[]",
        b'{"side": "v2"}',
        b'{"side": "v2", "stock_id": "1", "fault": "stale_signature"}',
        b'{"side": "v2", "stock_id": "1", "fault": "http_500", "times": -1}',
        b'{"side": "v2", "stock_id": "1", "fault": "http_500", "colour": "red"}',
    ],
)
async def test_admin_rejects_bad_payloads(payload: bytes, emulator: Emulator) -> None:
    """The admin endpoint answers 400 PARAM_ERROR to bad fault specs and arms nothing."""
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=emulator.asgi_app), base_url="http://sandbox"
    ) as c:
        response = await c.post("/__admin/faults", content=payload)
    assert response.status_code == 400
    assert response.json()["code"] == "PARAM_ERROR"
    assert emulator.faults == []


async def test_admin_refuses_non_loopback_clients(emulator: Emulator) -> None:
    """A client that is not on loopback gets 403 and cannot arm faults."""
    transport = httpx.ASGITransport(app=emulator.asgi_app, client=("10.1.2.3", 4567))
    async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as c:
        response = await c.post(
            "/__admin/faults", json={"side": "v2", "stock_id": "*", "fault": "http_500"}
        )
        assert response.status_code == 403
        assert (await c.delete("/__admin/faults")).status_code == 403
    assert emulator.faults == []


def test_admin_via_mock_transport(emulator: Emulator) -> None:
    """The in-process transport reaches the admin endpoint too (it is local)."""
    with httpx.Client(transport=emulator.mock_transport(), base_url="http://sandbox") as c:
        response = c.post(
            "/__admin/faults", json={"side": "v3", "stock_id": "1757", "fault": "http_429"}
        )
    assert response.status_code == 201
    assert [f.fault for f in emulator.faults] == ["http_429"]


async def test_asgi_transport_reset_raises(emulator: Emulator, state: SandboxState) -> None:
    """Outside uvicorn, reset surfaces as SandboxConnectionDropped from the ASGI app."""
    emulator.set_fault("v2", "1717", "reset", times=1)
    transport = httpx.ASGITransport(app=emulator.asgi_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as c:
        with pytest.raises(sandbox.SandboxConnectionDropped):
            await c.post(V2_PATH, content=v2_body(state))


# ----------------------------------------------------------------------------- state & config


def test_state_is_reused(state: SandboxState) -> None:
    """load_or_create on an existing folder reuses the same keys and serials."""
    again = SandboxState.load_or_create(state.state_dir)
    assert again.platform_serial == state.platform_serial
    assert again.pub_key_id == state.pub_key_id
    for mchid, m in state.merchants.items():
        assert again.merchants[mchid].v2_key == m.v2_key
        assert again.merchants[mchid].cert_serial == m.cert_serial


def test_state_contents(state: SandboxState) -> None:
    """Keys have the promised shapes and secret files are 0600."""
    assert set(state.merchants) == {"10000098", "10000099"}
    assert state.merchants["10000098"].appid == "wx5edab3bdfba3dc1c"
    assert state.merchants["10000099"].appid == "wx2421b1c4370ec43b"
    assert state.merchants["10000098"].v2_sign_type == "MD5"
    assert state.merchants["10000099"].v2_sign_type == "HMAC-SHA256"
    assert re.fullmatch(r"PUB_KEY_ID_\d+", state.pub_key_id)
    assert re.fullmatch(r"[0-9A-F]{40}", state.platform_serial)
    assert state.platform_cert_path.name == f"{state.platform_serial}.pem"
    for m in state.merchants.values():
        assert len(m.v2_key) == 32
        assert len(m.apiv3_key) == 32
        assert re.fullmatch(r"[0-9A-F]{40}", m.cert_serial)
        assert m.private_key_pem.startswith("-----BEGIN PRIVATE KEY-----")
        for path in (m.v2_key_path, m.apiv3_key_path, m.private_key_path):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for secret in (state.state_dir / "emulator").iterdir():
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert state.pub_key_pem.startswith("-----BEGIN PUBLIC KEY-----")
    assert v2_key_not_in(repr(state), state)


def v2_key_not_in(text: str, state: SandboxState) -> bool:
    """No v2 key, APIv3 key or private key material appears in ``text``."""
    for m in state.merchants.values():
        if m.v2_key in text or m.apiv3_key in text or "PRIVATE KEY" in text:
            return False
    return True


def test_platform_certificate(state: SandboxState) -> None:
    """The platform certificate is self-signed RSA 2048, valid about five years."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import rsa

    cert = x509.load_pem_x509_certificate(state.platform_cert_pem.encode())
    key = cert.public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    assert key.key_size == 2048
    assert format(cert.serial_number, "X") == state.platform_serial
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    assert 5 * 365 <= days <= 5 * 365 + 2


@pytest.mark.parametrize("where", ["state", "elsewhere"])
def test_write_config(where: str, state: SandboxState, tmp_path: Path) -> None:
    """write_config gives TOML that parses and whose file references exist."""
    folder = state.state_dir if where == "state" else tmp_path / "conf"
    path = state.write_config(
        folder / "shim.toml",
        v2_base_url="http://127.0.0.1:1234",
        v3_base_url="http://127.0.0.1:5678/",
        mode="shadow",
    )
    config = tomllib.loads(path.read_text(encoding="utf-8"))
    assert config["upstream"]["v2_base_url"] == "http://127.0.0.1:1234"
    assert config["upstream"]["v3_base_url"] == "http://127.0.0.1:5678"
    assert config["routing"]["mode"] == "shadow"
    merchants = config["merchants"]
    assert set(merchants) == {"10000098", "10000099"}
    for mchid, entry in merchants.items():
        m = state.merchants[mchid]
        assert entry["appid"] == m.appid
        assert entry["v2_sign_type"] == m.v2_sign_type
        assert entry["v3_cert_serial"] == m.cert_serial
        for key in ("v2_key", "v3_private_key"):
            assert entry[key].startswith("file:")
            assert not Path(entry[key][5:]).is_absolute()
        assert (path.parent / entry["v2_key"][5:]).read_text().strip() == m.v2_key
        assert (path.parent / entry["v3_private_key"][5:]).read_text() == m.private_key_pem
    pk = merchants["10000098"]
    assert pk["wechatpay_public_key_id"] == state.pub_key_id
    assert (path.parent / pk["wechatpay_public_key"][5:]).read_text() == state.pub_key_pem
    assert "platform_cert_dir" not in pk
    pc = merchants["10000099"]
    assert "wechatpay_public_key" not in pc
    cert_dir = path.parent / pc["platform_cert_dir"]
    assert (cert_dir / f"{state.platform_serial}.pem").read_text() == state.platform_cert_pem
    assert v2_key_not_in(path.read_text(), state)


# ----------------------------------------------------------------------------- CLI runner


def test_run_forever_prints_and_writes_config(state: SandboxState, tmp_path: Path) -> None:
    """run_forever serves, writes shim.toml pointing at itself, prints no secret, and stops."""
    folder = tmp_path / "state"
    shutil.copytree(state.state_dir, folder, ignore=shutil.ignore_patterns("shim.toml*"))
    state = SandboxState.load_or_create(folder)
    lines: list[str] = []
    stop = threading.Event()
    thread = threading.Thread(
        target=run_forever,
        args=(state.state_dir, "127.0.0.1", 0, lines.append),
        kwargs={"stop_event": stop},
    )
    thread.start()
    try:
        wait_until(
            lambda: any(line.startswith("Press Ctrl+C") for line in lines) or not thread.is_alive(),
            "the sandbox never said it was listening",
            timeout=30,
        )
        assert thread.is_alive(), "the sandbox stopped"
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", lines[0])
        assert match
        base_url = match.group(1)
        config = tomllib.loads((state.state_dir / "shim.toml").read_text(encoding="utf-8"))
        assert config["upstream"]["v2_base_url"] == base_url
        response = httpx.post(base_url + V2_PATH, content=v2_body(state))
        assert xmltodict.parse(response.content)["xml"]["result_code"] == "SUCCESS"
    finally:
        stop.set()
        thread.join()
    output = "\n".join(lines)
    assert v2_key_not_in(output, state)
    for stock in SEEDED_STOCKS:
        assert stock.stock_id in output
    assert str(state.state_dir / "shim.toml") in output


def test_describe_stocks_lists_every_stock() -> None:
    """describe_stocks gives one line per seeded stock with its id, creator and status."""
    lines = describe_stocks()
    assert len(lines) == len(SEEDED_STOCKS)
    for line, stock in zip(lines, SEEDED_STOCKS, strict=True):
        assert line.startswith(stock.stock_id)
        assert stock.creator_mchid in line
        assert stock.status in line


def test_public_surface_is_sorted_and_complete() -> None:
    """shim.sandbox's __all__ is sorted, importable, and exports FAULT_KINDS."""
    assert sandbox.__all__ == sorted(sandbox.__all__, key=lambda n: (not n.isupper(), n))
    for name in sandbox.__all__:
        assert hasattr(sandbox, name), name
    assert sandbox.FAULT_KINDS is FAULT_KINDS

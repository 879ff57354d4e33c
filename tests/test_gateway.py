"""The gateway's own behaviour: refusals in v2's shapes, limits, passthrough, metrics, TLS.

Every gateway here is a real uvicorn server on 127.0.0.1 in front of the loopback emulator.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from structlog.testing import capture_logs

from shim import ConfigError, load_config
from shim.gateway import ACCESS_EVENT, REFUSALS, GatewaySettings, load_gateway_settings, running
from shim.sandbox import Emulator, SandboxState, billion_laughs_xml
from tests.gateway_support import (
    HMAC_MCH,
    MD5_MCH,
    QUERY_PATH,
    answer_verifies,
    parse_answer,
    request_fields,
    to_xml,
    v2_sign,
    write_config,
)
from tests.wait import wait_until


@pytest.fixture
def config(sandbox_state: SandboxState, server: Any, tmp_path: Path) -> Path:
    """A legacy-mode config in front of the loopback emulator."""
    return write_config(sandbox_state, tmp_path / "shim.toml", upstream_url=server.base_url)


@pytest.fixture
def gw(config: Path) -> Iterator[Any]:
    """A running gateway on that config."""
    with running(config) as running_gw:
        yield running_gw


def post(gw: Any, body: bytes, **kwargs: Any) -> httpx.Response:
    return httpx.post(gw.base_url + QUERY_PATH, content=body, timeout=20, **kwargs)


def refused(resp: httpx.Response, kind: str) -> dict[str, str]:
    """Assert a typed v2 refusal: status, FAIL shape, unsigned, X-Coupon-Shim-Error."""
    assert resp.status_code == REFUSALS[kind].status, (resp.status_code, resp.text)
    assert resp.headers["x-coupon-shim-error"] == kind
    assert resp.headers["content-type"].startswith("text/xml")
    answer = parse_answer(resp.content)
    assert answer["return_code"] == "FAIL" and answer["return_msg"]
    assert set(answer) == {"return_code", "return_msg"}  # unsigned, nothing echoed
    assert "Traceback" not in resp.text
    return answer


# ----------------------------------------------------------------------------- hostile input


def test_bad_sign_is_refused_before_any_upstream_call(
    gw: Any, sandbox_state: SandboxState, emulator: Emulator
) -> None:
    """A wrong sign (one changed field after signing) gets return_code=FAIL 签名错误, no call."""
    fields = request_fields(sandbox_state, MD5_MCH, "1757")
    fields["coupon_stock_id"] = "1717"
    before = emulator.request_counts
    answer = refused(post(gw, to_xml(fields)), "bad_sign")
    assert answer["return_msg"].startswith("签名错误")
    assert emulator.request_counts == before


def test_unsigned_request_is_refused(
    gw: Any, sandbox_state: SandboxState, emulator: Emulator
) -> None:
    """No sign at all: refused as an unsigned request."""
    fields = request_fields(sandbox_state, MD5_MCH, "1757")
    del fields["sign"]
    before = emulator.request_counts
    answer = refused(post(gw, to_xml(fields)), "missing_field")
    assert "sign" in answer["return_msg"]
    assert emulator.request_counts == before


def test_forged_mch_id(gw: Any, sandbox_state: SandboxState, emulator: Emulator) -> None:
    """An unknown mch_id is refused; a known one signed with another merchant's key is a bad
    sign; neither reaches WeChat Pay."""
    before = emulator.request_counts
    unknown = request_fields(sandbox_state, MD5_MCH, "1757")
    unknown["mch_id"] = "19999999"
    unknown["sign"] = v2_sign(unknown, sandbox_state.merchants[MD5_MCH].v2_key)
    refused(post(gw, to_xml(unknown)), "unknown_merchant")
    other = request_fields(sandbox_state, HMAC_MCH, "1757")
    other["mch_id"] = MD5_MCH  # claims merchant A, signed with merchant B's key
    other["sign"] = v2_sign(other, sandbox_state.merchants[HMAC_MCH].v2_key)
    refused(post(gw, to_xml(other)), "bad_sign")
    assert emulator.request_counts == before


def test_oversized_body(config: Path, sandbox_state: SandboxState, emulator: Emulator) -> None:
    """Bodies over max_request_bytes get 413 in v2 shape, declared or streamed (chunked)."""
    settings = load_gateway_settings(config).with_overrides(port=0, max_request_bytes=4096)
    fields = request_fields(sandbox_state, MD5_MCH, "1757", device_info="x" * 8000)
    with running(config, settings) as gw:
        refused(post(gw, to_xml(fields)), "too_large")

        def chunks() -> Iterator[bytes]:
            for _ in range(10):
                yield b"<xml>" + b" " * 1000

        refused(post(gw, chunks()), "too_large")  # type: ignore[arg-type]
    assert emulator.request_counts["v2"] == 0


@pytest.mark.parametrize(
    "body",
    [
        b"coupon_stock_id=1757&mch_id=10000098",
        b'{"coupon_stock_id": "1757"}',
        b"",
        b"<xml><mch_id>10000098</mch_id>",
        b"<root><mch_id>10000098</mch_id></root>",
        b"<xml><mch_id><x>1</x></mch_id></xml>",
        b'<xml><mch_id a="1">10000098</mch_id></xml>',
        b"<xml><mch_id>1</mch_id><mch_id>2</mch_id></xml>",
        b"<xml><mch_id>&unknown;</mch_id></xml>",
        b"\xff\xfe<\x00x\x00",
    ],
    ids=[
        "form",
        "json",
        "empty",
        "unclosed",
        "wrong-root",
        "nested",
        "attribute",
        "repeated",
        "undefined-entity",
        "garbage",
    ],
)
def test_non_xml_and_malformed_bodies(gw: Any, body: bytes, emulator: Emulator) -> None:
    """Anything but a flat <xml> of text elements gets XML格式错误, never a traceback."""
    answer = refused(post(gw, body), "bad_xml")
    assert answer["return_msg"].startswith("XML格式错误")
    assert emulator.request_counts["v2"] == 0


@pytest.mark.parametrize(
    "body",
    [
        billion_laughs_xml(),
        b'<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b"<xml><mch_id>&x;</mch_id></xml>",
        b'<!DOCTYPE xml SYSTEM "http://127.0.0.1:9/dtd"><xml><mch_id>1</mch_id></xml>',
        b"<!doctype xml><xml/>",
    ],
    ids=["billion-laughs", "external-entity", "external-dtd", "lowercase-doctype"],
)
def test_dtd_is_refused(gw: Any, body: bytes, emulator: Emulator) -> None:
    """DTDs and entity declarations are refused before parsing: no expansion, no fetch."""
    started = time.monotonic()
    answer = refused(post(gw, body), "bad_xml")
    assert "DTD" in answer["return_msg"]
    assert time.monotonic() - started < 5
    assert emulator.request_counts["v2"] == 0


def test_bad_sign_type_and_missing_fields(gw: Any, sandbox_state: SandboxState) -> None:
    """An unknown sign_type, a missing nonce_str and an invalid field value are refused."""
    key = sandbox_state.merchants[MD5_MCH].v2_key
    odd = request_fields(sandbox_state, MD5_MCH, "1757")
    odd["sign_type"] = "SHA1"
    refused(post(gw, to_xml(odd)), "bad_sign_type")
    no_nonce = request_fields(sandbox_state, MD5_MCH, "1757")
    del no_nonce["nonce_str"]
    no_nonce["sign"] = v2_sign(no_nonce, key)
    assert "nonce_str" in refused(post(gw, to_xml(no_nonce)), "missing_field")["return_msg"]
    bad_id = request_fields(sandbox_state, MD5_MCH, "17 57")
    assert "coupon_stock_id" in refused(post(gw, to_xml(bad_id)), "bad_input")["return_msg"]
    extra = request_fields(sandbox_state, MD5_MCH, "1757", openid="o123")
    assert "openid" in refused(post(gw, to_xml(extra)), "bad_input")["return_msg"]


def test_other_methods_and_paths(gw: Any) -> None:
    """GET on the query path is 405; any other path is 404 in v2 XML shape (no passthrough)."""
    resp = httpx.get(gw.base_url + QUERY_PATH)
    refused(resp, "method_not_allowed")
    assert resp.headers["allow"] == "POST"
    refused(httpx.post(gw.base_url + "/pay/unifiedorder", content=b"<xml/>"), "not_found")
    refused(httpx.get(gw.base_url + "/v3/marketing/favor/stocks/1757"), "not_found")


# ----------------------------------------------------------------------------- upstream failures


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        ("http_500", "upstream_error"),
        ("delay", "upstream_timeout"),
        ("reset", "upstream_error"),
        ("bad_signature", "upstream_signature"),
        ("malformed", "upstream_error"),
    ],
)
def test_upstream_failures_are_typed_fail_answers(
    sandbox_state: SandboxState,
    server: Any,
    emulator: Emulator,
    tmp_path: Path,
    fault: str,
    kind: str,
) -> None:
    """What the shim cannot serve becomes return_code=FAIL with the right status (502/504)."""
    cfg = write_config(
        sandbox_state,
        tmp_path / "shim.toml",
        upstream_url=server.base_url,
        upstream={"timeout_s": 0.3, "budget_s": 1.5},
        retry={"attempts": 1},
    )
    emulator.set_fault("v2", "1757", fault, delay_s=2.0)
    with running(cfg) as gw:
        answer = refused(post(gw, to_xml(request_fields(sandbox_state, MD5_MCH, "1757"))), kind)
    assert "[legacy]" in answer["return_msg"]
    key = sandbox_state.merchants[MD5_MCH].v2_key
    assert key not in answer["return_msg"]


def test_a_v2_business_error_is_an_answer(gw: Any, sandbox_state: SandboxState) -> None:
    """result_code=FAIL from v2 is passed on as v2 gave it (signed), HTTP 200."""
    resp = post(gw, to_xml(request_fields(sandbox_state, MD5_MCH, "404404")))
    assert resp.status_code == 200 and "x-coupon-shim-error" not in resp.headers
    answer = parse_answer(resp.content)
    assert answer["result_code"] == "FAIL" and answer["err_code"] == "COUPON_STOCK_NOT_FOUND"
    assert answer_verifies(answer, sandbox_state.merchants[MD5_MCH].v2_key)


# ----------------------------------------------------------------------------- limits


def test_concurrency_limit_answers_overloaded(
    config: Path, sandbox_state: SandboxState, emulator: Emulator
) -> None:
    """Over max_concurrency a call is refused at once (503, Retry-After), the slow one finishes."""
    settings = load_gateway_settings(config).with_overrides(port=0, max_concurrency=1)
    emulator.set_fault("v2", "1757", "delay", delay_s=1.0)
    body = to_xml(request_fields(sandbox_state, MD5_MCH, "1757"))
    with running(config, settings) as gw:
        results: list[httpx.Response] = []
        slow = threading.Thread(target=lambda: results.append(post(gw, body)))
        slow.start()
        wait_until(lambda: gw.app.in_flight >= 1, "the slow call never got in flight", timeout=5)
        started = time.monotonic()
        resp = post(gw, to_xml(request_fields(sandbox_state, MD5_MCH, "1717")))
        assert time.monotonic() - started < 0.5
        refused(resp, "overloaded")
        assert resp.headers["retry-after"] == "1"
        slow.join(10)
    assert parse_answer(results[0].content)["result_code"] == "SUCCESS"


# ----------------------------------------------------------------------------- passthrough


class _Upstream:
    """A plain upstream that echoes what it got, for passthrough checks."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, list[tuple[str, str]], bytes]] = []

        async def echo(request: Request) -> Response:
            body = await request.body()
            self.seen.append(
                (
                    request.method,
                    request.url.path + "?" + request.url.query,
                    request.headers.items(),
                    body,
                )
            )
            if request.url.path.endswith("/big"):
                return Response(b"x" * 200_000, 200, media_type="application/octet-stream")
            if request.url.path == "/slow":
                await asyncio.sleep(3)
            payload = gzip.compress(b"<xml><return_code>SUCCESS</return_code></xml>")
            return Response(
                payload,
                201,
                headers={"content-encoding": "gzip", "x-upstream": "yes", "set-cookie": "a=b"},
                media_type="text/xml",
            )

        app = Starlette(routes=[Route("/{path:path}", echo, methods=["GET", "POST", "PUT"])])
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, log_config=None, lifespan="off", http="h11", loop="asyncio")
        )
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self.sock = sock

    def __enter__(self) -> _Upstream:
        self.thread.start()
        wait_until(
            lambda: self.server.started or not self.thread.is_alive(), "upstream never started"
        )
        assert self.server.started, "the upstream server thread died"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def test_passthrough_streams_other_requests_unchanged(
    sandbox_state: SandboxState, tmp_path: Path
) -> None:
    """Method, path, query, headers and body go up as sent; status, headers and (compressed)
    body come back as sent; the query path is still the gateway's."""
    with _Upstream() as up:
        cfg = write_config(
            sandbox_state,
            tmp_path / "shim.toml",
            upstream_url=up.url,
            gateway={"passthrough": True},
            upstream={"max_body_bytes": 100_000, "timeout_s": 1.0},
        )
        with running(cfg) as gw, httpx.Client(base_url=gw.base_url, timeout=20) as http:
            resp = http.post(
                "/pay/orderquery?x=1&y=%20z",
                content=b"<xml><a>1</a></xml>",
                headers={"x-caller": "php", "authorization": "WECHATPAY2-SHA256-RSA2048 abc"},
            )
            assert resp.status_code == 201
            assert resp.headers["x-upstream"] == "yes" and resp.headers["set-cookie"] == "a=b"
            assert resp.headers["content-encoding"] == "gzip"
            assert parse_answer(resp.content)["return_code"] == "SUCCESS"  # httpx inflated it
            method, target, headers, body = up.seen[-1]
            assert (method, target, body) == (
                "POST",
                "/pay/orderquery?x=1&y=%20z",
                b"<xml><a>1</a></xml>",
            )
            sent = dict(headers)
            assert sent["x-caller"] == "php"
            assert sent["authorization"] == "WECHATPAY2-SHA256-RSA2048 abc"
            assert "accept-encoding" in sent and "user-agent" in sent  # the caller's, not ours
            assert sent["user-agent"].startswith("python-httpx")
            # the caps and timeouts hold on passthrough too
            refused_big = http.get("/v3/big")
            assert refused_big.status_code == 502
            assert refused_big.json()["code"] == "SYSTEM_ERROR"
            slow = http.get("/slow")
            assert (
                slow.status_code == 504
                and slow.headers["x-coupon-shim-error"] == "upstream_timeout"
            )
            too_big = http.put("/upload", content=b"x" * 70_000)
            assert too_big.status_code == 413


def test_passthrough_upstream_down(sandbox_state: SandboxState, tmp_path: Path) -> None:
    """A passthrough upstream that refuses connections gives a 502 v2 FAIL answer."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()
    cfg = write_config(
        sandbox_state, tmp_path / "shim.toml", upstream_url=dead, gateway={"passthrough": True}
    )
    with running(cfg) as gw:
        refused(httpx.post(gw.base_url + "/pay/orderquery", content=b"<xml/>"), "upstream_error")


# ----------------------------------------------------------------------------- health, metrics


def test_health_ready_and_metrics(gw: Any, sandbox_state: SandboxState) -> None:
    """/healthz is alive, /readyz reports the mode, /metrics is Prometheus text with counts."""
    assert httpx.get(gw.base_url + "/healthz").text == "ok\n"
    ready = httpx.get(gw.base_url + "/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert ready.json()["mode"] == "legacy"
    post(gw, to_xml(request_fields(sandbox_state, MD5_MCH, "1757")))
    post(gw, b"not xml")
    metrics = httpx.get(gw.base_url + "/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    from prometheus_client.parser import text_string_to_metric_families

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.text)
        for s in family.samples
    }
    ok = (
        "coupon_shim_gateway_requests_total",
        (("endpoint", "query"), ("kind", "answer"), ("status", "200")),
    )
    bad = (
        "coupon_shim_gateway_requests_total",
        (("endpoint", "query"), ("kind", "bad_xml"), ("status", "200")),
    )
    assert samples[ok] >= 1 and samples[bad] >= 1
    # the library's own metrics (shim.metrics), recorded by the gateway's shim, same scrape
    call = ("coupon_shim_calls_total", (("outcome", "success"), ("route", "legacy")))
    assert samples[call] >= 1
    assert ("coupon_shim_gateway_in_flight", ()) in samples


def test_readyz_is_503_while_draining(gw: Any) -> None:
    """Once draining begins, /readyz answers 503 while /healthz stays 200."""
    gw.app.begin_drain()
    ready = httpx.get(gw.base_url + "/readyz")
    assert ready.status_code == 503 and ready.json()["status"] == "draining"
    assert httpx.get(gw.base_url + "/healthz").status_code == 200


# ----------------------------------------------------------------------------- events, secrets


def test_access_events_are_redacted_and_carry_no_secret(
    gw: Any, sandbox_state: SandboxState
) -> None:
    """One access event per request with status and kind; no key or sign in any event or body."""
    m = sandbox_state.merchants[MD5_MCH]
    good = request_fields(sandbox_state, MD5_MCH, "1757")
    bad = dict(good, sign="0" * 32)
    texts: list[str] = []
    with capture_logs() as logs:
        texts.append(post(gw, to_xml(good)).text)
        texts.append(post(gw, to_xml(bad)).text)
        texts.append(post(gw, b"<xml>").text)
    access = [e for e in logs if e["event"] == ACCESS_EVENT]
    assert [(e["status"], e["kind"]) for e in access] == [
        (200, "answer"),
        (200, "bad_sign"),
        (200, "bad_xml"),
    ]
    assert access[0]["mch_id"] == MD5_MCH and access[0]["coupon_stock_id"] == "1757"
    texts += [repr(e) for e in logs]
    for text in texts:
        assert m.v2_key not in text
        assert good["sign"] not in text


def test_events_through_the_cli_redactor(
    gw: Any, sandbox_state: SandboxState, capsys: pytest.CaptureFixture[str]
) -> None:
    """With the CLI's logging (as coupon-shim serve runs), events are JSON and redacted."""
    import io

    # private: the event names and schema the assertions read
    from shim._events import configure_cli_logging

    stream = io.StringIO()
    configure_cli_logging("json", stream=stream)
    post(gw, to_xml(request_fields(sandbox_state, MD5_MCH, "1757")))
    structlog.reset_defaults()
    out = stream.getvalue()
    assert ACCESS_EVENT in out and '"status": 200' in out
    assert sandbox_state.merchants[MD5_MCH].v2_key not in out


# ----------------------------------------------------------------------------- TLS, settings


def test_tls(sandbox_state: SandboxState, server: Any, tmp_path: Path) -> None:
    """With ssl_certfile/ssl_keyfile the gateway serves HTTPS (uvicorn's TLS), verified by a CA."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "gw.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "gw.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    cfg = write_config(
        sandbox_state,
        tmp_path / "shim.toml",
        upstream_url=server.base_url,
        gateway={"ssl_certfile": "gw.pem", "ssl_keyfile": "gw.key", "port": 0},
    )
    with running(cfg) as gw:
        assert gw.base_url.startswith("https://")
        context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        with httpx.Client(verify=context, timeout=20) as http:
            resp = http.post(
                gw.base_url + QUERY_PATH,
                content=to_xml(request_fields(sandbox_state, MD5_MCH, "1757")),
            )
        assert parse_answer(resp.content)["result_code"] == "SUCCESS"
        with pytest.raises(httpx.ConnectError):
            httpx.get(gw.base_url + "/healthz")  # not trusted without the CA


def test_gateway_settings_defaults_and_errors(
    sandbox_state: SandboxState, server: Any, tmp_path: Path
) -> None:
    """Defaults bind loopback; bad [gateway] keys name the file and key; the library accepts
    the table."""
    cfg = write_config(sandbox_state, tmp_path / "shim.toml", upstream_url=server.base_url)
    d = load_gateway_settings(cfg)
    assert (d.host, d.port, d.workers, d.passthrough) == ("127.0.0.1", 8080, 1, False)
    assert d == GatewaySettings()
    for table, key in (
        ({"bogus": 1}, "gateway.bogus"),
        ({"port": 70000}, "gateway.port"),
        ({"max_concurrency": 0}, "gateway.max_concurrency"),
        ({"passthrough": "yes"}, "gateway.passthrough"),
        ({"ssl_certfile": "missing.pem"}, "gateway.ssl_certfile"),
        ({"ssl_cert_reqs": "sometimes"}, "gateway.ssl_cert_reqs"),
        ({"drain_timeout_s": -1}, "gateway.drain_timeout_s"),
    ):
        bad = write_config(
            sandbox_state, tmp_path / "bad.toml", upstream_url=server.base_url, gateway=table
        )
        with pytest.raises(ConfigError) as info:
            load_gateway_settings(bad)
        assert info.value.key == key and "bad.toml" in str(info.value)
    ok = write_config(
        sandbox_state, tmp_path / "ok.toml", upstream_url=server.base_url, gateway={"port": 9000}
    )
    assert load_config(ok).routing.mode == "legacy"  # the library ignores [gateway]
    assert "v2_key" not in repr(load_gateway_settings(ok))


# ----------------------------------------------------------------------------- deployment files


ROOT = Path(__file__).resolve().parents[1]


def _docker_json(line: str) -> list[str]:
    import json

    return list(json.loads(line.split(None, 1)[1]))


def test_dockerfile_runs_serve_as_non_root_with_a_healthcheck() -> None:
    """The image: slim base, a non-root USER, a HEALTHCHECK on /healthz, SIGTERM, and an
    ENTRYPOINT + CMD the real CLI parser accepts as a serve command bound for the container."""
    from shim.cli import build_parser

    text = (ROOT / "deploy" / "Dockerfile").read_text(encoding="utf-8")
    lines = [line.strip() for line in text.replace("\\\n", " ").splitlines()]
    froms = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert froms and all(base.startswith("python:3.11-slim") for base in froms)
    user = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert any(line.startswith("HEALTHCHECK") and "/healthz" in line for line in lines)
    assert "STOPSIGNAL SIGTERM" in lines
    entry = _docker_json(next(line for line in lines if line.startswith("ENTRYPOINT")))
    cmd = _docker_json(next(line for line in lines if line.startswith("CMD ")))
    assert entry[0] == "coupon-shim"
    args = build_parser().parse_args(entry[1:] + cmd)
    assert args.command == "serve" and args.host == "0.0.0.0" and args.port == 8080


def test_systemd_unit_runs_serve_and_drains() -> None:
    """The unit starts serve with options the CLI accepts, stops with SIGTERM to the
    supervisor (KillMode=mixed) and waits longer than the default drain budgets."""
    import shlex

    from shim.cli import build_parser

    text = (ROOT / "deploy" / "coupon-shim-gateway.service").read_text(encoding="utf-8")
    joined = text.replace("\\\n", " ")
    settings = dict(
        line.split("=", 1)
        for line in joined.splitlines()
        if "=" in line and not line.startswith("#")
    )
    argv = shlex.split(settings["ExecStart"])
    assert argv[0].endswith("/coupon-shim")
    args = build_parser().parse_args(argv[1:])
    assert args.command == "serve" and args.host == "127.0.0.1"
    assert settings["KillMode"] == "mixed" and settings["KillSignal"] == "SIGTERM"
    defaults = GatewaySettings()
    assert int(settings["TimeoutStopSec"]) > defaults.drain_delay_s + defaults.drain_timeout_s + 5
    assert settings["User"] != "root" and settings["NoNewPrivileges"] == "yes"


def test_config_reload_applies_without_restart(
    sandbox_state: SandboxState, server: Any, emulator: Emulator, tmp_path: Path
) -> None:
    """Editing shim.toml under a running gateway switches its routing within the reload
    interval, as in the library; a broken edit keeps the last good config."""
    from tests.gateway_support import set_key

    cfg = write_config(
        sandbox_state,
        tmp_path / "shim.toml",
        upstream_url=server.base_url,
        reload={"check_interval_s": 0.1},
    )
    body = to_xml(request_fields(sandbox_state, MD5_MCH, "1757"))
    with running(cfg) as gw:
        assert httpx.get(gw.base_url + "/readyz").json()["mode"] == "legacy"
        good = cfg.read_text(encoding="utf-8")
        cfg.write_text(set_key(good, "routing", "mode", "v3"), encoding="utf-8")
        wait_until(
            lambda: httpx.get(gw.base_url + "/readyz").json()["mode"] == "v3",
            "the gateway never reloaded to v3",
            interval=0.05,
        )
        before = emulator.request_counts["v3"]
        assert parse_answer(post(gw, body).content)["result_code"] == "SUCCESS"
        assert emulator.request_counts["v3"] == before + 1
        cfg.write_text("[routing]\nmode = 'sideways'\n", encoding="utf-8")
        time.sleep(0.5)
        assert httpx.get(gw.base_url + "/readyz").json()["mode"] == "v3"
        assert parse_answer(post(gw, body).content)["result_code"] == "SUCCESS"


class _CountingForwarder:
    """A loopback TCP forwarder in front of the emulator that counts the connections made."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.accepted = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for src, dst in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()


def test_connections_are_kept_alive_both_sides(
    sandbox_state: SandboxState, server: Any, emulator: Emulator, tmp_path: Path
) -> None:
    """Sequential calls reuse one upstream connection, and the caller's one stays open.

    A new upstream connection per call (or a caller connection closed after each answer)
    costs a TCP handshake per call on the latency the gateway adds. (``emulator``: its
    request counts are reset afterwards, for the tests that count.)
    """
    port = int(server.base_url.rsplit(":", 1)[1])
    forwarder = _CountingForwarder(port)
    try:
        cfg = write_config(
            sandbox_state,
            tmp_path / "shim.toml",
            upstream_url=f"http://127.0.0.1:{forwarder.port}",
        )
        with running(cfg) as gw, httpx.Client(base_url=gw.base_url, timeout=20) as http:
            ports = set()
            for _ in range(5):
                resp = http.post(
                    QUERY_PATH, content=to_xml(request_fields(sandbox_state, MD5_MCH, "1757"))
                )
                assert resp.status_code == 200
                key = sandbox_state.merchants[MD5_MCH].v2_key
                assert answer_verifies(parse_answer(resp.content), key)
                assert "close" not in resp.headers.get("connection", "")
                stream = resp.extensions["network_stream"]
                ports.add(stream.get_extra_info("client_addr")[1])
            assert len(ports) == 1  # the caller's connection was reused
            assert forwarder.accepted == 1  # so was the gateway's upstream one
    finally:
        forwarder.close()

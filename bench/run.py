"""The coupon-shim benchmark: the shim side by side with its floor and the wechatpayv3 SDK.

    python bench/run.py [--quick] [--out bench/results.json]

Starts the WeChat Pay emulator in separate processes (``bench/server.py``) on loopback, over
HTTP and over HTTPS (a throwaway CA made with ``trustme``), and measures in one run, with
warm-up and interleaved rounds (floor, shim, shim, floor, ...), medians and IQR:

a. shim v3 route (sync) vs the floor: one pooled ``httpx.Client`` + ``wechatpayv3.utils``
   signing + answer verification + JSON parse, written here;
b. shim v3 route vs ``wechatpayv3.WeChatPay.marketing_favor_stock_detail`` (HTTP, HTTPS);
c. the async twin at concurrency 1, 16 and 64 vs an async floor, calls per second;
d. shadow mode: the served answer's latency vs legacy mode's;
e. the shim's own CPU per call, network and RSA taken out, and a cProfile of it;
f. ``import shim`` time and memory after 10,000 calls.

Events are filtered at WARNING (as a production app would run) unless a row says
"events on" (the CLI's JSON renderer at INFO, written to /dev/null). It prints a table and
writes the figures, the targets and the machine to ``bench/results.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import json
import logging
import os
import platform
import pstats
import re
import secrets
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import structlog
import trustme
from wechatpayv3 import WeChatPay, WeChatPayType
from wechatpayv3.utils import load_private_key, load_public_key, rsa_sign, rsa_verify

import shim.client
import shim.v3
from shim import AsyncCouponStockShim, CouponStockShim
from shim.config import ShimConfig, load_config
from shim.events import configure_cli_logging
from shim.flow import HttpRequest, HttpResponse
from shim.sandbox import Emulator, SandboxState
from shim.transport import DeadlineTransport

HERE = Path(__file__).resolve().parent
MCH = "10000098"  # public-key mode, MD5 v2 key
STOCK = "1757"
LIMITS = shim.client.DEFAULT_LIMITS
PACED_GAP_S = 0.015
TARGETS = {
    "a_http": ("shim / floor, sync, HTTP", "<=", 1.10),
    "a_https": ("shim / floor, sync, HTTPS", "<=", 1.10),
    "b_https": ("wechatpayv3 SDK / shim, HTTPS", ">=", 2.0),
    "c_64": ("async shim / async floor calls/s, concurrency 64", ">=", 0.85),
    "d": ("shadow / legacy served latency", "<=", 1.10),
    "e": ("shim's own CPU per call, v3 route (us)", "<=", 150.0),
}


# --------------------------------------------------------------------------- statistics


def _q(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summary(values: list[float]) -> dict[str, float]:
    """Median, quartiles and IQR of a sample."""
    p25, p50, p75 = _q(values, 0.25), _q(values, 0.5), _q(values, 0.75)
    return {"median": p50, "p25": p25, "p75": p75, "iqr": p75 - p25, "n": len(values)}


def interleave(
    sides: dict[str, Callable[[], Any]],
    rounds: int,
    per_round: int,
    warmup: int,
    gap: Callable[[], Any] | None = None,
) -> dict[str, list[float]]:
    """Per-call latencies (ms) of each side, over interleaved rounds; the order alternates.

    ``gap`` (untimed) runs after every call of every side.
    """
    for fn in sides.values():
        for _ in range(warmup):
            fn()
            if gap is not None:
                gap()
    names = list(sides)
    out: dict[str, list[float]] = {name: [] for name in names}
    round_medians: dict[str, list[float]] = {name: [] for name in names}
    clock = time.perf_counter
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            fn = sides[name]
            lat = []
            for _ in range(per_round):
                t0 = clock()
                fn()
                lat.append((clock() - t0) * 1000.0)
                if gap is not None:
                    gap()
            out[name] += lat
            round_medians[name].append(statistics.median(lat))
    out.update({f"{name}/rounds": round_medians[name] for name in names})
    return out


def compare(
    lat: dict[str, list[float]], num: str, den: str
) -> tuple[float, dict[str, float], dict[str, float], list[float]]:
    """Ratio of pooled medians, both summaries, and the per-round ratios."""
    a, b = summary(lat[num]), summary(lat[den])
    per_round = [x / y for x, y in zip(lat[f"{num}/rounds"], lat[f"{den}/rounds"], strict=True)]
    return a["median"] / b["median"], a, b, per_round


# --------------------------------------------------------------------------- logging


_DEVNULL = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process


def events_filtered() -> None:
    """structlog as a production app at WARNING runs it: the shim's INFO event is dropped."""
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(_DEVNULL),
        cache_logger_on_first_use=False,
    )


def events_on() -> None:
    """Every event rendered: the CLI's JSON chain (with the redactor) at INFO, to /dev/null."""
    configure_cli_logging("json", stream=_DEVNULL, level=logging.INFO)


# --------------------------------------------------------------------------- environment


@dataclass
class Env:
    state: SandboxState
    work: Path
    ca_pem: Path
    ssl_ctx: ssl.SSLContext
    http_url: str
    https_url: str
    procs: list[subprocess.Popen[str]]

    def config(self, base_url: str, mode: str, name: str, **routing: Any) -> ShimConfig:
        path = self.state.write_config(
            self.work / f"{name}.toml", v2_base_url=base_url, v3_base_url=base_url, mode=mode
        )
        if routing:
            text = path.read_text()
            for key, value in routing.items():
                text = re.sub(rf"(?m)^{key} = .*$", f"{key} = {json.dumps(value)}", text)
            path.write_text(text)
        return load_config(path, env={})


def start_server(state_dir: Path, *tls: Path) -> tuple[subprocess.Popen[str], str]:
    cmd = [sys.executable, str(HERE / "server.py"), "--state-dir", str(state_dir)]
    if tls:
        cmd += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY "):
        proc.kill()
        raise RuntimeError(f"the emulator server did not start: {line!r}")
    return proc, line.split()[1]


@contextlib.contextmanager
def environment() -> Iterator[Env]:
    with tempfile.TemporaryDirectory(prefix="coupon-shim-bench-") as tmp:
        work = Path(tmp)
        state = SandboxState.load_or_create(work / "state")
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        ca_pem = work / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_pem))
        cert_pem, key_pem = work / "server.pem", work / "server.key"
        cert.cert_chain_pems[0].write_to_path(str(cert_pem))
        for extra in cert.cert_chain_pems[1:]:
            extra.write_to_path(str(cert_pem), append=True)
        cert.private_key_pem.write_to_path(str(key_pem))
        ctx = ssl.create_default_context(cafile=str(ca_pem))
        # requests (the SDK) reads this; the loopback must never go through a proxy.
        os.environ["REQUESTS_CA_BUNDLE"] = str(ca_pem)
        os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
        procs: list[subprocess.Popen[str]] = []
        try:
            http_proc, http_url = start_server(work / "state")
            procs.append(http_proc)
            https_proc, https_url = start_server(work / "state", cert_pem, key_pem)
            procs.append(https_proc)
            yield Env(state, work, ca_pem, ctx, http_url, https_url, procs)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()


# --------------------------------------------------------------------------- the floors


class _FloorBase:
    """The best a hand-written client does: sign, send, verify, parse. Nothing else."""

    def __init__(self, env: Env, base_url: str) -> None:
        merchant = env.state.merchants[MCH]
        self.base = base_url
        self.key = load_private_key(merchant.private_key_pem)
        self.pub = load_public_key(env.state.pub_key_pem)
        self.serial = merchant.cert_serial
        self.pub_id = env.state.pub_key_id
        self.path = f"/v3/marketing/favor/stocks/{STOCK}?stock_creator_mchid={MCH}"

    def headers(self) -> dict[str, str]:
        ts = str(int(time.time()))
        nonce = secrets.token_hex(16)
        sig = rsa_sign(self.key, f"GET\n{self.path}\n{ts}\n{nonce}\n\n")
        return {
            "Accept": "application/json",
            "Wechatpay-Serial": self.pub_id,
            "Authorization": (
                f'WECHATPAY2-SHA256-RSA2048 mchid="{MCH}",nonce_str="{nonce}",'
                f'signature="{sig}",timestamp="{ts}",serial_no="{self.serial}"'
            ),
        }

    def check(self, resp: httpx.Response) -> dict[str, Any]:
        h = resp.headers
        if resp.status_code != 200 or not rsa_verify(
            h["wechatpay-timestamp"],
            h["wechatpay-nonce"],
            resp.text,
            h["wechatpay-signature"],
            self.pub,
        ):
            raise RuntimeError("floor: bad answer")
        data: dict[str, Any] = json.loads(resp.content)
        return data


class Floor(_FloorBase):
    def __init__(self, env: Env, base_url: str, verify: Any = True) -> None:
        super().__init__(env, base_url)
        self.client = httpx.Client(verify=verify, limits=LIMITS)

    def call(self) -> dict[str, Any]:
        return self.check(self.client.get(self.base + self.path, headers=self.headers()))


class AsyncFloor(_FloorBase):
    def __init__(self, env: Env, base_url: str) -> None:
        super().__init__(env, base_url)
        self.client = httpx.AsyncClient(limits=LIMITS)

    async def call(self) -> dict[str, Any]:
        resp = await self.client.get(self.base + self.path, headers=self.headers())
        return self.check(resp)


def sdk_client(env: Env, base_url: str) -> Callable[[], Any]:
    merchant = env.state.merchants[MCH]
    pay = WeChatPay(
        wechatpay_type=WeChatPayType.NATIVE,
        mchid=MCH,
        private_key=merchant.private_key_pem,
        cert_serial_no=merchant.cert_serial,
        appid=merchant.appid,
        apiv3_key=merchant.apiv3_key,
        public_key=env.state.pub_key_pem,
        public_key_id=env.state.pub_key_id,
    )
    pay._core._gate_way = base_url

    def call() -> Any:
        code, text = pay.marketing_favor_stock_detail(stock_creator_mchid=MCH, stock_id=STOCK)
        if code != 200:
            raise RuntimeError(f"SDK: HTTP {code}")
        return json.loads(text)

    return call


def shim_call(s: CouponStockShim) -> Callable[[], Any]:
    def call() -> Any:
        answer = s.query_coupon_stock(STOCK, mch_id=MCH)
        if answer.get("result_code") != "SUCCESS":
            raise RuntimeError(f"shim: {answer}")
        return answer

    return call


# --------------------------------------------------------------------------- a, b


def bench_sync(env: Env, p: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for proto, url, verify in (
        ("http", env.http_url, True),
        ("https", env.https_url, env.ssl_ctx),
    ):
        cfg = env.config(url, "v3", f"v3-{proto}")
        # the shim's default sync path: its deadline-bound transport
        transport = DeadlineTransport(verify=verify, limits=LIMITS)
        shim_ = CouponStockShim(cfg, client=httpx.Client(transport=transport), env={})
        floor = Floor(env, url, verify)
        sides = {"floor": floor.call, "shim": shim_call(shim_)}
        lat = interleave(sides, p.rounds, p.per_round, p.warmup)
        ratio, s, f, per_round = compare(lat, "shim", "floor")
        out[f"a_{proto}"] = {
            "floor_ms": f,
            "shim_ms": s,
            "ratio": ratio,
            "round_ratios": summary(per_round),
        }
        # b: the SDK opens a connection (and on HTTPS a TLS handshake) per call.
        sdk = sdk_client(env, url)
        lat = interleave(
            {"sdk": sdk, "shim": shim_call(shim_)}, p.rounds, p.sdk_per_round, p.warmup // 2
        )
        ratio, d, s, per_round = compare(lat, "sdk", "shim")
        out[f"b_{proto}"] = {
            "sdk_ms": d,
            "shim_ms": s,
            "ratio": ratio,
            "round_ratios": summary(per_round),
        }
        # a with every event rendered (the CLI's JSON chain at INFO).
        if proto == "http":
            events_on()
            try:
                lat = interleave(sides, max(2, p.rounds // 2), p.per_round, p.warmup // 2)
            finally:
                events_filtered()
            ratio, s, f, per_round = compare(lat, "shim", "floor")
            out["a_http_events_on"] = {"floor_ms": f, "shim_ms": s, "ratio": ratio}
        shim_.close()
        shim_._client.close()
        floor.client.close()
    return out


# --------------------------------------------------------------------------- c


async def _throughput(call: Callable[[], Awaitable[Any]], conc: int, total: int) -> float:
    per = max(1, total // conc)

    async def worker() -> None:
        for _ in range(per):
            await call()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conc)))
    return per * conc / (time.perf_counter() - t0)


async def _bench_async(env: Env, p: argparse.Namespace) -> dict[str, Any]:
    cfg = env.config(env.http_url, "v3", "v3-async")
    ashim = AsyncCouponStockShim(cfg, env={})
    floor = AsyncFloor(env, env.http_url)

    async def shim_side() -> Any:
        answer = await ashim.query_coupon_stock(STOCK, mch_id=MCH)
        if answer.get("result_code") != "SUCCESS":
            raise RuntimeError(f"async shim: {answer}")
        return answer

    sides = {"floor": floor.call, "shim": shim_side}
    out: dict[str, Any] = {}
    for conc in (1, 16, 64):
        total = p.async_calls if conc > 1 else p.async_calls // 2
        for fn in sides.values():  # warm-up: open the connections
            await _throughput(fn, conc, conc * 2)
        rates: dict[str, list[float]] = {"floor": [], "shim": []}
        for r in range(p.async_rounds):
            for name in ("floor", "shim") if r % 2 == 0 else ("shim", "floor"):
                rates[name].append(await _throughput(sides[name], conc, total))
        f, s = summary(rates["floor"]), summary(rates["shim"])
        per_round = [a / b for a, b in zip(rates["shim"], rates["floor"], strict=True)]
        out[f"c_{conc}"] = {
            "floor_calls_s": f,
            "shim_calls_s": s,
            "ratio": s["median"] / f["median"],
            "round_ratios": summary(per_round),
        }
    await ashim.aclose()
    await floor.client.aclose()
    return out


def bench_async(env: Env, p: argparse.Namespace) -> dict[str, Any]:
    return asyncio.run(_bench_async(env, p))


# --------------------------------------------------------------------------- d


def bench_shadow(env: Env, p: argparse.Namespace) -> dict[str, Any]:
    legacy = CouponStockShim(env.config(env.http_url, "legacy", "legacy"), env={})
    shadow = CouponStockShim(env.config(env.http_url, "shadow", "shadow"), env={})
    sides = {"legacy": shim_call(legacy), "shadow": shim_call(shadow)}
    out: dict[str, Any] = {}

    # Paced: each call starts once the previous shadow comparison is done (untimed), as when
    # WeChat Pay runs on other machines. Back-to-back: the background v3 call's RSA work (in
    # this process and in the emulator) competes with the next served call for the 2 cores.
    def paced_gap() -> None:
        # The same idle gap after every call of both sides (an idle gap alone changes
        # latency on this machine), long enough for the shadow comparison to finish.
        until = time.perf_counter() + PACED_GAP_S
        shadow.wait_for_shadows(30)
        time.sleep(max(0.0, until - time.perf_counter()))

    for label, pace in (("paced", True), ("back_to_back", False)):
        gap = paced_gap if pace else None
        n = p.shadow_per_round if pace else p.per_round
        lat = interleave(sides, p.rounds, n, p.warmup // 2, gap=gap)
        shadow.wait_for_shadows(30)
        ratio, s, leg, per_round = compare(lat, "shadow", "legacy")
        out[f"d_{label}"] = {
            "legacy_ms": leg,
            "shadow_served_ms": s,
            "ratio": ratio,
            "round_ratios": summary(per_round),
        }
    out["d_shadow_totals"] = shadow.shadow_totals().as_dict()
    legacy.close()
    shadow.close()
    return out


# --------------------------------------------------------------------------- e


@contextlib.contextmanager
def canned_network(env: Env) -> Iterator[Callable[[], None]]:
    """Replace the driver with canned answers; yields ``stub_rsa()`` to call once recorded.

    The first call of each route goes to the emulator in-process (real RSA) and its answer is
    kept; every later call gets that answer back without any I/O. After ``stub_rsa()`` the
    shim's RSA signing and verification are constant-time stubs.
    """
    emulator = Emulator(env.state)
    canned: dict[str, HttpResponse] = {}
    fake_sig = "A" * 344

    def canned_driver(flow: Any, client: Any, clock: Any = time.monotonic, *_: Any) -> Any:
        try:
            step = next(flow)
            while True:
                assert isinstance(step, HttpRequest)
                if step.route not in canned:
                    with httpx.Client(transport=emulator.mock_transport()) as c:
                        resp = c.request(
                            step.method, step.url, headers=step.headers, content=step.body
                        )
                    canned[step.route] = HttpResponse(resp.status_code, resp.headers, resp.content)
                step = flow.send(canned[step.route])
        except StopIteration as done:
            return done.value

    def stub_rsa() -> None:
        shim.v3.rsa_sign = lambda key, message: fake_sig  # type: ignore[assignment]
        shim.v3.rsa_verify = lambda *a: True  # type: ignore[assignment]

    saved = (shim.client.run_sync, shim.v3.rsa_sign, shim.v3.rsa_verify)
    shim.client.run_sync = canned_driver  # type: ignore[assignment]
    try:
        yield stub_rsa
    finally:
        shim.client.run_sync, shim.v3.rsa_sign, shim.v3.rsa_verify = saved  # type: ignore[assignment]


def _per_call_us(fn: Callable[[], Any], n: int, batches: int) -> dict[str, float]:
    for _ in range(200):
        fn()
    samples = []
    gc.collect()
    for _ in range(batches):
        t0 = time.process_time()
        for _ in range(n):
            fn()
        samples.append((time.process_time() - t0) / n * 1e6)
    return summary(samples)


def bench_cpu(env: Env, p: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    url = "http://wechatpay.emulator"
    shims = {
        "v3": CouponStockShim(env.config(url, "v3", "cpu-v3"), env={}),
        "legacy": CouponStockShim(env.config(url, "legacy", "cpu-legacy"), env={}),
    }
    with canned_network(env) as stub_rsa:
        for s in shims.values():
            shim_call(s)()  # records the canned answers, real RSA
        stub_rsa()
        for route, s in shims.items():
            call = shim_call(s)
            out[f"e_{route}_us"] = _per_call_us(call, p.cpu_calls, p.cpu_batches)
            events_on()
            try:
                out[f"e_{route}_events_on_us"] = _per_call_us(call, p.cpu_calls, p.cpu_batches)
            finally:
                events_filtered()
        prof = cProfile.Profile()
        call = shim_call(shims["v3"])
        n = p.cpu_calls * 2
        prof.enable()
        for _ in range(n):
            call()
        prof.disable()
    stats = pstats.Stats(prof)
    rows = []
    for (file, line, func), (_cc, ncalls, tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        where = _short(file)
        rows.append(
            {
                "function": f"{where}:{line}({func})",
                "calls_per_call": round(ncalls / n, 2),
                "tottime_us": round(tt / n * 1e6, 2),
                "cumtime_us": round(ct / n * 1e6, 2),
            }
        )
    rows.sort(key=lambda r: r["tottime_us"], reverse=True)
    out["e_profile_top"] = rows[:15]
    out["e_profile_total_us"] = round(sum(r["tottime_us"] for r in rows), 2)
    for s in shims.values():
        s.close()
    return out


def _short(file: str) -> str:
    """A file name without machine paths: ``shim/flow.py``, ``httpx/_models.py``, ``~``."""
    if file.startswith("<") or file == "~":
        return file
    parts = Path(file).parts
    for anchor in ("site-packages", "lib"):
        if anchor in parts:
            i = len(parts) - 1 - parts[::-1].index(anchor)
            return "/".join(parts[i + 1 :])
    if "shim" in parts:
        return "/".join(parts[parts.index("shim") :])
    return Path(file).name


# --------------------------------------------------------------------------- f


def bench_import_memory(env: Env, p: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    exe = sys.executable
    cumulative = []
    for _ in range(5):
        proc = subprocess.run(
            [exe, "-X", "importtime", "-c", "import shim"], capture_output=True, text=True
        )
        for line in proc.stderr.splitlines():
            parts = [x.strip() for x in line.split("|")]
            if len(parts) == 3 and parts[2] == "shim":
                cumulative.append(int(parts[1]) / 1000.0)
    out["f_import_importtime_ms"] = summary(cumulative)

    def wall(code: str) -> list[float]:
        times = []
        for _ in range(7):
            t0 = time.perf_counter()
            subprocess.run([exe, "-c", code], check=True)
            times.append((time.perf_counter() - t0) * 1000.0)
        return times

    base, imp = wall("pass"), wall("import shim")
    out["f_import_wall_ms"] = statistics.median(imp) - statistics.median(base)
    out["f_python_startup_ms"] = statistics.median(base)

    emulator = Emulator(env.state)
    cfg = env.config("http://wechatpay.emulator", "v3", "mem")
    s = CouponStockShim(cfg, transport=emulator.mock_transport(), env={})
    call = shim_call(s)
    for _ in range(200):
        call()
    gc.collect()
    rss0 = _rss_kib()
    tracemalloc.start()
    snap0 = tracemalloc.take_snapshot()
    for _ in range(p.mem_calls):
        call()
    gc.collect()
    snap1 = tracemalloc.take_snapshot()
    _current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss1 = _rss_kib()
    growth = sum(stat.size_diff for stat in snap1.compare_to(snap0, "filename"))
    out["f_memory"] = {
        "calls": p.mem_calls,
        "rss_before_mib": round(rss0 / 1024, 1),
        "rss_after_mib": round(rss1 / 1024, 1),
        "rss_growth_mib": round((rss1 - rss0) / 1024, 2),
        "traced_growth_kib": round(growth / 1024, 1),
        "traced_peak_kib": round(peak / 1024, 1),
    }
    s.close()
    return out


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# --------------------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for dist in ("httpx", "wechatpayv3", "requests", "cryptography", "uvicorn", "structlog"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    return {
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "os": f"{platform.system()} {platform.release()}",
        "packages": versions,
    }


def verdicts(r: dict[str, Any]) -> dict[str, Any]:
    got = {
        "a_http": r["a_http"]["ratio"],
        "a_https": r["a_https"]["ratio"],
        "b_https": r["b_https"]["ratio"],
        "c_64": r["c_64"]["ratio"],
        "d": r["d_paced"]["ratio"],
        "e": r["e_v3_us"]["median"],
    }
    out = {}
    for key, (what, op, bound) in TARGETS.items():
        value = got[key]
        ok = value <= bound if op == "<=" else value >= bound
        out[key] = {"what": what, "value": round(value, 3), "target": f"{op} {bound}", "met": ok}
    return out


def table(r: dict[str, Any]) -> str:
    lines = []

    def row(label: str, value: str) -> None:
        lines.append(f"  {label:<48} {value}")

    def ms(s: dict[str, float]) -> str:
        return f"{s['median']:.3f} ms (IQR {s['iqr']:.3f})"

    lines.append("a. v3 route, sync, pooled: shim vs floor")
    for proto in ("http", "https"):
        a = r[f"a_{proto}"]
        row(f"{proto}: floor", ms(a["floor_ms"]))
        row(f"{proto}: shim", ms(a["shim_ms"]))
        row(
            f"{proto}: shim / floor",
            f"{a['ratio']:.3f}  (per-round IQR "
            f"{a['round_ratios']['p25']:.3f}-{a['round_ratios']['p75']:.3f})",
        )
    e = r["a_http_events_on"]
    row("http, events on: shim / floor", f"{e['ratio']:.3f}  (shim {ms(e['shim_ms'])})")
    lines.append("b. wechatpayv3 SDK (connection per call) vs shim")
    for proto in ("http", "https"):
        b = r[f"b_{proto}"]
        row(f"{proto}: SDK", ms(b["sdk_ms"]))
        row(f"{proto}: shim", ms(b["shim_ms"]))
        row(f"{proto}: SDK / shim", f"{b['ratio']:.2f}")
    lines.append("c. async, HTTP: calls per second")
    for conc in (1, 16, 64):
        c = r[f"c_{conc}"]
        row(
            f"concurrency {conc}: floor / shim / ratio",
            f"{c['floor_calls_s']['median']:.0f} / {c['shim_calls_s']['median']:.0f} / "
            f"{c['ratio']:.3f}",
        )
    lines.append("d. shadow mode (serve legacy, shadow v3) vs legacy mode, served latency")
    for label in ("paced", "back_to_back"):
        d = r[f"d_{label}"]
        row(f"{label}: legacy", ms(d["legacy_ms"]))
        row(f"{label}: shadow served", ms(d["shadow_served_ms"]))
        row(f"{label}: shadow / legacy", f"{d['ratio']:.3f}")
    lines.append("e. shim's own CPU per call (no network, RSA stubbed)")
    for key in ("e_v3_us", "e_v3_events_on_us", "e_legacy_us", "e_legacy_events_on_us"):
        s = r[key]
        row(key[2:-3].replace("_", " "), f"{s['median']:.1f} us (IQR {s['iqr']:.1f})")
    lines.append(f"  profile (v3 route, us per call, total {r['e_profile_total_us']}):")
    for p in r["e_profile_top"][:10]:
        lines.append(f"    {p['tottime_us']:>7.2f}  {p['function']}")
    lines.append("f. import and memory")
    row(
        "import shim (-X importtime, cumulative)", f"{r['f_import_importtime_ms']['median']:.0f} ms"
    )
    row("import shim (wall, minus python -c pass)", f"{r['f_import_wall_ms']:.0f} ms")
    m = r["f_memory"]
    row(
        f"after {m['calls']} calls (in-process)",
        f"RSS {m['rss_before_mib']} -> {m['rss_after_mib']} MiB, "
        f"traced growth {m['traced_growth_kib']} KiB",
    )
    lines.append("targets")
    for v in r["verdicts"].values():
        row(v["what"], f"{v['value']} {v['target']}  {'MET' if v['met'] else 'MISSED'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="coupon-shim benchmark")
    parser.add_argument("--quick", action="store_true", help="fewer rounds (about a minute)")
    parser.add_argument("--out", type=Path, default=HERE / "results.json")
    p = parser.parse_args(argv)
    scale = 0.4 if p.quick else 1.0
    p.rounds = 4 if p.quick else 8
    p.per_round = int(150 * scale)
    p.sdk_per_round = int(60 * scale)
    p.shadow_per_round = int(40 * scale)
    p.warmup = 60
    p.async_rounds = 3 if p.quick else 5
    p.async_calls = 192 if p.quick else 384
    p.cpu_calls = 1000 if p.quick else 2000
    p.cpu_batches = 5 if p.quick else 9
    p.mem_calls = 2000 if p.quick else 10_000

    events_filtered()
    started = time.perf_counter()
    results: dict[str, Any] = {"machine": machine(), "quick": p.quick}
    with environment() as env:
        for name, step in (
            ("a, b", bench_sync),
            ("c", bench_async),
            ("d", bench_shadow),
            ("e", bench_cpu),
            ("f", bench_import_memory),
        ):
            t0 = time.perf_counter()
            print(f"[{name}] ...", file=sys.stderr, flush=True)
            results.update(step(env, p))
            print(f"[{name}] {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["verdicts"] = verdicts(results)
    results["duration_s"] = round(time.perf_counter() - started, 1)
    results["command"] = "python bench/run.py" + (" --quick" if p.quick else "")
    print(table(results))
    p.out.write_text(json.dumps(_rounded(results), indent=2) + "\n")
    return 0


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


if __name__ == "__main__":
    sys.exit(main())

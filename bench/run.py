"""The coupon-shim benchmark: the shim side by side with its floor and the wechatpayv3 SDK.

    python bench/run.py [--quick] [--write | --out PATH] [--only a,c,...] [--table R1 R2 R3]

Starts the WeChat Pay emulator in separate processes (``bench/server.py``) on loopback, over
HTTP and over HTTPS (a throwaway CA made with ``trustme``), and measures in one run, with
warm-up and interleaved rounds (floor, shim, shim, floor, ...), medians and IQR:

a. shim v3 route (sync) vs the floor: one pooled ``httpx.Client`` + ``wechatpayv3.utils``
   signing + answer verification + JSON parse, written here;
b. shim v3 route vs ``wechatpayv3.WeChatPay.marketing_favor_stock_detail`` (HTTP, HTTPS);
c. the async twin at concurrency 1, 64, 256 and 1,024 vs an async floor, calls per second
   (single-flight off and no fallback: one route and its whole budget, as the floor has), and
   the sync twin from 64 threads vs the sync floor;
d. shadow mode: the served answer's latency vs legacy mode's;
e. the shim's own CPU per call, network and RSA taken out, and a cProfile of it;
g. a 10,000-merchant config: cold load, reload, own CPU per call, and the worst call stall
   while a 1,000-merchant file is rewritten and reloaded (with the GC pauses that bound it);
h. hot keys: 64 async callers over 10 stocks, single-flight on and off, a 1 s cache;
f. ``import shim`` time and memory after 10,000 calls.

Events are filtered at WARNING (as a production app would run) unless a row says
"events on" (the CLI's JSON renderer at INFO, written to /dev/null). It prints a table and
writes the figures, the targets and the machine to a file outside the checkout (the path is
printed), or to ``bench/results.json`` with ``--write``. ``--quick`` measures every row from
smaller samples (its 10,000-merchant row on 2,000 merchants), in about a minute.
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

# private: the client module, patched or read for its defaults
import shim._client

# private: the v3 protocol module, to sign or check v3 wire messages
import shim._v3
from shim import AsyncCouponStockShim, CouponStockShim, ShimConfig, load_config

# private: the event names and schema the assertions read
from shim._events import configure_cli_logging

# private: the sans-IO flow, driven directly with scripted answers
from shim._flow import HttpRequest, HttpResponse, header_map
from shim.sandbox import Emulator, SandboxState

HERE = Path(__file__).resolve().parent
MCH = "10000098"  # public-key mode, MD5 v2 key
STOCK = "1757"
LIMITS = shim._client.DEFAULT_LIMITS
PACED_GAP_S = 0.015
TARGETS = {
    "a_http": ("shim / floor, sync v3, HTTP", "<=", 1.05),
    "a_https": ("shim / floor, sync v3, HTTPS", "<=", 1.05),
    "b_https": ("wechatpayv3 SDK / shim, HTTPS", ">=", 2.0),
    "c_64": ("async shim / async floor calls/s, concurrency 64", ">=", 0.95),
    "c_256": ("async shim / async floor calls/s, concurrency 256", ">=", 0.95),
    "c_1024": ("async shim / async floor calls/s, concurrency 1,024", ">=", 0.95),
    "threads_64": ("sync shim / sync floor calls/s, 64 threads", ">=", 0.95),
    "e_v3": ("own CPU per call, v3, events filtered (us)", "<=", 100.0),
    "e_legacy": ("own CPU per call, legacy, events filtered (us)", "<=", 100.0),
    "e_v3_events": ("own CPU per call, v3, every event rendered (us)", "<=", 150.0),
    "e_legacy_events": ("own CPU per call, legacy, every event rendered (us)", "<=", 150.0),
    "hot_sf": ("hot keys, single-flight on / floor", ">=", 5.0),
    "hot_cache": ("hot keys, 1 s cache / floor", ">=", 20.0),
    "g_load_1000": ("config load, 1,000 merchants (s)", "<=", 1.0),
    "g_load_per_1000": ("config load of 10,000 merchants, per 1,000 (s)", "<=", 1.0),
    "g_stall": ("worst call stall during a 1,000-merchant reload (ms)", "<=", 10.0),
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

    def config(
        self,
        base_url: str,
        mode: str,
        name: str,
        *,
        single_flight_enabled: bool = True,
        cache_ttl_s: float = 0.0,
        **routing: Any,
    ) -> ShimConfig:
        path = self.state.write_config(
            self.work / f"{name}.toml", v2_base_url=base_url, v3_base_url=base_url, mode=mode
        )
        text = path.read_text()
        for key, value in routing.items():
            text = re.sub(rf"(?m)^{key} = .*$", f"{key} = {json.dumps(value)}", text)
        head, sep, rest = text.partition("[merchants.")
        head += f"[single_flight]\nenabled = {json.dumps(single_flight_enabled)}\n\n"
        head += f"[cache]\nttl_s = {cache_ttl_s}\n\n"
        path.write_text(head + sep + rest)
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
        # requests (the SDK) reads this, the shim's own client (httpx's SSL context) the
        # next; the loopback must never go through a proxy.
        os.environ["REQUESTS_CA_BUNDLE"] = str(ca_pem)
        os.environ["SSL_CERT_FILE"] = str(ca_pem)
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

    def headers(self, path: str | None = None) -> dict[str, str]:
        ts = str(int(time.time()))
        nonce = secrets.token_hex(16)
        sig = rsa_sign(self.key, f"GET\n{path or self.path}\n{ts}\n{nonce}\n\n")
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

    async def call_stock(self, stock: str) -> dict[str, Any]:
        path = f"/v3/marketing/favor/stocks/{stock}?stock_creator_mchid={MCH}"
        resp = await self.client.get(self.base + path, headers=self.headers(path))
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
        # the shim's default sync path: its own deadline-bound pool (trusting the bench CA
        # through SSL_CERT_FILE, as a deployment would its own)
        shim_ = CouponStockShim(cfg, env={})
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
        floor.client.close()
    return out


# --------------------------------------------------------------------------- c


@dataclass
class Tally:
    """What one throughput run saw: successes, typed errors by kind, the slowest call."""

    ok: int = 0
    errors: dict[str, int] | None = None
    worst_s: float = 0.0
    wall_s: float = 0.0

    @property
    def calls_s(self) -> float:
        return self.ok / self.wall_s if self.wall_s else 0.0

    def failed(self, exc: BaseException) -> None:
        kind = getattr(exc, "kind", None) or type(exc).__name__
        self.errors = self.errors or {}
        self.errors[kind] = self.errors.get(kind, 0) + 1


async def _throughput(call: Callable[[int], Awaitable[Any]], conc: int, total: int) -> Tally:
    """``total`` calls from ``conc`` tasks at once; call ``i`` gets its index."""
    per = max(1, total // conc)
    tally = Tally()
    clock = time.perf_counter

    async def worker(w: int) -> None:
        for k in range(per):
            t0 = clock()
            try:
                await call(w * per + k)
                tally.ok += 1
            except Exception as exc:  # counted, never hidden
                tally.failed(exc)
            tally.worst_s = max(tally.worst_s, clock() - t0)

    t0 = clock()
    await asyncio.gather(*(worker(w) for w in range(conc)))
    tally.wall_s = clock() - t0
    return tally


def _tallies(rows: list[Tally]) -> dict[str, Any]:
    return {
        "calls_s": summary([t.calls_s for t in rows]),
        "ok": sum(t.ok for t in rows),
        "errors": {
            k: sum((t.errors or {}).get(k, 0) for t in rows)
            for k in sorted({k for t in rows for k in (t.errors or {})})
        },
        "worst_call_s": max(t.worst_s for t in rows),
    }


def _breakers_open(s: Any) -> int:
    return sum(1 for b in s._breakers.values() if b.state != "closed")


async def _bench_async(env: Env, p: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    budget = 10.0
    # The floor has one route and no budget: the shim runs the same single route with its
    # whole budget (no fallback to reserve half of it for), so queueing is what is compared.
    cfg = env.config(
        env.http_url, "v3", "v3-async", single_flight_enabled=False, fallback_to_legacy=False
    )
    ashim = AsyncCouponStockShim(cfg, env={})
    floor = AsyncFloor(env, env.http_url)

    async def shim_side(_: int) -> Any:
        answer = await ashim.query_coupon_stock(STOCK, mch_id=MCH)
        if answer.get("result_code") != "SUCCESS":
            raise RuntimeError(f"async shim: {answer}")
        return answer

    async def floor_side(_: int) -> Any:
        return await floor.call()

    sides = {"floor": floor_side, "shim": shim_side}
    for conc in (1, 64, 256, 1024):
        total = max(conc, p.async_calls if conc <= 64 else conc * p.async_per_task)
        if conc == 1 or not p.quick:  # --quick warms up once, for every level
            warm = 64 if p.quick else min(conc, 64)
            for fn in sides.values():  # warm-up: open the connections
                await _throughput(fn, warm, warm * 2)
        runs: dict[str, list[Tally]] = {"floor": [], "shim": []}
        rounds = p.async_rounds if conc <= 64 else p.async_big_rounds
        for r in range(rounds):
            for name in ("floor", "shim") if r % 2 == 0 else ("shim", "floor"):
                runs[name].append(await _throughput(sides[name], conc, total))
        f, sh = _tallies(runs["floor"]), _tallies(runs["shim"])
        per_round = [
            a.calls_s / b.calls_s for a, b in zip(runs["shim"], runs["floor"], strict=True)
        ]
        out[f"c_{conc}"] = {
            "floor": f,
            "shim": sh,
            "ratio": sh["calls_s"]["median"] / f["calls_s"]["median"],
            "round_ratios": per_round,
            "shim_within_budget": sh["worst_call_s"] <= budget,
            "breakers_open_after": _breakers_open(ashim),
        }
    await ashim.aclose()
    await floor.client.aclose()
    return out


def bench_async(env: Env, p: argparse.Namespace) -> dict[str, Any]:
    return asyncio.run(_bench_async(env, p))


def bench_threads(env: Env, p: argparse.Namespace) -> dict[str, Any]:
    """The sync twin from 64 threads vs the sync floor from 64 threads, calls per second."""
    from concurrent.futures import ThreadPoolExecutor

    cfg = env.config(
        env.http_url, "v3", "v3-threads", single_flight_enabled=False, fallback_to_legacy=False
    )
    s = CouponStockShim(cfg, env={})
    floor = Floor(env, env.http_url)
    sides = {"floor": floor.call, "shim": shim_call(s)}
    threads, total = 64, p.thread_calls

    def run(fn: Callable[[], Any]) -> Tally:
        tally = Tally()
        lock = __import__("threading").Lock()

        def one(_: int) -> None:
            t0 = time.perf_counter()
            try:
                fn()
                ok = True
            except Exception as exc:
                ok = False
                with lock:
                    tally.failed(exc)
            took = time.perf_counter() - t0
            with lock:
                tally.ok += ok
                tally.worst_s = max(tally.worst_s, took)

        t0 = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, range(total)))
        tally.wall_s = time.perf_counter() - t0
        return tally

    for fn in sides.values():
        run(fn)  # warm-up (connections)
    runs: dict[str, list[Tally]] = {"floor": [], "shim": []}
    for r in range(p.async_rounds):
        for name in ("floor", "shim") if r % 2 == 0 else ("shim", "floor"):
            runs[name].append(run(sides[name]))
    f, sh = _tallies(runs["floor"]), _tallies(runs["shim"])
    out = {
        "threads_64": {
            "floor": f,
            "shim": sh,
            "ratio": sh["calls_s"]["median"] / f["calls_s"]["median"],
            "breakers_open_after": _breakers_open(s),
        }
    }
    s.close()
    floor.client.close()
    return out


# --------------------------------------------------------------------------- hot keys

HOT_STOCKS = (
    "1717",
    "1757",
    "9856000",
    "9856001",
    "9856002",
    "9856003",
    "9856010",
    "9856011",
    "9856020",
    "9856030",
)


async def _bench_hot(env: Env, p: argparse.Namespace) -> dict[str, Any]:
    """64 callers over 10 hot stocks: single-flight on and off, a 1 s cache, vs the floor."""
    floor = AsyncFloor(env, env.http_url)
    shims = {
        "single_flight_on": AsyncCouponStockShim(env.config(env.http_url, "v3", "hot-on"), env={}),
        "single_flight_off": AsyncCouponStockShim(
            env.config(env.http_url, "v3", "hot-off", single_flight_enabled=False), env={}
        ),
        "cache_1s": AsyncCouponStockShim(
            env.config(env.http_url, "v3", "hot-cache", cache_ttl_s=1.0), env={}
        ),
    }

    def shim_side(s: AsyncCouponStockShim) -> Callable[[int], Awaitable[Any]]:
        async def call(i: int) -> Any:
            answer = await s.query_coupon_stock(HOT_STOCKS[i % 10], mch_id=MCH)
            if answer.get("return_code") != "SUCCESS":
                raise RuntimeError(f"hot shim: {answer}")
            return answer

        return call

    async def floor_side(i: int) -> Any:
        return await floor.call_stock(HOT_STOCKS[i % 10])

    sides: dict[str, Callable[[int], Awaitable[Any]]] = {"floor": floor_side}
    sides.update({name: shim_side(s) for name, s in shims.items()})
    conc, total = 64, p.hot_calls
    for fn in sides.values():
        await _throughput(fn, conc, conc * 2)
    runs: dict[str, list[Tally]] = {name: [] for name in sides}
    for r in range(p.async_rounds):
        order = list(sides) if r % 2 == 0 else list(sides)[::-1]
        for name in order:
            runs[name].append(await _throughput(sides[name], conc, total))
    f = _tallies(runs["floor"])
    out: dict[str, Any] = {"hot_floor": f}
    for name in shims:
        t = _tallies(runs[name])
        out[f"hot_{name}"] = {
            **t,
            "ratio": t["calls_s"]["median"] / f["calls_s"]["median"],
            "round_ratios": [
                a.calls_s / b.calls_s for a, b in zip(runs[name], runs["floor"], strict=True)
            ],
        }
    out["hot_single_flight_on"]["coalescing"] = shims["single_flight_on"]._flights.stats.snapshot()
    out["hot_cache_1s"]["cache"] = shims["cache_1s"]._cache.stats.snapshot()
    for s in shims.values():
        await s.aclose()
    await floor.client.aclose()
    return out


def bench_hot(env: Env, p: argparse.Namespace) -> dict[str, Any]:
    return asyncio.run(_bench_hot(env, p))


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
                    canned[step.route] = HttpResponse(
                        resp.status_code, header_map(resp.headers.multi_items()), resp.content
                    )
                step = flow.send(canned[step.route])
        except StopIteration as done:
            return done.value

    def stub_rsa() -> None:
        shim._v3.rsa_sign = lambda key, message: fake_sig  # type: ignore[assignment]
        shim._v3.rsa_verify = lambda *a: True  # type: ignore[assignment]

    saved = (shim._client.run_sync, shim._v3.rsa_sign, shim._v3.rsa_verify)
    shim._client.run_sync = canned_driver  # type: ignore[assignment]
    try:
        yield stub_rsa
    finally:
        shim._client.run_sync, shim._v3.rsa_sign, shim._v3.rsa_verify = saved  # type: ignore[assignment]


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
    """A file name without machine paths: ``shim/_flow.py``, ``httpx/_models.py``, ``~``."""
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


# --------------------------------------------------------------------------- config scale


def _many_merchants(env: Env, n: int, name: str, interval_s: float = 2.0) -> Path:
    """A config of ``n`` merchants (v3 credentials from the sandbox's key files, shared)."""
    base = env.state.write_config(
        env.work / f"{name}-base.toml", v2_base_url=URL, v3_base_url=URL, mode="v3"
    )
    text = base.read_text().replace("check_interval_s = 2.0", f"check_interval_s = {interval_s}")
    head, first = text.split(f'[merchants."{MCH}"]', 1)
    block = first.split("[merchants.", 1)[0]
    ids = [MCH] + [str(30_000_000 + i) for i in range(n - 1)]
    path = env.work / f"{name}.toml"
    path.write_text(head + "".join(f'[merchants."{m}"]' + block for m in ids))
    return path


URL = "http://wechatpay.emulator"


def _cold_load_s(path: Path) -> float:
    """Load ``path`` in a fresh interpreter (no key parsed yet): seconds."""
    code = (
        "import time,sys;from shim import load_config;t=time.perf_counter();"
        f"c=load_config({str(path)!r},env={{}});print(time.perf_counter()-t, len(c.merchants))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    took, count = proc.stdout.split()
    assert int(count) > 0
    return float(took)


def bench_config(env: Env, p: argparse.Namespace) -> dict[str, Any]:
    """10,000 merchants: load cost; per-call cost by merchant count; call stall during reloads."""
    import threading

    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
        load_pem_private_key,
    )

    # private: secret and key loading, tested directly
    from shim import _secrets as shim_secrets

    out: dict[str, Any] = {}
    big = _many_merchants(env, p.big_merchants, "m-big")
    loads = [_cold_load_s(big) for _ in range(p.config_runs)]
    out["g_big_merchants"] = p.big_merchants
    out["g_load_10000_s"] = summary(loads)
    out["g_load_per_1000_s"] = summary([x / (p.big_merchants / 1000) for x in loads])
    thousand = _many_merchants(env, 1_000, "m1000")
    out["g_load_1000_s"] = summary([_cold_load_s(thousand) for _ in range(p.config_runs)])
    t0 = time.perf_counter()
    load_config(big, env={})
    out["g_reload_10000_warm_s"] = time.perf_counter() - t0
    # What one distinct key costs once: the shim's check vs OpenSSL's full validation.
    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
    )
    t0 = time.perf_counter()
    shim_secrets.check_private_key(pem)
    out["g_key_check_ms"] = (time.perf_counter() - t0) * 1000
    t0 = time.perf_counter()
    load_pem_private_key(pem, password=None)
    out["g_key_openssl_validation_ms"] = (time.perf_counter() - t0) * 1000

    # Per-call CPU does not depend on the merchant count (canned network, RSA stubbed).
    with canned_network(env) as stub_rsa:
        small = CouponStockShim(env.config(URL, "v3", "cpu-small"), env={})
        large = CouponStockShim(load_config(big, env={}), env={})
        for s in (small, large):
            shim_call(s)()
        stub_rsa()
        out["g_cpu_2_merchants_us"] = _per_call_us(shim_call(small), p.cpu_calls, p.cpu_batches)
        out["g_cpu_10000_merchants_us"] = _per_call_us(shim_call(large), p.cpu_calls, p.cpu_batches)
        for s in (small, large):
            s.close()
        # The stall row is about a process serving the 1,000-merchant config: the big
        # config above is dropped first (a full garbage collection walks every live object,
        # and would stall calls for as long whatever triggered it).
        del small, large
        gc.collect()

        # Worst call stall while a 1,000-merchant file is rewritten and reloaded.
        watched = _many_merchants(env, 1_000, "reload", interval_s=0.05)
        live = CouponStockShim.from_file(watched, env={})
        call = shim_call(live)
        call()
        swaps: list[float] = []
        live._live.on_reload(lambda old, new: swaps.append(time.perf_counter()))
        stop = threading.Event()
        samples: list[tuple[float, float]] = []
        # The CPU the reloading thread used within each call: the GIL it held while the
        # call waited, whatever else the machine was running (a load-independent stall).
        (watcher,) = [t for t in threading.enumerate() if t.name == "coupon-shim-config-watcher"]
        watcher_cpu = time.pthread_getcpuclockid(watcher.ident or 0)
        held: list[tuple[float, float]] = []

        def caller() -> None:
            clock, cpu = time.perf_counter, time.clock_gettime
            while not stop.is_set():
                w0 = cpu(watcher_cpu)
                t0 = clock()
                call()
                samples.append((t0, clock() - t0))
                held.append((t0, cpu(watcher_cpu) - w0))

        pauses: list[tuple[int, float, float]] = []  # (generation, start, seconds)
        gc_started = [0.0]

        def gc_watch(phase: str, info: dict[str, Any]) -> None:
            now = time.perf_counter()
            if phase == "start":
                gc_started[0] = now
            else:
                pauses.append((info["generation"], gc_started[0], now - gc_started[0]))

        gc.callbacks.append(gc_watch)
        worker = threading.Thread(target=caller)
        worker.start()
        time.sleep(0.5)
        quiet_end = time.perf_counter()
        text = watched.read_text()
        windows = []
        rewrites = []  # then reloads that change every merchant's text: all parsed again
        first_swaps = 0
        for k in range(2 * p.reloads):
            before = len(swaps)
            if k == p.reloads:
                first_swaps = before
            new_text = text.replace("sample_ratio = 1.0", f"sample_ratio = {0.5 + k / 100}")
            if k >= p.reloads:
                new_text = new_text.replace('"]\nappid', f'"]  # revision {k}\nappid')
            tmp = watched.with_suffix(".tmp")
            tmp.write_text(new_text)
            started = time.perf_counter()
            os.replace(tmp, watched)
            end = time.perf_counter() + 10
            while len(swaps) == before and time.perf_counter() < end:
                time.sleep(0.005)
            window = (started, swaps[-1] if len(swaps) > before else time.perf_counter())
            (windows if k < p.reloads else rewrites).append(window)
            time.sleep(0.3)
        stop.set()
        worker.join(10)
        gc.callbacks.remove(gc_watch)
        live.close()
    quiet = [lat for t0, lat in samples if t0 < quiet_end]
    during = [
        lat
        for t0, lat in samples
        if any(a - 0.05 <= t0 <= b + 0.01 for a, b in windows)  # a call overlapping a reload
    ]
    rewriting = [lat for t0, lat in samples if any(a - 0.05 <= t0 <= b + 0.01 for a, b in rewrites)]
    out["g_reload_1000"] = {
        "reloads": p.reloads,
        "swapped": first_swaps,
        "full_rewrite_swapped": len(swaps) - first_swaps,
        "full_rewrite_reload_s": summary([b - a for a, b in rewrites]),
        "worst_call_during_full_rewrite_ms": max(rewriting) * 1000 if rewriting else float("nan"),
        "worst_reload_cpu_within_one_call_ms": max(
            (w * 1000 for t0, w in held if any(a - 0.05 <= t0 <= b + 0.01 for a, b in windows)),
            default=float("nan"),
        ),
        "worst_reload_cpu_within_one_call_full_rewrite_ms": max(
            (w * 1000 for t0, w in held if any(a - 0.05 <= t0 <= b + 0.01 for a, b in rewrites)),
            default=float("nan"),
        ),
        "reload_s": summary([b - a for a, b in windows]),
        "call_median_ms": statistics.median([lat for _, lat in samples]) * 1000,
        "worst_call_quiet_ms": max(quiet) * 1000,
        "worst_call_during_reload_ms": max(during) * 1000 if during else float("nan"),
        "calls_during_reloads": len(during),
        # what bounds the stall: the longest garbage collection during the reloads
        "worst_gc_during_reload_ms": max(
            (d * 1000 for _, t0, d in pauses if any(a - 0.05 <= t0 <= b for a, b in windows)),
            default=0.0,
        ),
        "full_collections_during_reloads": sum(
            1 for g, t0, _ in pauses if g == 2 and any(a - 0.05 <= t0 <= b for a, b in windows)
        ),
        "worst_gc_during_full_rewrite_ms": max(
            (d * 1000 for _, t0, d in pauses if any(a - 0.05 <= t0 <= b for a, b in rewrites)),
            default=0.0,
        ),
        "full_collections_during_full_rewrites": sum(
            1 for g, t0, _ in pauses if g == 2 and any(a - 0.05 <= t0 <= b for a, b in rewrites)
        ),
    }
    return out


# --------------------------------------------------------------------------- f


def bench_import_memory(env: Env, p: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    exe = sys.executable
    cumulative = []
    for _ in range(p.import_runs):
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
        for _ in range(p.import_runs):
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
        "c_256": r["c_256"]["ratio"],
        "c_1024": r["c_1024"]["ratio"],
        "threads_64": r["threads_64"]["ratio"],
        "e_v3": r["e_v3_us"]["median"],
        "e_legacy": r["e_legacy_us"]["median"],
        "e_v3_events": r["e_v3_events_on_us"]["median"],
        "e_legacy_events": r["e_legacy_events_on_us"]["median"],
        "hot_sf": r["hot_single_flight_on"]["ratio"],
        "hot_cache": r["hot_cache_1s"]["ratio"],
        "g_load_1000": r["g_load_1000_s"]["median"],
        "g_load_per_1000": r["g_load_per_1000_s"]["median"],
        "g_stall": r["g_reload_1000"]["worst_call_during_reload_ms"]
        - r["g_reload_1000"]["call_median_ms"],
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
        lines.append(f"  {label:<52} {value}")

    def ms(s: dict[str, float]) -> str:
        return f"{s['median']:.3f} ms (IQR {s['iqr']:.3f})"

    m = r["machine"]
    lines.append(
        f"machine: {m['cpu']}, {m['cores']} cores, {m['implementation']} {m['python']}, "
        f"load average {m['load_average_at_start']} -> {m.get('load_average_at_end')}"
    )
    lines.append("a. v3 route, sync, pooled: shim vs floor")
    for proto in ("http", "https"):
        a = r[f"a_{proto}"]
        row(f"{proto}: floor / shim", f"{ms(a['floor_ms'])} / {ms(a['shim_ms'])}")
        row(
            f"{proto}: shim / floor",
            f"{a['ratio']:.3f}  (per-round IQR "
            f"{a['round_ratios']['p25']:.3f}-{a['round_ratios']['p75']:.3f})",
        )
    e = r["a_http_events_on"]
    row("http, events on: shim / floor", f"{e['ratio']:.3f}")
    lines.append("b. wechatpayv3 SDK (connection per call) vs shim")
    for proto in ("http", "https"):
        b = r[f"b_{proto}"]
        row(f"{proto}: SDK / shim", f"{ms(b['sdk_ms'])} / {ms(b['shim_ms'])} = {b['ratio']:.2f}")
    lines.append("c. async, HTTP, single-flight off: successful calls per second")
    for conc in (1, 64, 256, 1024):
        c = r[f"c_{conc}"]
        row(
            f"concurrency {conc}: floor / shim / ratio",
            f"{c['floor']['calls_s']['median']:.0f} / {c['shim']['calls_s']['median']:.0f} / "
            f"{c['ratio']:.3f}; shim errors {c['shim']['errors'] or 0}, floor errors "
            f"{c['floor']['errors'] or 0}; slowest shim call {c['shim']['worst_call_s']:.2f} s; "
            f"breakers open {c['breakers_open_after']}",
        )
    t = r["threads_64"]
    row(
        "sync twin, 64 threads: floor / shim / ratio",
        f"{t['floor']['calls_s']['median']:.0f} / {t['shim']['calls_s']['median']:.0f} / "
        f"{t['ratio']:.3f}; shim errors {t['shim']['errors'] or 0}",
    )
    lines.append("h. hot keys: 64 async callers over 10 stocks, calls per second")
    row("floor", f"{r['hot_floor']['calls_s']['median']:.0f}")
    for name in ("single_flight_on", "single_flight_off", "cache_1s"):
        h = r[f"hot_{name}"]
        row(
            f"shim, {name.replace('_', ' ')} / floor",
            f"{h['calls_s']['median']:.0f} = {h['ratio']:.2f} x",
        )
    if r.get("d_paced"):
        lines.append("d. shadow mode (serve legacy, shadow v3) vs legacy mode, served latency")
        for label in ("paced", "back_to_back"):
            d = r[f"d_{label}"]
            row(f"{label}: shadow / legacy", f"{d['ratio']:.3f}")
    lines.append("e. shim's own CPU per call (no network, RSA stubbed)")
    for key in ("e_v3_us", "e_v3_events_on_us", "e_legacy_us", "e_legacy_events_on_us"):
        s = r[key]
        row(key[2:-3].replace("_", " "), f"{s['median']:.1f} us (IQR {s['iqr']:.1f})")
    lines.append(f"  profile (v3 route, us per call, total {r['e_profile_total_us']}):")
    for prof in r["e_profile_top"][:10]:
        lines.append(f"    {prof['tottime_us']:>7.2f}  {prof['function']}")
    lines.append("g. config scale")
    n_big = f"{r.get('g_big_merchants', 10_000):,}"
    row(f"{n_big} merchants, cold load", f"{r['g_load_10000_s']['median']:.2f} s")
    row("  per 1,000 merchants", f"{r['g_load_per_1000_s']['median']:.3f} s")
    row("1,000 merchants, cold load", f"{r['g_load_1000_s']['median']:.3f} s")
    row(f"{n_big} merchants, reload (keys already parsed)", f"{r['g_reload_10000_warm_s']:.2f} s")
    row(
        "one new key: shim check / OpenSSL validation",
        f"{r['g_key_check_ms']:.1f} ms / {r['g_key_openssl_validation_ms']:.1f} ms",
    )
    row(
        f"own CPU per call, 2 / {n_big} merchants",
        f"{r['g_cpu_2_merchants_us']['median']:.1f} / "
        f"{r['g_cpu_10000_merchants_us']['median']:.1f} us",
    )
    g = r["g_reload_1000"]
    row(
        f"1,000-merchant reloads ({g['swapped']}/{g['reloads']} swapped)",
        f"reload {g['reload_s']['median'] * 1000:.0f} ms off the call path; call median "
        f"{g['call_median_ms']:.2f} ms; worst call during reloads "
        f"{g['worst_call_during_reload_ms']:.2f} ms (quiet: {g['worst_call_quiet_ms']:.2f} ms); "
        f"longest GC {g['worst_gc_during_reload_ms']:.1f} ms, "
        f"{g['full_collections_during_reloads']} full",
    )
    row(
        "same, every merchant's text changed",
        f"reload {g['full_rewrite_reload_s']['median'] * 1000:.0f} ms; worst call "
        f"{g['worst_call_during_full_rewrite_ms']:.2f} ms; longest GC "
        f"{g.get('worst_gc_during_full_rewrite_ms', float('nan')):.1f} ms, "
        f"{g.get('full_collections_during_full_rewrites', '?')} full",
    )
    row(
        "reload CPU within one call, worst (GIL held)",
        f"{g['worst_reload_cpu_within_one_call_ms']:.2f} ms; every merchant changed: "
        f"{g['worst_reload_cpu_within_one_call_full_rewrite_ms']:.2f} ms",
    )
    lines.append("f. import and memory")
    row("import shim (wall, minus python -c pass)", f"{r['f_import_wall_ms']:.0f} ms")
    mem = r["f_memory"]
    row(
        f"after {mem['calls']} calls (in-process)",
        f"RSS {mem['rss_before_mib']} -> {mem['rss_after_mib']} MiB, "
        f"traced growth {mem['traced_growth_kib']} KiB",
    )
    lines.append("targets")
    for v in r["verdicts"].values():
        row(v["what"], f"{v['value']} {v['target']}  {'MET' if v['met'] else 'MISSED'}")
    return "\n".join(lines)


#: The README's rows: (target key, label, how the latest run's figure is shown).
README_ROWS = (
    ("a_http", "shim / floor, sync v3, HTTP"),
    ("a_https", "shim / floor, sync v3, HTTPS"),
    ("b_https", "`wechatpayv3` SDK / shim, HTTPS"),
    ("c_64", "async shim / async floor, successful calls/s, concurrency 64"),
    ("c_256", "same, concurrency 256"),
    ("c_1024", "same, concurrency 1,024"),
    ("threads_64", "sync shim / sync floor, successful calls/s, 64 threads"),
    ("e_v3", "own CPU per call, v3, events filtered (µs)"),
    ("e_legacy", "own CPU per call, legacy, events filtered (µs)"),
    ("e_v3_events", "own CPU per call, v3, every event rendered (µs)"),
    ("e_legacy_events", "own CPU per call, legacy, every event rendered (µs)"),
    ("hot_sf", "hot keys (64 callers, 10 stocks), single-flight on / floor"),
    ("hot_cache", "hot keys, 1 s cache / floor"),
    ("g_load_1000", "config load, 1,000 merchants (s)"),
    ("g_load_per_1000", "config load, 10,000 merchants, per 1,000 (s)"),
    ("g_stall", "worst call stall during a 1,000-merchant reload (ms)"),
)
TODAY = {
    "a_http": "1.10–1.20",
    "a_https": "1.10–1.20",
    "b_https": "1.70–1.99",
    "c_64": "0.66–1.0",
    "c_256": "breaker opens",
    "c_1024": "0 %",
    "threads_64": "—",
    "e_v3": "138–183",
    "e_legacy": "138–183",
    "e_v3_events": "282",
    "e_legacy_events": "256",
    "hot_sf": "—",
    "hot_cache": "—",
    "g_load_1000": "50",
    "g_load_per_1000": "50",
    "g_stall": "53,000",
}


def readme_table(paths: list[Path]) -> str:
    """The README's performance table: the first file's figures, the spread of all files."""
    runs = [json.loads(path.read_text()) for path in paths]
    latest = runs[0]
    lines = [
        "| what | before | target | measured | runs |",
        "|---|---|---|---|---|",
    ]
    for key, label in README_ROWS:
        v = latest["verdicts"][key]
        spread = " · ".join(f"{r['verdicts'][key]['value']:g}" for r in runs)
        mark = "" if v["met"] else " (missed)"
        lines.append(
            f"| {label} | {TODAY[key]} | {v['target'].replace('<=', '≤').replace('>=', '≥')} "
            f"| **{v['value']:g}**{mark} | {spread} |"
        )
    return "\n".join(lines)


def default_out() -> Path:
    """Where results go unless ``--write``: a folder outside the repository."""
    folder = Path(tempfile.gettempdir()) / "coupon-shim-bench"
    folder.mkdir(exist_ok=True)
    return folder / time.strftime("results-%Y%m%d-%H%M%S.json")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="coupon-shim benchmark")
    parser.add_argument("--quick", action="store_true", help="fewer rounds (about a minute)")
    parser.add_argument(
        "--write", action="store_true", help="write bench/results.json (the README's figures)"
    )
    parser.add_argument("--out", type=Path, help="write the results here")
    parser.add_argument(
        "--only", default="", help="comma-separated sections (a,c,t,h,d,e,g,f); default all"
    )
    parser.add_argument(
        "--table",
        nargs="+",
        type=Path,
        metavar="RESULTS",
        help="print the README's table from result files (latest first) and exit",
    )
    p = parser.parse_args(argv)
    if p.table:
        print(readme_table(p.table))
        return 0
    q = p.quick
    # --quick: every row, from smaller samples (about a minute on a quiet 2-core machine);
    # its 10,000-merchant row is measured on 2,000 merchants and scaled per 1,000.
    p.rounds = 2 if q else 8
    p.per_round = 30 if q else 120
    p.sdk_per_round = 12 if q else 60
    p.shadow_per_round = 10 if q else 40
    p.warmup = 10 if q else 60
    p.async_rounds = 1 if q else 3
    p.async_big_rounds = 1 if q else 3
    p.async_calls = 64 if q else 384
    p.async_per_task = 1 if q else 2
    p.thread_calls = 128 if q else 768
    p.hot_calls = 256 if q else 2048
    p.cpu_calls = 300 if q else 2000
    p.cpu_batches = 3 if q else 9
    p.mem_calls = 500 if q else 10_000
    p.config_runs = 1 if q else 3
    p.big_merchants = 2_000 if q else 10_000
    p.reloads = 2 if q else 5
    p.import_runs = 3 if q else 7
    out_path = p.out or (HERE / "results.json" if p.write else default_out())

    events_filtered()
    started = time.perf_counter()
    results: dict[str, Any] = {"machine": machine(), "quick": q}
    steps = (
        ("a", "a, b", bench_sync),
        ("c", "c", bench_async),
        ("t", "threads", bench_threads),
        ("h", "hot keys", bench_hot),
        ("d", "d", bench_shadow),
        ("e", "e", bench_cpu),
        ("g", "config scale", bench_config),
        ("f", "f", bench_import_memory),
    )
    only = {x for x in p.only.split(",") if x}
    with environment() as env:
        for key, name, step in steps:
            if only and key not in only:
                continue
            t0 = time.perf_counter()
            print(f"[{name}] ...", file=sys.stderr, flush=True)
            results.update(step(env, p))
            print(f"[{name}] {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if not only:
        results["verdicts"] = verdicts(results)
    results["duration_s"] = round(time.perf_counter() - started, 1)
    results["command"] = "python bench/run.py" + (" --quick" if q else "")
    out_path.write_text(json.dumps(_rounded(results), indent=2) + "\n")
    if not only:
        print(table(results))
    print(f"results: {out_path}", file=sys.stderr)
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

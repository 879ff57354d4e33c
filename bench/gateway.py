"""The gateway's cost: the same v2 client calling the emulator directly, and through the gateway.

    python bench/gateway.py [--quick] [--out bench/gateway_results.json] [--readme]
    python bench/gateway.py --table bench/gateway_results.json [--readme]

Starts the WeChat Pay emulator (``bench/server.py``, uvicorn with httptools and uvloop) and,
for each of ``--workers 1`` and ``--workers 2`` and each of ``legacy`` and ``v3`` modes, a
``coupon-shim --quiet serve`` process pointed at it, all on loopback. The client is one
hand-written async v2 caller (httpx, one pooled connection per concurrent caller): it signs
the XML, posts it, parses the answer and checks its sign, as a Java or Go caller does. The
direct baseline posts the same request to the emulator's v2 endpoint.

Measured, with warm-up and interleaved rounds (direct, gateway, gateway, direct, ...):

* latency at concurrency 1: p50 and p99 of each side and the gateway's added p50;
* throughput at concurrency 64 and 256: calls per second of each side and their ratio;
* CPU per call at concurrency 1 (from ``/proc``): the gateway's processes, the emulator's
  and this client's, on each side. The emulator's CPU per direct call is what serving one
  v2 exchange costs on this machine; the gateway serves one and makes one per call.

Targets (legacy mode): at concurrency 1 the gateway adds at most 1 ms at p50; at concurrency
64 it sustains at least 80 % of the direct client's calls/s. Everything shares the machine's
cores (client, gateway workers, emulator), so the load average is recorded at start and end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any
from xml.parsers import expat

import httpx

from shim.sandbox import SandboxState

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MCH = "10000098"  # MD5 merchant, public-key mode
STOCK = "1757"
PATH = "/mmpaymkttransfers/query_coupon_stock"
TARGETS = {
    "c1_added_p50_ms": ("legacy, concurrency 1: gateway p50 - direct p50 (ms)", "<=", 1.0),
    "c64_ratio": ("legacy, concurrency 64: gateway calls/s / direct calls/s", ">=", 0.80),
}


# --------------------------------------------------------------------------- the client


def _sign(fields: dict[str, str], key: str) -> str:
    text = "&".join(f"{k}={fields[k]}" for k in sorted(fields) if fields[k] and k != "sign")
    return hashlib.md5(f"{text}&key={key}".encode(), usedforsecurity=False).hexdigest().upper()


def _parse(body: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    stack: list[str] = []
    text: list[str] = []

    def start(name: str, _attrs: Any) -> None:
        stack.append(name)
        text.clear()

    def end(name: str) -> None:
        stack.pop()
        if stack:
            fields[name] = "".join(text).strip()

    parser = expat.ParserCreate()
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = text.append
    parser.Parse(body, True)
    return fields


class V2Caller:
    """A hand-written v2 caller: sign, POST, parse, verify the answer's sign."""

    def __init__(self, base_url: str, key: str, appid: str, connections: int) -> None:
        self.url = base_url + PATH
        self.key = key
        self.appid = appid
        # One client with one keep-alive connection per concurrent caller, as a fleet of
        # callers would have: httpx's pool scans its connections on every request, so one
        # client shared by 256 callers would measure httpx, not the servers.
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        self.clients = [
            httpx.AsyncClient(limits=limits, timeout=30, trust_env=False)
            for _ in range(connections)
        ]
        self.errors = 0

    async def call(self, caller: int = 0) -> None:
        """One call; a refused or unverifiable answer counts as an error (never as a call)."""
        try:
            await self._call(self.clients[caller])
        except (httpx.HTTPError, RuntimeError, expat.ExpatError):
            self.errors += 1

    async def _call(self, client: httpx.AsyncClient) -> None:
        fields = {
            "coupon_stock_id": STOCK,
            "appid": self.appid,
            "mch_id": MCH,
            "nonce_str": secrets.token_hex(16),
            "version": "1.0",
            "type": "XML",
        }
        fields["sign"] = _sign(fields, self.key)
        body = "<xml>" + "".join(f"<{k}>{v}</{k}>" for k, v in fields.items()) + "</xml>"
        resp = await client.post(self.url, content=body.encode())
        answer = _parse(resp.content)
        if answer.get("result_code") != "SUCCESS" or answer.get("sign") != _sign(answer, self.key):
            raise RuntimeError(f"bad answer: HTTP {resp.status_code} {answer.get('return_msg')}")

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()


# --------------------------------------------------------------------------- measuring


def _q(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


async def latencies(call: Callable[[], Awaitable[None]], n: int) -> list[float]:
    out = []
    clock = time.perf_counter
    for _ in range(n):
        t0 = clock()
        await call()
        out.append((clock() - t0) * 1000.0)
    return out


async def throughput(side: V2Caller, conc: int, total: int) -> float:
    """Successful calls per second with ``conc`` callers, each on its own connection."""
    left = total

    async def worker(i: int) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await side.call(i)

    errors_before = side.errors
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(conc)))
    elapsed = time.perf_counter() - t0
    return (total - (side.errors - errors_before)) / elapsed


def cpu_seconds(group: int) -> float:
    """User + system CPU seconds used so far by the processes of process group ``group``
    (the gateway and its workers, or the emulator): read from ``/proc``."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError), open(f"/proc/{entry}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[2]) == group:  # pgrp
                total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


async def measure(
    direct: V2Caller, gateway: V2Caller, p: argparse.Namespace, groups: dict[str, int]
) -> dict[str, Any]:
    sides = {"direct": direct, "gateway": gateway}
    for side in sides.values():  # warm-up: connections, caches, the gateway's first reload
        await asyncio.gather(*(side.call(i) for i in range(len(side.clients))))
        await latencies(side.call, p.warmup)
        side.errors = 0
    lat: dict[str, list[float]] = {"direct": [], "gateway": []}
    # CPU seconds per side: the gateway's processes, the emulator's, this client's own
    cpu = {f"{name}/{who}": 0.0 for name in sides for who in ("gateway", "emulator", "client")}
    for r in range(p.rounds):
        for name in ("direct", "gateway") if r % 2 == 0 else ("gateway", "direct"):
            before = {who: cpu_seconds(g) for who, g in groups.items()}
            mine = sum(os.times()[:2])
            lat[name] += await latencies(sides[name].call, p.per_round)
            cpu[f"{name}/client"] += sum(os.times()[:2]) - mine
            for who, g in groups.items():
                cpu[f"{name}/{who}"] += cpu_seconds(g) - before[who]
    print(f"  concurrency 1 done ({time.strftime('%H:%M:%S')})", file=sys.stderr, flush=True)
    result: dict[str, Any] = {"c1": {}}
    for name, values in lat.items():
        result["c1"][name] = {
            "p50_ms": _q(values, 0.5),
            "p99_ms": _q(values, 0.99),
            "n": len(values),
        }
    # CPU milliseconds per call at concurrency 1 (clock ticks: 10 ms resolution, summed
    # over every round, so a few hundred calls give about 0.05 ms resolution)
    result["c1"]["cpu_ms_per_call"] = {
        key: round(seconds * 1000.0 / len(lat[key.split("/")[0]]), 3)
        for key, seconds in cpu.items()
    }
    result["c1"]["added_p50_ms"] = (
        result["c1"]["gateway"]["p50_ms"] - result["c1"]["direct"]["p50_ms"]
    )
    result["c1"]["added_p99_ms"] = (
        result["c1"]["gateway"]["p99_ms"] - result["c1"]["direct"]["p99_ms"]
    )
    for conc in (64, 256):
        rates: dict[str, list[float]] = {"direct": [], "gateway": []}
        for r in range(p.tp_rounds):
            for name in ("direct", "gateway") if r % 2 == 0 else ("gateway", "direct"):
                rates[name].append(await throughput(sides[name], conc, p.tp_calls))
        print(f"  concurrency {conc}: {rates}", file=sys.stderr, flush=True)
        d, g = statistics.median(rates["direct"]), statistics.median(rates["gateway"])
        result[f"c{conc}"] = {
            "direct_calls_s": d,
            "gateway_calls_s": g,
            "ratio": g / d,
            "rounds": {k: [round(x, 1) for x in v] for k, v in rates.items()},
        }
    # calls whose answer was refused or did not verify (e.g. a 504 when the upstream budget
    # ran out under load): counted, and not in the rates above as successes
    result["errors"] = {name: side.errors for name, side in sides.items()}
    return result


# --------------------------------------------------------------------------- processes


def _start(
    cmd: list[str], pattern: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, text=True, env=env, start_new_session=True, cwd=ROOT
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if pattern not in line:
        proc.kill()
        raise RuntimeError(f"did not start: {line!r}")
    url = next(word for word in line.split() if word.startswith("http"))
    return proc, url


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@contextlib.contextmanager
def gateway(config: Path, workers: int) -> Iterator[tuple[str, int]]:
    """A ``coupon-shim serve`` process group: its URL and its process group id."""
    proc, url = _start(
        [
            sys.executable,
            "-m",
            "shim.cli",
            "--quiet",
            "serve",
            "--config",
            str(config),
            "--port",
            "0",
            "--workers",
            str(workers),
        ],
        "listening on",
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    # every worker up: a few new connections, spread by the kernel
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the gateway did not become ready")
            time.sleep(0.1)
        time.sleep(1.0 if workers > 1 else 0.2)
        yield url, proc.pid  # started in a new session: its pid is the group's id
    finally:
        _stop(proc)


def machine() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for dist in ("httpx", "uvicorn", "httptools", "uvloop", "starlette"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "packages": versions,
    }


def table(r: dict[str, Any]) -> str:
    rows = [
        "| workers | mode | c=1 p50 direct / gateway (added) | c=1 p99 direct / gateway (added) | "
        "c=1 CPU ms per call: gateway / emulator | "
        "c=64 calls/s direct / gateway (ratio) | c=256 calls/s direct / gateway (ratio) |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, m in r["runs"].items():
        workers, mode = key.split("/")
        c1, c64, c256 = m["c1"], m["c64"], m["c256"]
        cpu = c1["cpu_ms_per_call"]
        rows.append(
            f"| {workers} | {mode} | {c1['direct']['p50_ms']:.2f} / "
            f"{c1['gateway']['p50_ms']:.2f} ms "
            f"(**{c1['added_p50_ms']:+.2f}**) | {c1['direct']['p99_ms']:.2f} / "
            f"{c1['gateway']['p99_ms']:.2f} ms ({c1['added_p99_ms']:+.2f}) | "
            f"{cpu['gateway/gateway']:.2f} / "
            f"{cpu['direct/emulator']:.2f} | {c64['direct_calls_s']:.0f} / "
            f"{c64['gateway_calls_s']:.0f} (**{c64['ratio']:.2f}**) | "
            f"{c256['direct_calls_s']:.0f} / {c256['gateway_calls_s']:.0f} ({c256['ratio']:.2f}) |"
        )
    return "\n".join(rows)


README = ROOT / "README.md"
BEGIN, END = "<!-- BEGIN gateway table -->", "<!-- END gateway table -->"


def readme_block(r: dict[str, Any]) -> str:
    """The README's gateway figures: the run, the machine, the table and the targets."""
    m = r["machine"]
    settings = r["settings"]
    quick = settings.get("quick", settings.get("warmup") == 50)  # (older files: by its sizes)
    kind = "`--quick`" if quick else "full"
    when = r.get("started_utc", "time not recorded")
    lines = [
        f"Latest run ({kind}, {when}): {m['cpu']}, {m['cores']} cores, CPython {m['python']}, "
        f"{m['os']}; load average {r['load_average_at_start'][0]:g} at the start and "
        f"{r.get('load_average_at_end', ['?'])[0]:g} at the end. The CPU column is milliseconds "
        "of CPU (user + system, from `/proc`) per call at concurrency 1: the gateway's "
        "processes per gateway call, and the emulator's per direct call.",
        "",
        table(r),
    ]
    targets = r.get("targets")
    if targets:
        added = targets["c1_added_p50_ms"]["value"]
        ratio = targets["c64_ratio"]["value"]
        lines += [
            "",
            f"Targets (1 worker, legacy): at concurrency 1 at most +1 ms at p50 — "
            f"{'met' if added <= 1.0 else '**not met**'} ({added:+.2f} ms); at concurrency 64 "
            f"at least 80 % of the direct calls/s — {'met' if ratio >= 0.80 else '**not met**'} "
            f"({ratio:.2f}).",
        ]
    return "\n".join(lines)


def write_readme(r: dict[str, Any], path: Path = README) -> None:
    """Replace the README's gateway block (between its markers) with ``r``'s figures."""
    text = path.read_text(encoding="utf-8")
    head, sep, rest = text.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise SystemExit(f"{path.name} has no {BEGIN} ... {END} block")
    path.write_text(f"{head}{BEGIN}\n{readme_block(r)}\n{END}{tail}", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer calls (about two minutes; the full run about six)",
    )
    parser.add_argument("--out", type=Path, default=HERE / "gateway_results.json")
    parser.add_argument("--workers", default="1,2", help="worker counts to measure")
    parser.add_argument("--modes", default="legacy,v3", help="routing modes to measure")
    parser.add_argument(
        "--readme",
        action="store_true",
        help="also write the figures into README.md's gateway block",
    )
    parser.add_argument(
        "--table",
        type=Path,
        metavar="RESULTS",
        help="print (with --readme: write) the README block from a results file and exit",
    )
    p = parser.parse_args(argv)
    if p.table:
        saved = json.loads(p.table.read_text(encoding="utf-8"))
        if p.readme:
            write_readme(saved)
        print(readme_block(saved))
        return 0
    p.warmup, p.rounds, p.per_round = (50, 4, 100) if p.quick else (100, 6, 200)
    p.tp_rounds, p.tp_calls = (2, 1000) if p.quick else (2, 2000)
    results: dict[str, Any] = {
        "machine": machine(),
        "started_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "settings": {
            k: getattr(p, k)
            for k in ("quick", "warmup", "rounds", "per_round", "tp_rounds", "tp_calls")
        },
        "runs": {},
    }
    with tempfile.TemporaryDirectory(prefix="coupon-shim-gateway-bench-") as tmp:
        work = Path(tmp)
        state = SandboxState.load_or_create(work / "state")
        emulator, emu_url = _start(
            [sys.executable, str(HERE / "server.py"), "--state-dir", str(work / "state")], "READY"
        )
        try:
            m = state.merchants[MCH]
            for workers in (int(w) for w in p.workers.split(",")):
                for mode in p.modes.split(","):
                    cfg = state.write_config(
                        work / f"shim-{mode}.toml",
                        v2_base_url=emu_url,
                        v3_base_url=emu_url,
                        mode=mode,
                    )
                    with gateway(cfg, workers) as (gw_url, gw_group):
                        groups = {"gateway": gw_group, "emulator": emulator.pid}

                        async def run(
                            gw_url: str = gw_url, groups: dict[str, int] = groups
                        ) -> dict[str, Any]:
                            direct = V2Caller(emu_url, m.v2_key, m.appid, 256)
                            via = V2Caller(gw_url, m.v2_key, m.appid, 256)
                            try:
                                return await measure(direct, via, p, groups)
                            finally:
                                await direct.aclose()
                                await via.aclose()

                        key = f"{workers}/{mode}"
                        results["runs"][key] = asyncio.run(run())
                        print(
                            f"{key}: +{results['runs'][key]['c1']['added_p50_ms']:.3f} ms at c=1",
                            flush=True,
                        )
        finally:
            _stop(emulator)
    results["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    legacy = results["runs"].get("1/legacy")
    if legacy:
        results["targets"] = {
            "c1_added_p50_ms": {"value": legacy["c1"]["added_p50_ms"], "target": "<= 1.0"},
            "c64_ratio": {"value": legacy["c64"]["ratio"], "target": ">= 0.80"},
        }
    p.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    if p.readme:
        write_readme(results)
    print(table(results))
    print(
        f"machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, "
        f"Python {results['machine']['python']}; load {results['load_average_at_start']} -> "
        f"{results['load_average_at_end']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

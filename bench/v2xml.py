"""What parsing a v2 answer costs: the shim's fast path, its strict expat parser, and xmltodict.

    python bench/v2xml.py [--quick] [--out bench/v2xml_results.json]

The design card names ``xmltodict`` for v2 XML; the legacy route reads the common flat answer
with :func:`shim._flatxml.read_flat` and hands anything else to the strict expat parser
:func:`shim._v2.parse_xml` (xmltodict is the oracle both are held to, in
``tests/test_xml_oracle.py``). This measures, per answer and in one run, with interleaved
rounds and medians:

* ``fast``: ``read_flat`` (the route's path for every answer the emulator and WeChat Pay send);
* ``expat``: ``parse_xml`` (the route's path for anything else);
* ``xmltodict``: ``xmltodict.parse(body, disable_entities=True)["xml"]``, the design card's
  parser, with nothing else around it (no size cap, DOCTYPE or encoding checks: a lower bound
  on what it would cost in the route);
* ``verify``: the v2 signature check every answer needs anyway (HMAC-SHA256), the baseline the
  parse costs are set against.

The answers are the emulator's own: every seeded stock's signed v2 answer and one business
error. It prints the ratios and writes them to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import xmltodict

# Private on purpose: the parsers themselves are what is measured (users never call them).
# private: the v2 XML reader, compared with its oracle
from shim._flatxml import read_flat

# private: the v2 protocol module, to build or check v2 wire messages
from shim._v2 import parse_xml, verify_answer
from shim.sandbox import render_xml, seeded_stocks, v2_sign

KEY = "0123456789abcdef0123456789abcdef"
SIGN_TYPE = "HMAC-SHA256"


def answers() -> list[bytes]:
    """The emulator's signed v2 answers: one per seeded stock, and a business error."""
    envelope = [
        ("return_code", "SUCCESS"),
        ("return_msg", "OK"),
        ("appid", "wx5edab3bdfba3dc1c"),
        ("mch_id", "10000098"),
        ("nonce_str", "5K8264ILTKCH16CQ2502SI8ZNMTM67VS"),
    ]
    bodies = []
    docs = [[*envelope, ("result_code", "SUCCESS"), *s.v2_fields().items()]
            for s in seeded_stocks().values()]  # fmt: skip
    docs.append([*envelope, ("result_code", "FAIL"), ("err_code", "COUPON_STOCK_NOT_FOUND"),
                 ("err_code_des", "批次信息不存在")])  # fmt: skip
    for fields in docs:
        sign = v2_sign(dict(fields), KEY, SIGN_TYPE)
        bodies.append(render_xml([*fields, ("sign", sign)]))
    return bodies


def _xmltodict(body: bytes) -> dict[str, str]:
    return dict(xmltodict.parse(body, disable_entities=True)["xml"])


def _verify(body: bytes, parsed: dict[str, str]) -> None:
    verify_answer(parsed, key=KEY, sign_type=SIGN_TYPE)


def _timed(fn: Callable[[bytes], object], bodies: list[bytes], loops: int) -> float:
    """CPU microseconds per answer over ``loops`` passes of ``bodies``.

    Process CPU time, not wall time: on a shared machine the wait for a core is not the cost
    of a parse.
    """
    started = time.process_time()
    for _ in range(loops):
        for body in bodies:
            fn(body)
    return (time.process_time() - started) / (loops * len(bodies)) * 1e6


def measure(*, rounds: int, loops: int) -> dict[str, Any]:
    """Per-answer medians of every parser and the baseline, interleaved round by round."""
    bodies = answers()
    parsed = {body: parse_xml(body) for body in bodies}
    for body in bodies:  # the three parsers agree on these answers
        assert read_flat(body) == parsed[body] == _xmltodict(body), body[:80]
    contenders: dict[str, Callable[[bytes], object]] = {
        "fast": read_flat,
        "expat": parse_xml,
        "xmltodict": _xmltodict,
        "verify": lambda body: _verify(body, parsed[body]),
    }
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for fn in contenders.values():  # warm-up
        _timed(fn, bodies, max(1, loops // 10))
    for r in range(rounds):
        order = list(contenders) if r % 2 == 0 else list(reversed(contenders))
        for name in order:
            samples[name].append(_timed(contenders[name], bodies, loops))
    med = {name: statistics.median(v) for name, v in samples.items()}
    return {
        "answers": len(bodies),
        "mean_answer_bytes": round(sum(map(len, bodies)) / len(bodies)),
        "rounds": rounds,
        "loops": loops,
        "us_per_answer": {k: round(v, 2) for k, v in med.items()},
        "iqr_us": {
            k: round(statistics.quantiles(v, n=4)[2] - statistics.quantiles(v, n=4)[0], 2)
            for k, v in samples.items()
        },
        "ratios": {
            "xmltodict_vs_fast": round(med["xmltodict"] / med["fast"], 2),
            "expat_vs_fast": round(med["expat"] / med["fast"], 2),
            "xmltodict_vs_expat": round(med["xmltodict"] / med["expat"], 2),
            "fast_vs_verify": round(med["fast"] / med["verify"], 2),
            "xmltodict_vs_verify": round(med["xmltodict"] / med["verify"], 2),
        },
    }


def main(argv: list[str] | None = None) -> int:
    """Run the measurement, print it and write it to ``--out``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    p.add_argument("--out", default=str(Path(__file__).with_name("v2xml_results.json")))
    args = p.parse_args(argv)
    result = measure(rounds=5 if args.quick else 15, loops=20 if args.quick else 100)
    result["machine"] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    us, ratio = result["us_per_answer"], result["ratios"]
    size, rounds = result["mean_answer_bytes"], result["rounds"]
    print(f"v2 answer parse, {result['answers']} emulator answers (~{size} bytes), "
          f"median of {rounds} rounds:")  # fmt: skip
    for name in ("fast", "expat", "xmltodict", "verify"):
        print(f"  {name:<10} {us[name]:8.2f} CPU us/answer  (IQR {result['iqr_us'][name]:.2f})")
    print(f"  xmltodict / fast   = {ratio['xmltodict_vs_fast']:.2f}x")
    print(f"  expat / fast       = {ratio['expat_vs_fast']:.2f}x")
    print(f"  xmltodict / verify = {ratio['xmltodict_vs_verify']:.2f}x  "
          f"(fast / verify = {ratio['fast_vs_verify']:.2f}x)")  # fmt: skip
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

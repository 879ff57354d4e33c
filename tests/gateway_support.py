"""Helpers for the gateway tests: configs pointing at the emulator, hand-built v2 XML.

The v2 signing here is written again from the spec (hashlib only), so a raw-XML caller's
check of the gateway's answers does not lean on the shim's own v2 code.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import xmltodict

from shim.sandbox import SandboxState

MD5_MCH = "10000098"
HMAC_MCH = "10000099"
QUERY_PATH = "/mmpaymkttransfers/query_coupon_stock"
#: Stocks of each seeded merchant that both routes serve.
STOCKS = {MD5_MCH: ("1717", "1757", "9856000"), HMAC_MCH: ("9856099", "9856098")}


def toml_value(value: Any) -> str:
    """A TOML literal for a str, bool, number or list of those (JSON spelling is valid TOML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value, ensure_ascii=False)


def set_key(text: str, table: str, key: str, value: Any) -> str:
    """Set ``key`` in ``[table]`` of a config text (the table must exist)."""
    lines = text.splitlines()
    header = f"[{table}]"
    start = lines.index(header)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines))
    line = f"{key} = {toml_value(value)}"
    for i in range(start + 1, end):
        if re.match(rf"{re.escape(key)}\s*=", lines[i]):
            lines[i] = line
            break
    else:
        lines.insert(start + 1, line)
    return "\n".join(lines) + "\n"


def write_config(
    state: SandboxState,
    path: Path,
    *,
    upstream_url: str,
    mode: str = "legacy",
    v3_url: str | None = None,
    gateway: Mapping[str, Any] | None = None,
    **tables: Mapping[str, Any],
) -> Path:
    """A shim.toml for the emulator at ``upstream_url`` with tables' keys overridden."""
    state.write_config(
        path, v2_base_url=upstream_url, v3_base_url=v3_url or upstream_url, mode=mode
    )
    text = path.read_text(encoding="utf-8")
    for table, values in tables.items():
        for key, value in values.items():
            text = set_key(text, table, key, value)
    if gateway:
        text += "\n[gateway]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in gateway.items())
    path.write_text(text, encoding="utf-8")
    return path


def v2_sign(fields: Mapping[str, str], key: str, sign_type: str = "MD5") -> str:
    """The v2 sign, from the spec: sorted non-empty fields but sign, ``&key=``, MD5 or HMAC."""
    string_a = "&".join(f"{k}={fields[k]}" for k in sorted(fields) if fields[k] and k != "sign")
    data = f"{string_a}&key={key}".encode()
    if sign_type == "HMAC-SHA256":
        return hmac.new(key.encode(), data, hashlib.sha256).hexdigest().upper()
    return hashlib.md5(data).hexdigest().upper()


def request_fields(
    state: SandboxState, mch_id: str, stock_id: str, *, sign_type: str | None = None, **extra: str
) -> dict[str, str]:
    """A signed v2 request as a Java or Go caller builds it."""
    m = state.merchants[mch_id]
    fields = {
        "coupon_stock_id": stock_id,
        "appid": m.appid,
        "mch_id": mch_id,
        "op_user_id": mch_id,
        "nonce_str": "5K8264ILTKCH16CQ2502SI8ZNMTM67VS",
        "version": "1.0",
        "type": "XML",
        **extra,
    }
    if sign_type:
        fields["sign_type"] = sign_type
    fields["sign"] = v2_sign(fields, m.v2_key, sign_type or "MD5")
    return fields


def to_xml(fields: Mapping[str, str]) -> bytes:
    """Hand-built v2 XML (digits bare, text in CDATA), as the official samples show it."""
    parts = ["<xml>"]
    for k, v in fields.items():
        parts.append(f"<{k}>{v}</{k}>" if v.isdigit() else f"<{k}><![CDATA[{v}]]></{k}>")
    parts.append("</xml>")
    return "".join(parts).encode()


def parse_answer(body: bytes) -> dict[str, str]:
    """A v2 answer as a legacy caller reads it (xmltodict, all strings)."""
    doc = xmltodict.parse(body, disable_entities=True)["xml"]
    return {k: v or "" for k, v in doc.items()}


def answer_verifies(answer: Mapping[str, str], key: str) -> bool:
    """A raw caller's check: the sign type by length (32 MD5, 64 HMAC-SHA256), then the sign."""
    sign = answer.get("sign", "")
    sign_type = "HMAC-SHA256" if len(sign) == 64 else "MD5"
    return bool(sign) and hmac.compare_digest(sign, v2_sign(answer, key, sign_type))

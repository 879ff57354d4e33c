"""The emulator's v2 side: ``POST /mmpaymkttransfers/query_coupon_stock``, XML, v2-signed.

:meth:`V2Handler.handle` parses the request, takes the armed fault for its stock, checks the
request in WeChat Pay's order (see :mod:`._emulator` for the decisions the spec leaves open)
and renders the answer, signed with the merchant's v2 key in the request's sign type, or
mutated by the fault.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import _faults as F
from ._faults import Fault
from ._messages import (
    HTML_CT,
    OTHER_APPID,
    OTHER_MCH_ID,
    V2_PATH,
    WIRE_FAULTS,
    XML_CT,
    SandboxReply,
    SandboxRequest,
    reply,
    wire_fault,
)
from ._stocks import another_stock
from ._v2 import (
    SIGN_TYPE_MD5,
    V2_SIGN_TYPES,
    V2XmlError,
    billion_laughs_xml,
    parse_request_xml,
    render_xml,
    v2_sign,
)

if TYPE_CHECKING:
    from ._emulator import Emulator

#: Short Chinese descriptions of the v2 err_codes, in the v2 style.
V2_ERR_CODE_DES: Mapping[str, str] = {
    "COUPON_STOCK_ID_NOT_VALID": "批次ID无效或不属于该商户",
    "SIGN_ERROR": "签名错误",
    "REQ_PARAM_XML_ERR": "请求参数错误",
    "COUPON_STOCK_ID_EMPTY": "批次ID为空",
    "MCH_ID_EMPTY": "商户号为空",
    "CODE_2_ID_ERR": "商户号错误",
    "GET_COUPON_STOCK_FAIL": "获取批次信息失败",
    "COUPON_STOCK_NOT_FOUND": "批次信息不存在",
    "SYSTEMERROR": "系统错误，请稍后重试",
    "NOAUTH": "商户无此接口权限",
}

_HTTP_FAULT_STATUS = {F.HTTP_500: 500, F.HTTP_502: 502, F.HTTP_503: 503, F.HTTP_429: 429}
_V2_ENVELOPE = frozenset(
    {"return_code", "return_msg", "appid", "mch_id", "device_info", "nonce_str"}
)


@dataclass
class _V2Answer:
    fields: list[tuple[str, str]]
    key: str | None
    sign_type: str


class V2Handler:
    """The v2 stock query of one :class:`Emulator` (reads its state, stocks and faults live)."""

    def __init__(self, emulator: Emulator) -> None:
        self._emulator = emulator

    def handle(self, request: SandboxRequest, path: str) -> SandboxReply:
        fields: dict[str, str] | None = None
        xml_error: str | None = None
        if path != V2_PATH:
            xml_error = "接口不存在 (unknown v2 path)"
        elif request.method != "POST":
            xml_error = "请使用post方法"
        elif request.body_too_large:
            xml_error = "XML格式错误 (request body too large)"
        else:
            try:
                fields = parse_request_xml(request.body)
            except V2XmlError as exc:
                xml_error = f"XML格式错误 ({exc})"
        stock_id = (fields or {}).get("coupon_stock_id") or None
        fault = self._emulator._faults.take("v2", stock_id) if path == V2_PATH else None
        self._emulator._record("v2", request, path, stock_id, fault)

        if fault is not None:
            early = self._early_fault(fault, fields)
            if early is not None:
                return early
        answer = self._answer(fields, xml_error)
        if fault is None:
            return self._render(answer)
        return self._mutate(fault, answer)

    def _envelope(self, fields: Mapping[str, str]) -> list[tuple[str, str]]:
        out = [("return_code", "SUCCESS"), ("return_msg", "OK")]
        for name in ("appid", "mch_id", "device_info"):
            if fields.get(name):
                out.append((name, fields[name]))
        out.append(("nonce_str", secrets.token_hex(16)))
        return out

    def _error(
        self, fields: Mapping[str, str], code: str, key: str | None, sign_type: str
    ) -> _V2Answer:
        out = self._envelope(fields)
        out += [
            ("result_code", "FAIL"),
            ("err_code", code),
            ("err_code_des", V2_ERR_CODE_DES.get(code, code)),
        ]
        return _V2Answer(out, key, sign_type)

    def _answer(self, fields: dict[str, str] | None, xml_error: str | None) -> _V2Answer:
        if fields is None:
            return _V2Answer(
                [("return_code", "FAIL"), ("return_msg", xml_error or "XML格式错误")],
                None,
                SIGN_TYPE_MD5,
            )
        mch_id = fields.get("mch_id", "")
        if not mch_id:
            return _V2Answer(
                [("return_code", "FAIL"), ("return_msg", "MCH_ID_EMPTY: 商户号为空")],
                None,
                SIGN_TYPE_MD5,
            )
        merchant = self._emulator.state.merchants.get(mch_id)
        if merchant is None:
            return _V2Answer(
                [("return_code", "FAIL"), ("return_msg", "CODE_2_ID_ERR: 商户号错误 (不存在)")],
                None,
                SIGN_TYPE_MD5,
            )
        req_sign_type = fields.get("sign_type") or SIGN_TYPE_MD5
        sign_type = req_sign_type if req_sign_type in V2_SIGN_TYPES else SIGN_TYPE_MD5
        key = merchant.v2_key
        given = fields.get("sign", "")
        expected = v2_sign(fields, key, sign_type)
        if (
            req_sign_type not in V2_SIGN_TYPES
            or not given
            or not hmac.compare_digest(given.encode(), expected.encode())
        ):
            return self._error(fields, "SIGN_ERROR", key, sign_type)
        if not fields.get("appid") or not fields.get("nonce_str"):
            return self._error(fields, "REQ_PARAM_XML_ERR", key, sign_type)
        if fields["appid"] != merchant.appid:
            return self._error(fields, "CODE_2_ID_ERR", key, sign_type)
        stock_id = fields.get("coupon_stock_id", "")
        if not stock_id:
            return self._error(fields, "COUPON_STOCK_ID_EMPTY", key, sign_type)
        if not (stock_id.isascii() and stock_id.isdigit() and len(stock_id) <= 32):
            return self._error(fields, "COUPON_STOCK_ID_NOT_VALID", key, sign_type)
        stock = self._emulator.stocks.get(stock_id)
        if stock is None:
            return self._error(fields, "COUPON_STOCK_NOT_FOUND", key, sign_type)
        if stock.creator_mchid != mch_id:
            return self._error(fields, "COUPON_STOCK_ID_NOT_VALID", key, sign_type)
        out = self._envelope(fields)
        out.append(("result_code", "SUCCESS"))
        out += list(stock.v2_fields().items())
        return _V2Answer(out, key, sign_type)

    def _merchant_key(self, fields: Mapping[str, str] | None) -> tuple[str | None, str]:
        if not fields:
            return None, SIGN_TYPE_MD5
        merchant = self._emulator.state.merchants.get(fields.get("mch_id", ""))
        sign_type = fields.get("sign_type") or SIGN_TYPE_MD5
        if sign_type not in V2_SIGN_TYPES:
            sign_type = SIGN_TYPE_MD5
        return (merchant.v2_key if merchant else None), sign_type

    def _early_fault(self, fault: Fault, fields: dict[str, str] | None) -> SandboxReply | None:
        if fault.kind in _HTTP_FAULT_STATUS:
            status = _HTTP_FAULT_STATUS[fault.kind]
            page = f"<html><body><h1>{status}</h1>sandbox fault {fault.kind}</body></html>"
            return reply(status, HTML_CT, page.encode())
        if fault.kind == F.RESET:
            return SandboxReply(0, (), b"", drop="reset")
        if fault.kind == F.BILLION_LAUGHS:
            return reply(200, XML_CT, billion_laughs_xml())
        if fault.kind == F.ERR_CODE:
            key, sign_type = self._merchant_key(fields)
            return self._render(self._error(fields or {}, fault.args[0], key, sign_type))
        return None

    def _signed(self, answer: _V2Answer) -> list[tuple[str, str]]:
        if answer.key is None:
            return list(answer.fields)
        sign = v2_sign(dict(answer.fields), answer.key, answer.sign_type)
        return [*answer.fields, ("sign", sign)]

    def _render(self, answer: _V2Answer, delay_s: float = 0.0) -> SandboxReply:
        body = render_xml(self._signed(answer))
        plain = reply(200, XML_CT, body)
        return SandboxReply(plain.status, plain.headers, plain.body, delay_s=delay_s)

    def _replaced(self, answer: _V2Answer, **values: str) -> _V2Answer:
        fields = [(k, values.get(k, v)) for k, v in answer.fields]
        names = {k for k, _ in fields}
        fields += [(k, v) for k, v in values.items() if k not in names]
        return _V2Answer(fields, answer.key, answer.sign_type)

    def _mutate(self, fault: Fault, answer: _V2Answer) -> SandboxReply:
        kind = fault.kind
        if kind in WIRE_FAULTS:
            return wire_fault(fault, self._render(answer), self._emulator.bomb_bytes)
        sent = dict(answer.fields)
        if kind == F.WRONG_STOCK:
            another = another_stock(
                self._emulator.stocks, sent.get("coupon_stock_id"), sent.get("mch_id")
            )
            envelope = [(k, v) for k, v in answer.fields if k in _V2_ENVELOPE]
            fields = [*envelope, ("result_code", "SUCCESS"), *another.v2_fields().items()]
            return self._render(_V2Answer(fields, answer.key, answer.sign_type))
        if kind == F.WRONG_MERCHANT:
            return self._render(self._replaced(answer, mch_id=OTHER_MCH_ID))
        if kind == F.WRONG_APPID:
            return self._render(self._replaced(answer, appid=OTHER_APPID))
        if kind == F.UNSIGNED_FAIL:
            stocks = self._emulator.stocks
            stock = stocks.get(sent.get("coupon_stock_id", "")) or another_stock(
                stocks, None, sent.get("mch_id")
            )
            forged = [
                ("return_code", "FAIL"),
                ("return_msg", "系统繁忙,请稍后再试"),
                *[(k, v) for k, v in answer.fields if k in ("appid", "mch_id", "nonce_str")],
                ("result_code", "SUCCESS"),
                *{**stock.v2_fields(), "coupon_value": "999999"}.items(),
            ]
            return reply(200, XML_CT, render_xml(forged))
        if kind == F.DELAY:
            return self._render(answer, delay_s=fault.delay_s)
        if kind == F.HUGE_BODY:
            answer.fields.append(("padding", "x" * self._emulator.huge_body_bytes))
            return self._render(answer)
        signed = self._signed(answer)
        if kind == F.TRUNCATED:
            full = render_xml(signed)
            return SandboxReply(
                200,
                (("content-type", XML_CT), ("content-length", str(len(full)))),
                full[: len(full) // 2],
                drop="truncate",
            )
        if kind == F.MALFORMED:
            body = render_xml(signed)
            return reply(200, XML_CT, body[: -len(b"</xml>")] + b"<coupon_name>")
        if kind == F.WRONG_CONTENT_TYPE:
            return reply(200, HTML_CT, render_xml(signed))
        if kind == F.MISSING_SIGNATURE:
            return reply(200, XML_CT, render_xml(answer.fields))
        if kind == F.BAD_SIGNATURE:
            if answer.key is not None:
                other = [(k, v + "0" if k == "nonce_str" else v) for k, v in answer.fields]
                bad = v2_sign(dict(other), answer.key, answer.sign_type)
            else:
                bad = secrets.token_hex(16).upper()
            return reply(200, XML_CT, render_xml([*answer.fields, ("sign", bad)]))
        if kind == F.TAMPERED_BODY:
            names = [k for k, _ in signed]
            target = "coupon_name" if "coupon_name" in names else "return_msg"
            tampered = [(k, v + "(改)" if k == target else v) for k, v in signed]
            return reply(200, XML_CT, render_xml(tampered))
        raise AssertionError(f"unhandled v2 fault {kind}")  # pragma: no cover


__all__ = ["V2_ERR_CODE_DES", "V2Handler"]

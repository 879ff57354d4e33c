"""A legacy script written against wechatpy, as merchants ran it before the shim existed.

It checks a coupon stock, handles a missing one as a WeChatPayException, and queries an order
with another wechatpy API group. Tests run it unchanged but for its wechatpy import.
"""

import json
import os

from wechatpy.exceptions import WeChatPayException
from wechatpy.pay import WeChatPay


def main():
    pay = WeChatPay(
        os.environ["WECHAT_APPID"],
        os.environ["WECHAT_API_KEY"],
        os.environ["WECHAT_MCH_ID"],
        timeout=10,
    )
    report = {}

    stock = pay.coupon.query_stock("1757")
    report["stock"] = {k: v for k, v in stock.items() if k not in ("nonce_str", "sign")}
    report["stock_signed"] = len(stock["sign"]) == 32 and len(stock["nonce_str"]) > 0

    official = pay.coupon.query_stock(
        1717, op_user_id=os.environ["WECHAT_MCH_ID"], device_info="013467007045764"
    )
    report["official"] = {k: v for k, v in official.items() if k not in ("nonce_str", "sign")}

    try:
        pay.coupon.query_stock("98765432")
    except WeChatPayException as exc:
        report["missing"] = {
            "type": type(exc).__name__,
            "return_code": exc.return_code,
            "result_code": exc.result_code,
            "return_msg": exc.return_msg,
            "errcode": exc.errcode,
            "errmsg": exc.errmsg,
            "str": str(exc),
        }
    else:
        report["missing"] = "no exception"

    order = pay.order.query(out_trade_no="1217752501201407033233368018")
    report["order"] = {"trade_state": order["trade_state"], "out_trade_no": order["out_trade_no"]}
    return report


if __name__ == "__main__":
    print(json.dumps(main(), ensure_ascii=False, sort_keys=True))

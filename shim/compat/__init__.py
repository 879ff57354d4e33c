"""Drop-ins for code written against other WeChat Pay clients.

- :mod:`shim.compat.wechatpy`: ``from shim.compat.wechatpy import WeChatPay`` instead of
  ``from wechatpy.pay import WeChatPay`` (needs the ``wechatpy`` extra).
"""

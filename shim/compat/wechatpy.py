"""A drop-in for ``wechatpy.pay.WeChatPay`` whose coupon stock query goes through the shim.

Change one import::

    # from wechatpy.pay import WeChatPay
    from shim.compat.wechatpy import WeChatPay

    pay = WeChatPay(appid, api_key, mch_id)          # the same constructor
    stock = pay.coupon.query_stock("1757")           # routed, mapped, re-signed by the shim
    pay.order.query(out_trade_no="...")              # every other API group: wechatpy itself

:class:`WeChatPay` *is* a ``wechatpy.pay.WeChatPay`` (a subclass): ``order``, ``refund``,
``coupon.send``, ``jsapi``… work unchanged. Only ``coupon.query_stock(stock_id, op_user_id=None,
device_info=None)`` is served by a :class:`~shim._client.CouponStockShim` (routing, v3 mapping,
re-signing with the v2 key) and then keeps wechatpy's contract: it returns the answer dict
(every value a string) when ``return_code`` and ``result_code`` are ``SUCCESS``, and raises
``wechatpy.exceptions.WeChatPayException`` with the same ``return_code``, ``result_code``,
``return_msg``, ``errcode`` and ``errmsg`` otherwise.

Where the shim's configuration comes from (the keyword-only ``shim=`` argument):

1. ``shim=None`` (the default, so the import is the only change): the file named by
   ``COUPON_SHIM_CONFIG``, else ``./shim.toml``, shared with :func:`shim.query_coupon_stock`;
   with neither, a configuration derived from the constructor (``appid``, ``api_key``,
   ``mch_id``, ``API_BASE_URL``): legacy only, as wechatpy itself would call;
2. ``shim="path/to/shim.toml"``: that file (watched and reloaded);
3. ``shim={...}``: settings in ``shim.toml``'s shape laid over the derived configuration, the
   merchant's table under ``"merchant"`` (``v3_private_key``, ``v3_cert_serial``,
   ``wechatpay_public_key``…); ``appid`` and ``v2_key`` always come from the constructor;
4. ``shim=CouponStockShim(...)``: a shim you built (and close).

A config file must hold a ``[merchants."<mch_id>"]`` table whose ``v2_key`` is the ``api_key``
given to the constructor (a mismatch is a :class:`~shim._errors.ConfigError`, never a silent
re-sign with another key). Shims are shared per process (one pooled client per configuration,
however many ``WeChatPay`` objects are built), rebuilt in a forked child and closed at exit.

The constructor's options:

- ``timeout``: bounds each upstream attempt (a number, or requests' ``(connect, read)``
  pair) and the whole call, retries and fallback included. ``None`` (wechatpy's default, no
  timeout) leaves the shim config's timeouts in force: the shim never waits forever.
- ``sandbox=True``: like wechatpy, the query goes to WeChat Pay's v2 sandbox
  (``…/sandboxnew/mmpaymkttransfers/query_coupon_stock``) signed with the sandbox key wechatpy
  fetches; v3 has no sandbox, so the legacy route always serves.
- ``sub_mch_id``, ``mch_cert``/``mch_key``: this API takes neither (no client certificate is
  needed); they still apply to every other API group.

Errors that are not answers keep wechatpy's types as well, each raised ``from`` the shim's
typed error (``__cause__``): a timeout is ``requests.exceptions.ReadTimeout``, a connection
failure ``requests.exceptions.ConnectionError``, and any other unusable answer (an HTTP error
status, a forged or unparsable answer, an open circuit, an unmappable v3 answer) a
``WeChatPayException`` with ``return_code=None`` — where wechatpy would have handed back an
unparsable body as a string, the shim refuses it. Invalid arguments raise
:class:`~shim._errors.InputError` (a ``ValueError``) before any request is sent.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import os
import threading
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

try:
    import requests
    from wechatpy.exceptions import WeChatPayException
    from wechatpy.pay import WeChatPay as _WeChatPay
    from wechatpy.pay.api import WeChatCoupon as _WeChatCoupon
except ImportError as exc:  # pragma: no cover - exercised without the extra only
    raise ImportError(
        "shim.compat.wechatpy needs wechatpy: pip install 'coupon-shim[wechatpy]'"
    ) from exc

from shim._client import CouponStockShim
from shim._default import CONFIG_ENV, DEFAULT_CONFIG_FILE, REGISTRY, default_config_path
from shim._errors import ConfigError, InputError, MappingError, UpstreamError
from shim._live import LiveConfig
from shim._loader import parse_config
from shim._values import Secret, ShimConfig

__all__ = ["WeChatPay", "WeChatPayException"]

_KEY_ENV = "COUPON_SHIM_WECHATPY_API_KEY"  # a private env entry: keeps api_key out of the data
_DERIVED_SOURCE = "WeChatPay(shim={...})"
_CONSTRUCTOR_KEYS = frozenset({"appid", "v2_key"})


@dataclass(frozen=True)
class _File:
    path: Path


@dataclass(frozen=True, repr=False)
class _Derived:
    settings: Mapping[str, Any]  # may hold literal secrets: never shown
    fingerprint: str

    def __repr__(self) -> str:
        return f"_Derived(settings=<{len(self.settings)} tables>)"


@dataclass(frozen=True)
class _Given:
    shim: CouponStockShim


_Source = _File | _Derived | _Given


def _resolve_source(shim: Any) -> _Source:
    """Decide where the shim's configuration comes from (no file is parsed here)."""
    if isinstance(shim, CouponStockShim):
        return _Given(shim)
    if isinstance(shim, str | os.PathLike):
        path = Path(shim).expanduser().absolute()
        if not path.is_file():
            raise ConfigError("config file does not exist", source=str(shim))
        return _File(path)
    if isinstance(shim, Mapping):
        settings = copy.deepcopy(dict(shim))
        if "merchants" in settings:
            raise ConfigError(
                "give the merchant's settings under \"merchant\" (its id is the constructor's "
                "mch_id)",
                source=_DERIVED_SOURCE,
                key="merchants",
            )
        merchant = settings.get("merchant", {})
        if not isinstance(merchant, Mapping):
            raise ConfigError("must be a table", source=_DERIVED_SOURCE, key="merchant")
        for name in sorted(_CONSTRUCTOR_KEYS & set(merchant)):
            raise ConfigError(
                "comes from the WeChatPay constructor",
                source=_DERIVED_SOURCE,
                key=f"merchant.{name}",
            )
        return _Derived(MappingProxyType(settings), _fingerprint(_canonical(settings)))
    if shim is not None:
        raise TypeError(
            "shim= takes a config file path, a dict of settings or a CouponStockShim, "
            f"not {type(shim).__name__}"
        )
    if os.environ.get(CONFIG_ENV):
        return _File(default_config_path())  # names the missing file if it is missing
    local = Path.cwd() / DEFAULT_CONFIG_FILE
    if local.is_file():
        return _File(local)
    return _Derived(MappingProxyType({}), _fingerprint(_canonical({})))


_Timeout = tuple[float | None, float | None, bool]


def _timeout_pair(timeout: Any) -> _Timeout | None:
    """requests' ``timeout`` as (connect, read, was_a_pair); None: the config's timeouts."""
    if timeout is None:
        return None
    pair = isinstance(timeout, tuple)
    parts = timeout if pair else (timeout, timeout)
    if len(parts) != 2:
        raise InputError("must be a number of seconds or a (connect, read) pair", field="timeout")
    out: list[float | None] = []
    for part in parts:
        if part is None:
            out.append(None)
            continue
        if isinstance(part, bool) or not isinstance(part, int | float) or not part > 0:
            raise InputError(f"must be a positive number of seconds, got {part!r}", field="timeout")
        out.append(float(part))
    return out[0], out[1], pair


class _Overlay(LiveConfig):
    """A live config seen through a transform (the caller's timeout, the v2 sandbox).

    Reloads of the underlying config still apply: each new snapshot is transformed once.
    """

    def __init__(self, inner: LiveConfig, transform: Callable[[ShimConfig], ShimConfig]) -> None:
        base = inner.current()
        first = transform(base)
        super().__init__(config=first)
        self._inner = inner
        self._transform = transform
        self._pair = (base, first)
        self._pair_lock = threading.Lock()

    @property
    def path(self) -> Path | None:
        """The watched file, if any."""
        return self._inner.path

    def current(self) -> ShimConfig:
        """The underlying snapshot in force, transformed."""
        base = self._inner.current()
        pair = self._pair
        if pair[0] is not base:
            with self._pair_lock:
                pair = self._pair
                if pair[0] is not base:
                    pair = self._pair = (base, self._transform(base))
        return pair[1]

    def check(self) -> bool:
        """Check the underlying config for changes now."""
        return self._inner.check()


def _overlay(
    timeout: _Timeout | None, sandbox_key: str | None, mch_id: str
) -> Callable[[ShimConfig], ShimConfig] | None:
    if timeout is None and sandbox_key is None:
        return None

    def apply(cfg: ShimConfig) -> ShimConfig:
        if timeout is not None:
            connect = timeout[0] if timeout[0] is not None else cfg.upstream.connect_timeout_s
            read = timeout[1] if timeout[1] is not None else cfg.upstream.timeout_s
            # one number bounds the whole call, as one wechatpy request would be bounded;
            # a (connect, read) pair bounds it by their sum
            budget = connect + read if timeout[2] else read
            cfg = replace(
                cfg,
                upstream=replace(
                    cfg.upstream, connect_timeout_s=connect, timeout_s=read, budget_s=budget
                ),
            )
        if sandbox_key is not None:
            # WeChat Pay's sandbox is v2 only: every call goes to legacy, at the sandbox URL,
            # signed with the sandbox key.
            merchants = {m: replace(c, v3=None) for m, c in cfg.merchants.items()}
            if mch_id in merchants:
                merchants[mch_id] = replace(
                    merchants[mch_id], v2_key=Secret(sandbox_key, "wechatpy sandbox key")
                )
            cfg = replace(
                cfg,
                upstream=replace(
                    cfg.upstream, v2_base_url=cfg.upstream.v2_base_url + "/sandboxnew"
                ),
                routing=replace(
                    cfg.routing,
                    mode="legacy",
                    force_v3_mch_ids=frozenset(),
                    force_v3_stock_ids=frozenset(),
                    flag_source="config",
                    canary_shadow=False,
                    fallback_to_v3=False,
                ),
                merchants=MappingProxyType(merchants),
            )
        return cfg

    return apply


def _canonical(settings: Mapping[str, Any]) -> str:
    return json.dumps(settings, sort_keys=True, default=str)


def _fingerprint(secret: str) -> str:
    # Registry keys never leave the process, but a key still never holds a secret itself.
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


class _KeyEnv(Mapping[str, str]):
    """``os.environ`` plus the constructor's api_key under a private name; never shown."""

    def __init__(self, api_key: str) -> None:
        self._api_key = api_key

    def __getitem__(self, name: str) -> str:
        return self._api_key if name == _KEY_ENV else os.environ[name]

    def __iter__(self) -> Iterator[str]:
        yield _KEY_ENV
        yield from os.environ

    def __len__(self) -> int:
        return len(os.environ) + 1

    def __repr__(self) -> str:
        return "<environment with the WeChatPay api_key>"


def _same_key(configured: Secret, given: Any) -> bool:
    return hmac.compare_digest(configured.reveal().encode("utf-8"), str(given).encode("utf-8"))


def _failure(answer: Mapping[str, str]) -> tuple[str | None, ...] | None:
    """wechatpy's exception arguments when it would raise for ``answer``, else None."""
    return_code = answer.get("return_code")
    result_code = answer.get("result_code")
    if return_code == "SUCCESS" and result_code == "SUCCESS":
        return None
    return (
        return_code,
        result_code,
        answer.get("return_msg"),
        answer.get("err_code"),
        answer.get("err_code_des"),
    )


def _text(value: Any) -> Any:
    """wechatpy formats ints into the XML; the shim takes strings."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


class _ShimCoupon(_WeChatCoupon):  # type: ignore[misc]
    """wechatpy's coupon API group; ``query_stock`` goes through the shim."""

    def query_stock(
        self, stock_id: Any, op_user_id: Any = None, device_info: Any = None
    ) -> dict[str, str]:
        """查询代金券批次: wechatpy's call, served by the shim (see :mod:`shim.compat.wechatpy`).

        Args:
            stock_id: 代金券批次 ID.
            op_user_id: 可选，操作员账号，默认为商户号.
            device_info: 可选，微信支付分配的终端设备号.

        Returns:
            The v2 answer dict (every value a string).

        Raises:
            WeChatPayException: ``return_code`` or ``result_code`` is not ``SUCCESS``, or no
                usable answer came back (``return_code=None``).
            requests.exceptions.ReadTimeout: the call ran out of time.
            requests.exceptions.ConnectionError: WeChat Pay could not be reached.
            InputError: an argument is invalid (nothing is sent).
            ConfigError: the shim's configuration cannot serve this merchant.
        """
        client: WeChatPay = self._client
        return client._shim_query_stock(stock_id, op_user_id, device_info)


class WeChatPay(_WeChatPay):  # type: ignore[misc]
    """``wechatpy.pay.WeChatPay`` whose ``coupon.query_stock`` is served by coupon-shim.

    Args:
        appid: the official account's or app's appid (wechatpy's).
        api_key: the merchant's v2 API key (wechatpy's); the shim signs with the same key.
        mch_id: the merchant id (wechatpy's).
        sub_mch_id, sub_appid: the sub-merchant's ids (wechatpy's; not used by the coupon
            stock query).
        mch_cert, mch_key: paths of the merchant's client certificate and key (wechatpy's;
            not used by the coupon stock query).
        timeout: seconds, or a (connect, read) pair (requests' form; see the module
            docstring for how the coupon stock query uses it).
        sandbox: use WeChat Pay's v2 sandbox (see the module docstring).
        shim: where the shim's configuration comes from: ``None`` (``COUPON_SHIM_CONFIG``,
            else ``./shim.toml``, else derived from the constructor), a config file path, a
            dict of settings laid over the derived configuration, or a ``CouponStockShim``.

    Raises:
        ConfigError: the config file named (or by ``COUPON_SHIM_CONFIG``) does not exist, or
            the settings are malformed.
        InputError: ``timeout`` is not a positive number or a (connect, read) pair.
    """

    coupon = _ShimCoupon()

    def __init__(
        self,
        appid: str,
        api_key: str,
        mch_id: str,
        sub_mch_id: str | None = None,
        mch_cert: str | None = None,
        mch_key: str | None = None,
        timeout: float | tuple[float | None, float | None] | None = None,
        sandbox: bool = False,
        sub_appid: str | None = None,
        *,
        shim: str | os.PathLike[str] | Mapping[str, Any] | CouponStockShim | None = None,
    ) -> None:
        super().__init__(
            appid,
            api_key,
            mch_id,
            sub_mch_id=sub_mch_id,
            mch_cert=mch_cert,
            mch_key=mch_key,
            timeout=timeout,
            sandbox=sandbox,
            sub_appid=sub_appid,
        )
        self._shim_source: _Source = _resolve_source(shim)
        self._shim_timeout = _timeout_pair(timeout)
        if sandbox and isinstance(self._shim_source, _Given):
            raise ConfigError(
                "sandbox=True needs a configuration the shim can point at the v2 sandbox: "
                "pass a config file path or settings, not a CouponStockShim"
            )

    # ------------------------------------------------------------------ the shim behind it

    def _coupon_shim(self) -> CouponStockShim:
        """The (shared) shim serving this client's coupon stock queries."""
        source = self._shim_source
        if isinstance(source, _Given):
            return source.shim
        mch_id = str(self.mch_id)
        sandbox_key = str(self.sandbox_api_key) if self.sandbox else None
        transform = _overlay(self._shim_timeout, sandbox_key, mch_id)
        extra: tuple[Hashable, ...] = ()
        if transform is not None:
            extra = (self._shim_timeout, _fingerprint(sandbox_key) if sandbox_key else None)
        if isinstance(source, _File):
            path = source.path

            def from_file() -> CouponStockShim:
                live = LiveConfig(path)
                return CouponStockShim(live if transform is None else _Overlay(live, transform))

            return REGISTRY.sync(("file", str(path), *extra), from_file)
        base = str(self.API_BASE_URL).rstrip("/")
        key = (
            "wechatpy",
            base,
            mch_id,
            str(self.appid),
            _fingerprint(str(self.api_key)),
            source.fingerprint,
            *extra,
        )

        def derived() -> CouponStockShim:
            cfg = self._derived_config(base, source)
            if transform is None:
                return CouponStockShim(cfg)
            return CouponStockShim(_Overlay(LiveConfig(config=cfg), transform))

        return REGISTRY.sync(key, derived)

    def _derived_config(self, base: str, source: _Derived) -> ShimConfig:
        if not isinstance(self.api_key, str) or not self.api_key:
            raise ConfigError("api_key must be a non-empty string", source=_DERIVED_SOURCE)
        if not isinstance(source.settings.get("upstream", {}), Mapping):
            raise ConfigError("must be a table", source=_DERIVED_SOURCE, key="upstream")
        # The data is passed, not kept in a local: settings may hold literal secrets.
        return parse_config(
            self._derived_data(base, source.settings),
            source=_DERIVED_SOURCE,
            base_dir=Path.cwd(),
            env=_KeyEnv(self.api_key),
        )

    def _derived_data(self, base: str, settings: Mapping[str, Any]) -> dict[str, Any]:
        data = copy.deepcopy(dict(settings))
        merchant = dict(data.pop("merchant", {}))
        merchant["appid"] = "" if self.appid is None else str(self.appid)
        merchant["v2_key"] = "env:" + _KEY_ENV
        merchant.setdefault("v2_sign_type", "MD5")  # what wechatpy signs this call with
        data["upstream"] = {"v2_base_url": base, "v3_base_url": base, **data.get("upstream", {})}
        data["merchants"] = {str(self.mch_id): merchant}
        return data

    def _check_merchant(self, shim: CouponStockShim, mch_id: str) -> None:
        snapshot = shim.config
        merchant = snapshot.merchants.get(mch_id)
        if merchant is not None and (self.sandbox or _same_key(merchant.v2_key, self.api_key)):
            return  # (in the sandbox, calls are signed with the sandbox key)
        source = str(snapshot.source) if snapshot.source is not None else "the shim config"
        if merchant is None:
            raise ConfigError(
                f'no merchant {mch_id} in the shim config: add a [merchants."{mch_id}"] '
                "table (appid, v2_key, v3 credentials)",
                source=source,
            )
        raise ConfigError(
            "differs from the api_key given to WeChatPay (the shim would sign with "
            "another key than the caller's)",
            source=source,
            key=f'merchants."{mch_id}".v2_key',
        )

    def _shim_query_stock(self, stock_id: Any, op_user_id: Any, device_info: Any) -> dict[str, str]:
        shim = self._coupon_shim()
        mch_id = str(self.mch_id)
        self._check_merchant(shim, mch_id)
        try:
            answer = shim.query_coupon_stock(
                coupon_stock_id=_text(stock_id),
                appid=None if self.appid is None else str(self.appid),
                mch_id=mch_id,
                op_user_id=_text(op_user_id),
                device_info=_text(device_info),
                version="1.0",
                type="XML",
            )
        except UpstreamError as err:
            if err.kind in ("timeout", "budget"):
                raise requests.exceptions.ReadTimeout(str(err)) from err
            if err.kind == "connection":
                raise requests.exceptions.ConnectionError(str(err)) from err
            raise WeChatPayException(None, return_msg=str(err), client=self) from err
        except MappingError as err:
            raise WeChatPayException(None, return_msg=str(err), client=self) from err
        failure = _failure(answer)
        if failure is not None:
            del answer  # no answer signature in this frame's locals
            raise WeChatPayException(*failure, client=self)
        return dict(answer)

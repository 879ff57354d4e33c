"""The one redactor: which names are secret, what text looks secret, and how any value
(strings, bytes, containers, objects whose ``repr`` carries a secret) is redacted.

One implementation and one pattern set for every user: the structlog processor
:func:`redact_secrets` (on the library's own log path and in the CLI's and gateway's chains),
the CLI's and gateway's plain-text messages (:func:`redact_text`), report labels, shadow diffs
(:func:`shim._diff.is_secret_field`) and every ``repr`` that could otherwise show a key, a
signature or an ``Authorization`` header. :func:`redact_secrets` is a plain structlog processor:
add it to your own processor chain and no key, signature or Authorization header leaves the
process in an event, even one some other code logged by mistake. Pure: no I/O, no logging.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable, Coroutine, Mapping, MutableMapping
from types import FrameType
from typing import Any, Final, ParamSpec, TypeVar

__all__ = [
    "REDACTED",
    "is_secret_name",
    "redact_secrets",
    "redact_text",
    "redact_value",
    "scrub_traceback",
    "scrubs_locals",
    "scrubs_locals_async",
]

REDACTED: Final = "<redacted>"

# A name is secret when, lower-cased with separators removed (``paySign`` -> ``paysign``,
# ``Wechatpay-Signature`` -> ``wechatpaysignature``), it ends in one of these...
_SECRET_SUFFIXES: Final = (
    "sign",
    "signature",
    "key",
    "secret",
    "authorization",
    "password",
    "passwd",
    "token",
    "pem",
    "credential",
    "credentials",
)
# ... or contains one of these anywhere.
_SECRET_PARTS: Final = ("signature", "authorization", "privatekey", "password", "secret", "apikey")
_SEPARATORS: Final = re.compile(r"[^a-z0-9]")

# A secret-named item inside text: ``sign=ABC``, ``"paySign": "ABC"``, ``v2_key='abc'``,
# ``signature="..."``, ``Authorization: WECHATPAY2...``. The name must end in a secret word
# (``sign_type=MD5`` is not one).
_NAME_WORDS: Final = "|".join(sorted({*_SECRET_SUFFIXES, "paysign"}, key=len, reverse=True))
_ITEM: Final = re.compile(
    rf"""(?P<name>\b[A-Za-z0-9_\-]*(?:{_NAME_WORDS}))(?P<q>['"]?)\s*[:=]\s*"""
    r"""(?:b?(?P<v>['"])(?:(?!(?P=v)).)*(?P=v)?|[^&\s,;)}\]<>'"]{6,})""",
    re.IGNORECASE | re.DOTALL,
)
_PATTERNS: Final = (
    # Authorization header values (v3), to the end of the line
    re.compile(r"WECHATPAY2-SHA256-RSA2048\s+[^\n]*", re.IGNORECASE),
    # PEM blocks (a cut-off one to the end of the text)
    re.compile(r"-----BEGIN [A-Z ]+-----.*?(-----END [A-Z ]+-----|$)", re.DOTALL),
    # <sign>…</sign>, <paySign>…</paySign> and other secret-named XML elements
    re.compile(r"<(\w*(?:sign|key|signature))>.*?(</\1>|$)", re.IGNORECASE | re.DOTALL),
    # Bare long Base64 runs (an RSA-2048 signature is 344 characters)
    re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{120,}={0,2}"),
)
# Text in which none of the patterns above can match, found with one search: each branch is
# a part that every match of one pattern contains (most logged text, such as event names,
# routes and timestamps, has none, and is then returned as it is).
_TRIGGER: Final = re.compile(
    r"wechatpay2-sha256|-----begin|<\w*(?:sign|key|signature)>|[A-Za-z0-9+/]{120}"
    rf"""|(?:{_NAME_WORDS})['"]?\s*[:=]""",
    re.IGNORECASE,
)
# The cheaper pre-check in front of _TRIGGER, for ASCII text shorter than a Base64 run: each
# secret name word contains one of these parts (``paysign`` and ``signature`` contain
# ``sign``, ``credentials`` contains ``credential``; checked at import below), so text that
# holds none of them, nor ``<``, ``wechatpay2-sha256`` or ``-----begin``, cannot match.
_WORD_PARTS: Final = (
    "sign",
    "key",
    "secret",
    "authorization",
    "password",
    "passwd",
    "token",
    "pem",
    "credential",
)
if not all(any(part in word for part in _WORD_PARTS) for word in _NAME_WORDS.split("|")):
    raise AssertionError("every secret name word must contain one of _WORD_PARTS")
_BASE64_RUN: Final = 120
_MAX_DEPTH: Final = 8
_PLAIN: Final = (int, float, bool, type(None))
#: is_secret_name's answers for names seen (event keys repeat on every event); bounded.
_SECRET_NAMES: dict[str, bool] = {}
_SECRET_NAMES_MAX: Final = 4096


def is_secret_name(name: object) -> bool:
    """True for field, header or attribute names whose values must never be shown.

    Case-insensitive and separator-blind: ``sign``, ``paySign``, ``signature``,
    ``Wechatpay-Signature``, ``key``, ``v2_key``, ``api_key``, ``private_key``, ``secret``,
    ``authorization``, ``password``, ``token`` and the like. ``sign_type`` is not secret.
    """
    if type(name) is str:
        known = _SECRET_NAMES.get(name)
        if known is not None:
            return known
        secret = _is_secret_name(name)
        if len(_SECRET_NAMES) >= _SECRET_NAMES_MAX:
            _SECRET_NAMES.clear()
        _SECRET_NAMES[name] = secret
        return secret
    if isinstance(name, (bytes, bytearray)):
        name = bytes(name).decode("latin-1")
    if not isinstance(name, str):
        return False
    return _is_secret_name(name)


def _is_secret_name(name: str) -> bool:
    compact = _SEPARATORS.sub("", name.lower())
    if not compact:
        return False
    return compact.endswith(_SECRET_SUFFIXES) or any(p in compact for p in _SECRET_PARTS)


def _item(match: re.Match[str]) -> str:
    return f"{match.group('name')}{match.group('q')}={REDACTED}"


def _may_hold_secret(text: str) -> bool:
    """False only when no pattern can match ``text`` (True: ask :data:`_TRIGGER`).

    A few ``in`` tests on the lower-cased text, for ASCII text shorter than a Base64 run
    (``re.IGNORECASE`` also folds non-ASCII letters such as U+017F into ASCII ones, which
    ``str.lower`` does not: such text always goes to the full search).
    """
    if len(text) >= _BASE64_RUN or not text.isascii():
        return True
    if "<" in text:
        return True
    low = text.lower()
    if "wechatpay2-sha256" in low or "-----begin" in low:
        return True
    if "=" not in text and ":" not in text:
        return False  # no secret-named item without its ``=`` or ``:``
    for part in _WORD_PARTS:  # noqa: SIM110 - a plain loop: no generator per call
        if part in low:
            return True
    return False


def redact_text(text: str) -> str:
    """Replace anything in ``text`` that looks like a key, a signature or an Authorization."""
    if not _may_hold_secret(text) or _TRIGGER.search(text) is None:
        return text  # nothing any pattern could match
    return _redact_all(text)


def _redact_all(text: str) -> str:
    for pattern in _PATTERNS:
        text = pattern.sub(REDACTED, text)
    return _ITEM.sub(_item, text)


def _redact(value: Any, depth: int) -> Any:
    if isinstance(value, _PLAIN):
        return value
    if depth > _MAX_DEPTH:
        return REDACTED
    if isinstance(value, str):
        return redact_text(value) if len(value) > 8 else value
    if isinstance(value, (bytes, bytearray, memoryview)):
        text = bytes(value).decode("utf-8", "replace")
        clean = redact_text(text)
        return value if clean == text else clean
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if is_secret_name(k) else _redact(v, depth + 1)) for k, v in value.items()
        }
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [_redact(v, depth + 1) for v in items]
    if isinstance(value, BaseException):
        return redact_text(f"{type(value).__name__}: {value}")
    try:
        shown = repr(value)
    except Exception:  # a broken __repr__ must not break logging
        return f"<{type(value).__name__}>"
    clean = redact_text(shown)
    return value if clean == shown else clean


def redact_value(value: Any) -> Any:
    """``value`` with every secret redacted.

    Strings and bytes are scrubbed of secret-looking text; mappings lose the values of
    secret-named keys (:func:`is_secret_name`) and are redacted recursively, as are lists,
    tuples and sets (returned as lists); an object whose ``repr`` carries a secret is replaced
    by its redacted ``repr``. Numbers, booleans and None pass unchanged; nesting deeper than 8
    levels is redacted whole.
    """
    return _redact(value, 0)


def redact_secrets(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: blank secret-named keys and secret-looking text in every value.

    Values of secret-named keys (``sign``, ``paySign``, ``signature``, ``key``,
    ``authorization``, ``private_key``, … in any case) are replaced whole; every other value is
    scrubbed with :func:`redact_value` (strings, bytes, lists, tuples, sets, nested mappings,
    and objects whose ``repr`` carries a secret).
    """
    for k, v in list(event_dict.items()):
        secret = _SECRET_NAMES.get(k) if type(k) is str else None
        if secret is None:
            secret = is_secret_name(k)
        if secret:
            event_dict[k] = REDACTED
        elif type(v) is str:  # the common case, as _redact does it, without its dispatch
            if len(v) > 8 and _may_hold_secret(v) and _TRIGGER.search(v) is not None:
                event_dict[k] = _redact_all(v)
        elif not isinstance(v, _PLAIN):
            event_dict[k] = _redact(v, 0)
    return event_dict


# ---------------------------------------------------------------------------- traceback locals
#
# Error reporters that capture frame locals (Sentry does by default, so does
# ``traceback.TracebackException(..., capture_locals=True)``) read every local of every frame an
# exception passed through, at the time they report it. The shim's own frames hold what they
# work on: v2 keys about to sign, signed request fields, Authorization headers, answer signatures.
# Every public entry point therefore clears the locals of the shim's own finished frames in the
# traceback of any error it lets out (the stack itself, file, line and function, stays), and the
# values that must survive (requests, answers, credentials) have redacted reprs.

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _is_shim_frame(frame: FrameType) -> bool:
    name = frame.f_globals.get("__name__", "")
    return isinstance(name, str) and (name == "shim" or name.startswith("shim."))


def scrub_traceback(exc: BaseException) -> BaseException:
    """Clear the local variables of the shim's own frames in ``exc``'s tracebacks.

    Walks ``exc``, its ``__cause__`` and ``__context__`` chains; frames of other code (the
    application, libraries) keep their locals, and frames still executing (the entry point
    that is raising) are left as they are. Returns ``exc``.
    """
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        tb = current.__traceback__
        while tb is not None:
            if _is_shim_frame(tb.tb_frame):
                # RuntimeError: the frame is still executing (the raising entry point)
                with contextlib.suppress(RuntimeError):
                    tb.tb_frame.clear()
            tb = tb.tb_next
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                pending.append(linked)
    return exc


def scrubs_locals(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Decorate a public entry point: errors it lets out carry no shim frame locals."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(*args, **kwargs)
        except BaseException as exc:
            scrub_traceback(exc)
            raise

    return wrapper


def scrubs_locals_async(
    fn: Callable[_P, Coroutine[Any, Any, _R]],
) -> Callable[_P, Coroutine[Any, Any, _R]]:
    """:func:`scrubs_locals` for coroutine functions."""

    @functools.wraps(fn)
    async def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return await fn(*args, **kwargs)
        except BaseException as exc:
            scrub_traceback(exc)
            raise

    return wrapper

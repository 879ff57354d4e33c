"""The shim's exception hierarchy: stable, typed, and free of secrets.

::

    ShimError                      every error the shim raises on purpose
    ├── ConfigError                a config or mapping file is wrong (names file and key)
    ├── InputError (ValueError)    a caller's argument is invalid; raised before any network call
    ├── UpstreamError              the chosen upstream did not give a usable answer
    │   │                          (route = "legacy" | "v3"; kind = timeout | connection |
    │   │                           http_status | protocol | circuit_open | budget)
    │   └── SignatureError         an answer's signature is bad, missing, stale or unknown:
    │                              the answer is refused, never passed off as data
    ├── MappingError               a verified v3 answer could not be mapped onto the v2 dict
    └── LocalError                 the call never got a fair try upstream, for a reason local
        │                          to this process; never retried, never fallen back from,
        │                          never counted by a circuit breaker (.route = the route)
        ├── OverloadError          local congestion: no admission slot ([upstream]
        │                          max_in_flight) or pooled connection came free within the
        │                          call's budget
        └── ClosedError            the shim is closed (close()/aclose()), or closed under
                                   the call

Every message says what happened and what to do about it. No message, ``repr`` or
attribute of these exceptions ever carries a key, a signature or an Authorization header:
callers may log them as they are.
"""

from __future__ import annotations

from typing import Literal

Route = Literal["legacy", "v3"]
UpstreamKind = Literal["timeout", "connection", "http_status", "protocol", "circuit_open", "budget"]

#: Kinds of upstream failure that are transient: worth a retry and a routing fallback.
TRANSIENT_KINDS: frozenset[str] = frozenset({"timeout", "connection", "circuit_open", "budget"})

__all__ = [
    "TRANSIENT_KINDS",
    "ClosedError",
    "ConfigError",
    "InputError",
    "LocalError",
    "MappingError",
    "OverloadError",
    "Route",
    "ShimError",
    "SignatureError",
    "UpstreamError",
    "UpstreamKind",
]


class ShimError(Exception):
    """Base class of every error the shim raises on purpose."""


class ConfigError(ShimError):
    """A configuration (or mapping) file is invalid.

    Attributes:
        source: the file (or other source, e.g. an environment variable) at fault.
        key: the dotted key at fault, when there is one.
    """

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None):
        self.source = source
        self.key = key
        where = ""
        if source and key:
            where = f"{source}: {key}: "
        elif source:
            where = f"{source}: "
        elif key:
            where = f"{key}: "
        super().__init__(f"{where}{message}")


class InputError(ShimError, ValueError):
    """A caller's argument is invalid. Raised before any network call.

    Attributes:
        field: the v2 request field at fault.
    """

    def __init__(self, message: str, *, field: str | None = None):
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class UpstreamError(ShimError):
    """The upstream of ``route`` did not give a usable answer.

    Attributes:
        route: ``"legacy"`` (the v2 endpoint) or ``"v3"``.
        kind: ``timeout``, ``connection``, ``http_status``, ``protocol``, ``circuit_open``
            or ``budget`` (the call's total time budget ran out).
        status: the HTTP status, when an answer arrived.
        code: the upstream's error code (v3 ``code``), when it sent one.
        request_id: the upstream's ``Request-ID``, for support tickets.
    """

    def __init__(
        self,
        message: str,
        *,
        route: Route,
        kind: UpstreamKind,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
    ):
        self.route: Route = route
        self.kind: UpstreamKind = kind
        self.status = status
        self.code = code
        self.request_id = request_id
        super().__init__(f"[{route}] {message}")

    @property
    def transient(self) -> bool:
        """True when a retry or a fallback to the other route may succeed."""
        if self.kind in TRANSIENT_KINDS:
            return True
        return (
            self.kind == "http_status"
            and self.status is not None
            and (self.status == 429 or self.status >= 500)
        )


class SignatureError(UpstreamError):
    """An upstream answer failed signature or freshness verification and was refused."""

    def __init__(
        self,
        message: str,
        *,
        route: Route,
        status: int | None = None,
        request_id: str | None = None,
    ):
        super().__init__(
            message, route=route, kind="protocol", status=status, request_id=request_id
        )

    @property
    def transient(self) -> bool:
        """Signature failures are never retried: a forged or broken answer is not transient."""
        return False


class MappingError(ShimError):
    """A verified v3 answer could not be mapped onto the v2 dict (or a mapping is unusable).

    Attributes:
        v2_key: the v2 key being filled, when known.
    """

    def __init__(self, message: str, *, v2_key: str | None = None):
        self.v2_key = v2_key
        super().__init__(f"{v2_key}: {message}" if v2_key else message)


class LocalError(ShimError):
    """The call got no fair try upstream, for a reason local to this process.

    Never an upstream's fault: it is not retried, not fallen back from and never counted by
    a circuit breaker.

    Attributes:
        route: the route the call was on (``"legacy"`` or ``"v3"``), when known.
    """

    def __init__(self, message: str, *, route: Route | None = None):
        self.route: Route | None = route
        super().__init__(f"[{route}] {message}" if route else message)


class OverloadError(LocalError):
    """Local congestion: no admission slot (``[upstream] max_in_flight``) or pooled
    connection came free within the call's budget. Shed load or raise the limit."""


class ClosedError(LocalError):
    """The shim was closed (``close()``/``aclose()``) before or during the call."""

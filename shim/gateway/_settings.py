"""The ``[gateway]`` table of ``shim.toml``: how ``coupon-shim serve`` listens and protects itself.

Read once at start-up (a change needs a restart; the rest of the file, routing and merchants
included, reloads live as in the library). Every key is optional; ``--host``, ``--port``,
``--workers`` and the ``--ssl-*`` flags override the file.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from shim._errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = ["GatewaySettings", "load_gateway_settings", "parse_gateway_settings"]

_CERT_REQS = {"none": 0, "optional": 1, "required": 2}


@dataclass(frozen=True, kw_only=True, repr=False)
class GatewaySettings:
    """How the gateway listens, what it accepts and how it stops.

    Attributes:
        host: bind address (loopback unless told otherwise).
        port: TCP port.
        workers: uvicorn worker processes.
        max_request_bytes: larger request bodies are refused with 413 (query and passthrough).
        max_concurrency: requests (query and passthrough) in flight per worker; beyond it the
            gateway answers at once with a ``return_code=FAIL`` overload answer (HTTP 503).
        passthrough: stream other paths to the configured upstream instead of answering 404.
        drain_delay_s: after SIGTERM, ``/readyz`` answers 503 this long while the gateway
            keeps serving, so a load balancer stops sending before the listener closes.
        drain_timeout_s: then in-flight calls get this long to finish before they are cut.
        keep_alive_s: idle keep-alive time of client connections (keep it above your load
            balancer's idle timeout).
        metrics: serve ``GET /metrics``.
        access_log: one ``coupon_shim.gateway_request`` event per request.
        ssl_certfile, ssl_keyfile, ssl_ca_certs, ssl_cert_reqs: TLS (uvicorn's options).
        ssl_keyfile_password: the key file's password (an ``env:``/``file:`` reference).
    """

    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    max_request_bytes: int = 65_536
    max_concurrency: int = 256
    passthrough: bool = False
    drain_delay_s: float = 0.0
    drain_timeout_s: float = 15.0
    keep_alive_s: float = 75.0
    metrics: bool = True
    access_log: bool = True
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_keyfile_password: str | None = None
    ssl_ca_certs: str | None = None
    ssl_cert_reqs: int = 0

    @property
    def tls(self) -> bool:
        """True when the gateway serves HTTPS."""
        return self.ssl_certfile is not None

    def with_overrides(self, **values: Any) -> GatewaySettings:
        """A copy with the given non-``None`` values (the command-line flags) applied."""
        given = {k: v for k, v in values.items() if v is not None}
        return replace(self, **given)

    def __repr__(self) -> str:
        shown = {
            k: getattr(self, k)
            for k in ("host", "port", "workers", "max_request_bytes", "max_concurrency")
        }
        inner = ", ".join(f"{k}={v!r}" for k, v in shown.items())
        return f"GatewaySettings({inner}, passthrough={self.passthrough}, tls={self.tls})"


class _Table:
    def __init__(self, table: Mapping[str, Any], source: str) -> None:
        self.table, self.source, self.used = table, source, set[str]()

    def error(self, name: str, message: str) -> ConfigError:
        return ConfigError(message, source=self.source, key=f"gateway.{name}")

    def get(self, name: str, kind: type | tuple[type, ...], default: Any) -> Any:
        self.used.add(name)
        if name not in self.table:
            return default
        value = self.table[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            names = {int: "a number", float: "a number", str: "a string", bool: "true or false"}
            wanted = " or ".join(sorted({names[k] for k in kinds}))
            raise self.error(name, f"expected {wanted}, got {type(value).__name__}")
        return value

    def integer(self, name: str, default: int, *, minimum: int, maximum: int) -> int:
        value: int = self.get(name, int, default)
        if not minimum <= value <= maximum:
            raise self.error(name, f"must be an integer from {minimum} to {maximum}, got {value}")
        return value

    def seconds(self, name: str, default: float) -> float:
        value = float(self.get(name, (int, float), default))
        if not math.isfinite(value) or value < 0:
            raise self.error(name, f"must be a number of seconds of at least 0, got {value!r}")
        return value

    def path(self, name: str, base_dir: Path) -> str | None:
        value: str = self.get(name, str, "")
        if not value:
            return None
        p = Path(value).expanduser()
        if not p.is_absolute():
            p = base_dir / p
        if not p.is_file():
            raise self.error(name, f"file {value!r} does not exist")
        return str(p)


def _secret_ref(ref: str, *, base_dir: Path, env: Mapping[str, str], err: ConfigError) -> str:
    if ref.startswith("env:"):
        value = env.get(ref[4:], "")
        if not value:
            raise err
        return value
    if ref.startswith("file:"):
        p = Path(ref[5:]).expanduser()
        try:
            return (p if p.is_absolute() else base_dir / p).read_text(encoding="utf-8").strip()
        except OSError:
            raise err from None
    return ref


def parse_gateway_settings(
    data: Mapping[str, Any],
    *,
    source: str = "<config>",
    base_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> GatewaySettings:
    """Build :class:`GatewaySettings` from the parsed TOML document's ``[gateway]`` table.

    Raises:
        ConfigError: a key is unknown or has a wrong value (the message names file and key).
    """
    env = os.environ if env is None else env
    base_dir = base_dir or Path.cwd()
    raw = data.get("gateway", {})
    if not isinstance(raw, Mapping):
        raise ConfigError("must be a table", source=source, key="gateway")
    t = _Table(raw, source)
    d = GatewaySettings()
    host: str = t.get("host", str, d.host)
    if not host:
        raise t.error("host", "must not be empty")
    reqs_name: str = t.get("ssl_cert_reqs", str, "none")
    if reqs_name not in _CERT_REQS:
        raise t.error(
            "ssl_cert_reqs", f'must be "none", "optional" or "required", not {reqs_name!r}'
        )
    password_ref: str = t.get("ssl_keyfile_password", str, "")
    settings = GatewaySettings(
        host=host,
        port=t.integer("port", d.port, minimum=0, maximum=65535),
        workers=t.integer("workers", d.workers, minimum=1, maximum=64),
        max_request_bytes=t.integer(
            "max_request_bytes", d.max_request_bytes, minimum=1024, maximum=1 << 30
        ),
        max_concurrency=t.integer("max_concurrency", d.max_concurrency, minimum=1, maximum=100_000),
        passthrough=t.get("passthrough", bool, d.passthrough),
        drain_delay_s=t.seconds("drain_delay_s", d.drain_delay_s),
        drain_timeout_s=t.seconds("drain_timeout_s", d.drain_timeout_s),
        keep_alive_s=t.seconds("keep_alive_s", d.keep_alive_s),
        metrics=t.get("metrics", bool, d.metrics),
        access_log=t.get("access_log", bool, d.access_log),
        ssl_certfile=t.path("ssl_certfile", base_dir),
        ssl_keyfile=t.path("ssl_keyfile", base_dir),
        ssl_ca_certs=t.path("ssl_ca_certs", base_dir),
        ssl_cert_reqs=_CERT_REQS[reqs_name],
        ssl_keyfile_password=_secret_ref(
            password_ref,
            base_dir=base_dir,
            env=env,
            err=t.error("ssl_keyfile_password", "the env:/file: reference cannot be read"),
        )
        if password_ref
        else None,
    )
    unknown = sorted(set(raw) - t.used)
    if unknown:
        raise t.error(unknown[0], "unknown key (check the spelling; see the README)")
    check_tls(settings, source=source)
    return settings


def check_tls(settings: GatewaySettings, *, source: str = "<command line>") -> None:
    """Refuse half a TLS setup (a certificate without its key, or the reverse).

    Raises:
        ConfigError: only one of ``ssl_certfile`` / ``ssl_keyfile`` is set.
    """
    if (settings.ssl_certfile is None) != (settings.ssl_keyfile is None):
        raise ConfigError(
            "ssl_certfile and ssl_keyfile go together", source=source, key="gateway.ssl_certfile"
        )
    if settings.ssl_cert_reqs and settings.ssl_ca_certs is None:
        raise ConfigError(
            "ssl_cert_reqs needs ssl_ca_certs (the CA that signs client certificates)",
            source=source,
            key="gateway.ssl_cert_reqs",
        )


def load_gateway_settings(
    path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None
) -> GatewaySettings:
    """Read the ``[gateway]`` table of a config file (relative paths resolve against it).

    Raises:
        ConfigError: the file cannot be read or the table is wrong.
    """
    p = Path(path).expanduser()
    try:
        data = tomllib.loads(p.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError("config file does not exist", source=str(path)) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot be read as TOML ({exc})", source=str(path)) from None
    return parse_gateway_settings(data, source=str(path), base_dir=p.resolve().parent, env=env)

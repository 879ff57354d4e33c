"""``coupon-shim serve``: the v2 gateway's command (the gateway itself is :mod:`shim.gateway`).

Needs the ``gateway`` extra, checked when the command runs (``coupon-shim --help`` works
without it).
"""

from __future__ import annotations

import argparse

from shim._commands import Command, CommandError, ExitCode

__all__ = ["COMMAND"]

_EPILOG = """\
examples:
  coupon-shim serve --config shim.toml                      # 127.0.0.1:8080, one worker
  coupon-shim serve --config shim.toml --host 0.0.0.0 --workers 2
  coupon-shim serve --config shim.toml --ssl-certfile gw.pem --ssl-keyfile gw.key

SIGTERM or Ctrl+C: /readyz turns 503 ([gateway] drain_delay_s), the listener closes, calls in
flight and their shadow comparisons finish ([gateway] drain_timeout_s), then exit 0.
"""


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="the shim.toml to serve (watched for changes)")
    p.add_argument("--host", help="bind address (default: [gateway] host, else 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port (default: [gateway] port, else 8080)")
    p.add_argument(
        "--workers", type=int, help="worker processes (default: [gateway] workers, else 1)"
    )
    p.add_argument("--ssl-certfile", help="serve HTTPS with this PEM certificate (chain)")
    p.add_argument("--ssl-keyfile", help="the certificate's PEM private key")
    p.add_argument("--ssl-ca-certs", help="a CA bundle to verify client certificates with")


def _run(args: argparse.Namespace) -> int:
    from shim.gateway._server import run  # MissingExtraError without the gateway extra

    if args.workers is not None and args.workers < 1:
        raise CommandError("--workers must be at least 1")
    overrides = {
        "host": args.host,
        "port": args.port,
        "workers": args.workers,
        "ssl_certfile": args.ssl_certfile,
        "ssl_keyfile": args.ssl_keyfile,
        "ssl_ca_certs": args.ssl_ca_certs,
    }
    level = 30 if args.quiet else 10 if args.verbose else 20
    try:
        return run(args.config, overrides=overrides, log_format=args.log_format, log_level=level)
    except OSError as exc:
        raise CommandError(
            f"cannot listen ({type(exc).__name__}: {exc.strerror or exc})", ExitCode.UNAVAILABLE
        ) from None


COMMAND = Command(
    name="serve",
    help="serve v2 query_coupon_stock over HTTP for callers in any language (the gateway)",
    description=(
        "Serve POST /mmpaymkttransfers/query_coupon_stock exactly as WeChat Pay v2 does, routed, "
        "mapped and re-signed by the shim; plus /healthz, /readyz and /metrics. Settings come "
        "from the config's [gateway] table; these options override it."
    ),
    add_arguments=_add_arguments,
    run=_run,
    epilog=_EPILOG,
)

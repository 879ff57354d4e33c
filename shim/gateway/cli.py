"""``coupon-shim serve``: the v2 gateway's command (``shim/cli.py`` only registers it)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_parser", "serve"]


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand to the CLI's subparsers."""
    p: argparse.ArgumentParser = sub.add_parser(
        "serve",
        help="serve v2 query_coupon_stock over HTTP for callers in any language (the gateway)",
        description=(
            "Serve POST /mmpaymkttransfers/query_coupon_stock exactly as WeChat Pay v2 does, "
            "routed, mapped and re-signed by the shim; plus /healthz, /readyz and /metrics. "
            "Settings come from the config's [gateway] table; these flags override it."
        ),
    )
    p.add_argument("--config", required=True, help="the shim.toml to serve (watched for changes)")
    p.add_argument("--host", help="bind address (default: [gateway] host, else 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port (default: [gateway] port, else 8080)")
    p.add_argument("--workers", type=int, help="worker processes (default: [gateway] workers, 1)")
    p.add_argument("--ssl-certfile", help="serve HTTPS with this PEM certificate (chain)")
    p.add_argument("--ssl-keyfile", help="the certificate's PEM private key")
    p.add_argument("--ssl-ca-certs", help="CA bundle for client certificates")
    return p


def serve(args: argparse.Namespace) -> int:
    """Run ``coupon-shim serve``; returns the exit status (0 after a clean drain)."""
    try:
        from shim.gateway._server import run
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise SystemExit(
            f"coupon-shim serve needs the gateway extra: pip install 'coupon-shim[gateway]' ({exc})"
        ) from None
    if args.workers is not None and args.workers < 1:
        raise SystemExit("coupon-shim serve: --workers must be at least 1")
    overrides = {
        "host": args.host,
        "port": args.port,
        "workers": args.workers,
        "ssl_certfile": args.ssl_certfile,
        "ssl_keyfile": args.ssl_keyfile,
        "ssl_ca_certs": args.ssl_ca_certs,
    }
    log_format = getattr(args, "log_format", "console")
    level = 40 if getattr(args, "quiet", False) else 20
    return run(args.config, overrides=overrides, log_format=log_format, log_level=level)

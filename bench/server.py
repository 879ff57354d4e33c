"""Serve the WeChat Pay emulator for the benchmark, in its own process.

    python bench/server.py --state-dir DIR [--tls-cert CERT --tls-key KEY] [--port 0]

Prints one line ``READY <base_url>`` on stdout once uvicorn listens, then serves until it is
killed (SIGTERM / SIGINT). With ``--tls-cert`` and ``--tls-key`` it serves HTTPS (the
benchmark makes a throwaway CA with ``trustme``). The emulator and its state are the same
ones the tests and ``coupon-shim sandbox`` use.
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

import uvicorn

from shim.sandbox import Emulator, SandboxState


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments and serve until killed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", required=True, type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", default=0, type=int)
    parser.add_argument("--tls-cert", type=Path)
    parser.add_argument("--tls-key", type=Path)
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")

    state = SandboxState.load_or_create(args.state_dir)
    emulator = Emulator(state)
    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted sockets whose proto
    # says TCP, and without it Nagle holds the body behind the headers for a delayed ACK (40 ms).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    port = sock.getsockname()[1]
    tls = args.tls_cert is not None
    config = uvicorn.Config(
        emulator.asgi_app,
        # httptools and uvloop when installed (the bench extra), as a production server would
        # run; h11 and asyncio otherwise.
        http="auto",
        loop="auto",
        ws="none",
        lifespan="off",
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        backlog=512,
        # Keep idle pooled connections open between bench sections: a server closing them
        # after uvicorn's default 5 s races the client's next request on a reused connection.
        timeout_keep_alive=120,
        ssl_certfile=str(args.tls_cert) if tls else None,
        ssl_keyfile=str(args.tls_key) if tls else None,
    )
    server = uvicorn.Server(config)
    scheme = "https" if tls else "http"

    original_startup = server.startup

    async def startup(sockets: list[socket.socket] | None = None) -> None:
        await original_startup(sockets=sockets)
        print(f"READY {scheme}://{args.host}:{port}", flush=True)

    server.startup = startup  # type: ignore[method-assign]
    server.run(sockets=[sock])


if __name__ == "__main__":
    sys.exit(main())

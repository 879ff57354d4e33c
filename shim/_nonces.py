"""Nonces for the facades: 16 random bytes from the OS, hex, drawn in batches.

One ``os.urandom`` system call per nonce cost more than the rest of a nonce's work, and a call
takes two (its request and its re-signed answer). A batch is drawn at once and handed out one
nonce at a time with ``list.pop`` (each exactly once, across threads); a forked child drops
the batch it inherited, so parent and child never hand out the same nonce.
"""

from __future__ import annotations

import os

__all__ = ["pooled_nonce"]

_NONCES: list[str] = []
_BATCH = 128


def pooled_nonce() -> str:
    """A fresh 32-character nonce."""
    try:
        return _NONCES.pop()
    except IndexError:
        drawn = os.urandom(16 * _BATCH).hex()
        _NONCES.extend([drawn[i : i + 32] for i in range(32, len(drawn), 32)])
        return drawn[:32]


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_NONCES.clear)

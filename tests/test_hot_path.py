"""The hot path's shortcuts keep their guarantees: nonces, the resolved logger, metrics."""

from __future__ import annotations

import os
import re

import pytest
import structlog
from structlog.testing import LogCapture

# Private on purpose: the nonce pool and the library logger are internals with no public
# handle, and what is pinned here is their own contract.
from shim._flow import new_nonce
from shim._logs import get_logger


def test_nonces_are_unique_hex_across_refills() -> None:
    drawn = [new_nonce() for _ in range(1000)]  # several refills of the pool
    assert len(set(drawn)) == len(drawn)
    assert all(re.fullmatch(r"[0-9a-f]{32}", n) for n in drawn)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX fork")
def test_a_forked_child_never_reuses_the_parents_pooled_nonces() -> None:
    new_nonce()  # the pool now holds nonces the parent may still hand out
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        os.write(write, ",".join(new_nonce() for _ in range(50)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split(","))
    os.waitpid(pid, 0)
    parent = {new_nonce() for _ in range(200)}
    assert len(child) == 50
    assert not child & parent


def test_the_resolved_logger_follows_each_structlog_configure() -> None:
    log = get_logger("shim")
    first, second = LogCapture(), LogCapture()
    try:
        structlog.configure(processors=[first])
        log.info("one")
        log.info("two")
        structlog.configure(processors=[second])
        log.info("three")
    finally:
        structlog.reset_defaults()
    assert [e["event"] for e in first.entries] == ["one", "two"]
    assert [e["event"] for e in second.entries] == ["three"]

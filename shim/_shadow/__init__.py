"""Shadow comparison: run the other route off the latency path and diff the two v2 answers.

One idea per module (this package re-exports nothing):

- :mod:`shim._diff` (beside this package, shared with ``coupon-shim compare``) — the pure
  field-by-field diff of two v2 answers;
- :mod:`~shim._shadow.outcome` — one comparison's result and the label of a failure (pure);
- :mod:`~shim._shadow.totals` — the thread-safe running totals and their snapshot;
- :mod:`~shim._shadow.runners` — the bounded thread and async runners of shadow jobs.
"""

"""The declarative v3 → v2 mapping as data: ``mappings/<name>.toml`` loaded once, applied.

The mapping file says, for every v2 key of the ``query_coupon_stock`` answer, where its value
comes from (a v3 JSON path, a field of the caller's request, or a constant) and which converter
turns it into the v2 string. It also holds the enum tables (v3 ``status`` → v2
``coupon_stock_status``) and the table that turns v3 errors into v2 answers.

One idea per module (import the one you need; this package re-exports nothing, so the pure
parts never pull in the loader):

- :mod:`~shim._mapping.model` — the frozen rule and table values (pure);
- :mod:`~shim._mapping.converters` — the value converters, one JSON value → one v2 string (pure);
- :mod:`~shim._mapping.apply` — a v3 answer → the v2 dict, unmappable values left out and
  recorded; the per-call plan compiled once at load (pure);
- :mod:`~shim._mapping.load` — reading and validating the TOML file (the only file I/O).
"""

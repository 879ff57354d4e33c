"""``coupon-shim compare``: both routes per stock, classified, with a verdict to gate a rollout.

One idea per module (this package re-exports nothing):

- :mod:`~shim._compare.model` — the rows, summary, verdict and report values (pure);
- :mod:`~shim._compare.classify` — a stock's class from both routes' results, the summary and
  the verdict (pure; the diff is :mod:`shim._diff`, shared with the shadow comparison);
- :mod:`~shim._compare.collect` — querying both routes per stock (:class:`Comparer`, with its
  own client and breakers) and reading stock ids;
- :mod:`~shim._compare.render` — the terminal table and the JSON document.
"""

"""``coupon-shim report``: a readiness report from the fleet's events and ``compare`` runs.

Reads JSON-lines events and/or ``compare --json`` documents, aggregates them, judges readiness
against thresholds and writes one self-contained offline HTML file (the ``report`` extra) plus
a one-screen terminal summary (``rich``). Only aggregates leave the collecting step: no event's
free text (error messages, request fields) reaches the report, so nothing secret can, even from
a mis-configured logger.

One idea per module (this package re-exports nothing):

- :mod:`~shim._report.model` — what was read, the aggregate and the verdict values (pure);
- :mod:`~shim._report.collect` — reading the files and adding the events up;
- :mod:`~shim._report.verdict` — ready to raise canary, or why not (pure);
- :mod:`~shim._report.terminal` — the terminal summary;
- :mod:`~shim._report.html` — the offline HTML page with its charts.
"""

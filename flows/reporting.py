"""What a flow tells Prefect beyond its state (artifacts) is a report, not the work.

When the Prefect API cannot be reached (a server restarted or gone mid-run), the work is already
committed to the warehouse and recorded in its ``runs`` table; losing a run's artifacts must not
turn a completed run into a failed one. Prefect's client retries each call before giving up
(``PREFECT_CLIENT_MAX_RETRIES``), so an unreachable API costs that wait, once per report.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import httpx
from prefect.exceptions import PrefectHTTPStatusError

API_ERRORS = (httpx.TransportError, PrefectHTTPStatusError)


@contextmanager
def best_effort_report(logger: logging.Logger | logging.LoggerAdapter, what: str):
    """Publish ``what``; if the Prefect API is unreachable, log it and go on."""
    try:
        yield
    except API_ERRORS as exc:
        logger.warning(
            "could not publish the %s to Prefect (%s: %s); the run's results are in the warehouse "
            "(table runs) all the same",
            what,
            type(exc).__name__,
            exc,
        )

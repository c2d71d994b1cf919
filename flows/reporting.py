"""How a run ends when something outside the work goes wrong: the Prefect API gone (the report
is lost, not the work), the warehouse's disk full (a clear failed state, not a crash).

What a flow tells Prefect beyond its state (artifacts) is a report, not the work.

When the Prefect API cannot be reached (a server restarted or gone mid-run), the work is already
committed to the warehouse and recorded in its ``runs`` table; losing a run's artifacts must not
turn a completed run into a failed one. Prefect's client retries each call before giving up
(``PREFECT_CLIENT_MAX_RETRIES``), so an unreachable API costs that wait, once per report.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import httpx
from prefect.exceptions import PrefectHTTPStatusError
from prefect.states import Failed, State

from warehouse.files import disk_full_message, is_disk_full

DISK_FULL_STATE = "DiskFull"

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


def failed_on_full_disk(exc: Exception, data_dir: Path, logger) -> State:
    """The run's end when ``exc`` is the warehouse's disk being full (else ``exc`` is raised).

    Each batch is one transaction and each file is written whole or not at all: the warehouse is
    as it was before the batch that hit the full disk, and running again goes on from there."""
    if not is_disk_full(exc):
        raise exc
    message = disk_full_message(exc, data_dir)
    logger.error(message)
    return Failed(name=DISK_FULL_STATE, message=message)

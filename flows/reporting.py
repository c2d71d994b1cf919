"""How a run ends when something outside the work goes wrong: the Prefect API gone (the report
is lost, not the work), the warehouse's disk full (a clear failed state, not a crash); and what
a run says when it finds that the previous writer died (its flow run marked crashed).

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
from uuid import UUID

import httpx
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
from prefect.states import Failed, State

from warehouse.files import disk_full_message, is_disk_full
from warehouse.lock import describe_holder

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


def dead_writer_reporter(found_by: str, logger: logging.Logger | logging.LoggerAdapter):
    """For ``WriterLock(on_dead_holder=…)``: say that the warehouse's previous writer died
    holding it, and mark its Prefect flow run crashed.

    Prefect cannot see a process killed with SIGKILL: its run stays "Running" and keeps its
    deployment's concurrency slot until the slot's lease expires (about 5 minutes with a server;
    never with a temporary server, which keeps leases in memory and runs no lease reaper). Marking
    the run crashed frees the slot now, and tells whoever looks at it what happened."""

    def report(holder: dict) -> None:
        logger.warning(
            "the warehouse's previous writer, %s, died without finishing; what it committed is kept "
            "and the unfinished work is taken up again (%s)",
            describe_holder(holder),
            found_by,
        )
        with best_effort_report(logger, "crashed state of the dead writer's flow run"):
            crashed = mark_flow_run_crashed(holder, found_by)
            if crashed:
                logger.warning("marked its flow run %s as crashed", crashed)

    return report


def mark_flow_run_crashed(holder: dict, found_by: str) -> str | None:
    """Set the dead holder's flow run to Crashed if Prefect still has it running (or about to);
    returns its id when it did."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    try:
        run_id = UUID(str(holder.get("run_id")))
    except ValueError:
        return None  # not a flow run (a CLI command, or a lock file from an older version)
    with get_client(sync_client=True) as client:
        try:
            run = client.read_flow_run(run_id)
        except ObjectNotFound:
            return None
        if run.state is None or run.state.type not in (
            StateType.RUNNING,
            StateType.PENDING,
            StateType.CANCELLING,
        ):
            return None
        message = (
            f"Its process died while it held the warehouse: {describe_holder(holder)}. "
            f"Found by {found_by}. What it committed is kept; the next run takes up the rest."
        )
        client.set_flow_run_state(run_id, Crashed(message=message), force=True)
    return str(run_id)

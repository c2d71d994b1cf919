"""Re-extraction, the network-free source of the backfill flow (``backfill --reextract``)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

from prefect import get_run_logger

from flows.dask_extraction import DaskExtractor, run_extraction
from newsflow.settings import Settings
from tasks import prefect_tasks as t
from tasks.load import RunContext, RunSummary
from warehouse.store import chunks


def reextract_articles(
    settings: Settings,
    ctx: RunContext,
    summary: RunSummary,
    session,
    progress: Callable[[int, int], None] | None = None,
    since: date | None = None,
    until: date | None = None,
    feed_url: str | None = None,
) -> dict:
    """Extract the stored raw pages again, a batch at a time, each batch one transaction."""
    logger = get_run_logger()
    with session() as wh:
        candidates = t.select_reextraction(wh, since, until, feed_url)
        storage = wh.storage
    counts = {"articles_considered": len(candidates), "articles_changed": 0, "raw_missing": 0}
    done = 0
    with run_extraction(settings) as (_, extractor):
        for batch in chunks(candidates, settings.batch_size):
            jobs, missing = t.read_raw_pages(storage, batch)
            counts["raw_missing"] += len(missing)
            if isinstance(extractor, DaskExtractor):
                extracted = extractor.map(jobs)
            else:
                extracted = t.extract_raw_pages(jobs, extractor)
            summary.articles_extracted += sum(1 for e in extracted if e.text)
            with session() as wh:
                counts["articles_changed"] += t.apply_reextraction(wh, extracted, ctx)
            done += len(batch)
            if progress:
                progress(done, len(candidates))
    if counts["raw_missing"]:
        logger.warning(
            "%d article(s) have no raw page any more (pruned): not re-extracted", counts["raw_missing"]
        )
    return counts

"""The stages as Prefect tasks: each wraps plain functions from the stage modules.

One task handles a whole batch (never one task per article: a task run costs ~7 ms of Prefect
bookkeeping, and extraction runs in a process pool inside ``extract_pages``). No task caches or
persists its inputs: they hold page bytes and live handles (warehouse connection, process pool).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from newsflow.settings import Settings
from tasks import dedup, feeds, fetch, load, parse, reextract, robots
from tasks.extract import ExtractJob, ExtractorPool, extract_batch
from tasks.schedule import SchedulePolicy
from warehouse.storage import Storage
from warehouse.store import Warehouse

_TASK = dict(cache_policy=NO_CACHE, persist_result=False)


@task(name="read-feed-list", **_TASK)
def read_feed_list(path: Path) -> list[feeds.FeedSpec]:
    return feeds.load_feed_list(path)


@task(name="select-due-feeds", **_TASK)
def select_due_feeds(
    specs: list[feeds.FeedSpec], wh: Warehouse, now: datetime, poll_all: bool
) -> feeds.DueFeeds:
    return feeds.due_feeds(specs, wh.feed_rows([s.url for s in specs]), now, poll_all)


@task(name="fetch-feeds", **_TASK)
def fetch_feeds(due: feeds.DueFeeds, wh: Warehouse, settings: Settings) -> list[fetch.FetchResult]:
    """The due feeds, conditionally, from where they live now. Feeds share each host's budget
    (concurrency, spacing, postponement) with the pages fetched later in the same run."""
    from prefect.runtime import flow_run

    specs = list(due.due)
    stored = wh.feed_validators([s.url for s in specs])
    validators = {url: feeds.FeedValidators(*v) for url, v in stored.items()}
    requests = feeds.feed_requests(specs, validators, settings.max_feed_bytes, due.fetch_urls)
    return fetch.fetch_all(requests, settings, robots.run_state(flow_run.id))


@task(name="parse-feeds", **_TASK)
def parse_feeds(
    results: list[fetch.FetchResult],
    due: feeds.DueFeeds,
    wh: Warehouse,
    pool: ExtractorPool,
    settings: Settings,
) -> list[parse.FeedOutcome]:
    feed_urls = [s.url for s in due.due]
    previous = {url: v[2] for url, v in wh.feed_validators(feed_urls).items()}
    return parse.parse_feed_results(results, previous, feed_urls, pool, settings.feed_parse_timeout)


@task(name="plan-entries", **_TASK)
def plan_entries(outcomes: list[parse.FeedOutcome], wh: Warehouse, settings: Settings) -> dedup.EntryPlan:
    candidates = dedup.keyed_entries((o.feed_url, o.parsed.entries) for o in outcomes if o.parsed is not None)
    stored_dates = wh.entry_dates([c.entry_key for c in candidates])  # the entries seen before
    link_keys = list({c.link_key for c in candidates if c.link_key and c.entry_key not in stored_dates})
    return dedup.plan_entries(
        candidates,
        set(stored_dates),
        wh.known_url_keys(link_keys),
        settings.max_entries_per_feed,
        stored_dates=stored_dates,
    )


@task(name="fetch-pages", **_TASK)
def fetch_pages(jobs: Sequence[dedup.PageJob], settings: Settings) -> list[fetch.FetchResult]:
    """Article pages, robots.txt checked. Robots rules and postponed hosts are kept per flow run,
    so the batches of one run share them (robots.txt fetched once per host per run)."""
    from prefect.runtime import flow_run

    return fetch.fetch_all(
        [fetch.FetchRequest(url=j.url, max_bytes=settings.max_page_bytes, check_robots=True) for j in jobs],
        settings,
        robots.run_state(flow_run.id),
    )


def page_extract_jobs(results: Sequence[fetch.FetchResult]) -> tuple[list[ExtractJob], list[int]]:
    """The pages of a batch with a body to extract, and where each is in the batch."""
    positions = [i for i, r in enumerate(results) if r.ok and r.body]
    jobs = [
        ExtractJob(key=str(i), url=results[i].final_url, body=results[i].body,
                   content_type=results[i].header("content-type"))
        for i in positions
    ]  # fmt: skip
    return jobs, positions


@task(name="extract-pages", **_TASK)
def extract_pages(results: Sequence[fetch.FetchResult], pool: ExtractorPool) -> list:
    """One ``Extracted`` per fetch result (None where there was no body), in order."""
    jobs, positions = page_extract_jobs(results)
    extracted: list = [None] * len(results)
    for position, one in zip(positions, extract_batch(jobs, pool), strict=True):
        extracted[position] = one
    return extracted


@task(name="extract-on-worker", **_TASK)
def extract_on_worker(jobs: Sequence[ExtractJob]) -> list:
    """A chunk of a batch on a Dask worker (flows/dask_extraction.py), in the worker's own
    process: the cluster's worker processes are the pool."""
    return extract_batch(list(jobs))


@task(name="dedup-articles", **_TASK)
def dedup_articles(jobs, results, extracted, wh: Warehouse) -> list[load.PageArticle]:
    """Identify the fetched pages, find the stored versions of their URLs (a page fetched again
    is a new version when its text changed, nothing when not), and decide the rest duplicate or
    original against the warehouse."""
    fetched_keys = [j.url_key for j, r in zip(jobs, results, strict=True) if r.ok]
    latest = {key: load.StoredVersion(*row) for key, row in wh.latest_versions(fetched_keys).items()}
    pages = load.identify_pages(jobs, results, extracted, latest)
    stored = [p for p in pages if p.stored]
    known_canonical = wh.known_canonical_rows(list({p.canonical_url for p in stored if p.canonical_url}))
    known_hash = wh.known_hash_rows(list({p.content_hash for p in stored if p.content_hash}))
    original_keys = {}
    if any(p.previous for p in stored):  # only a new version can be one of its originals' versions
        originals = {k.original for rows in (*known_canonical.values(), *known_hash.values()) for k in rows}
        original_keys = wh.article_keys(sorted(originals))
    return load.dedup_pages(pages, known_canonical, known_hash, original_keys)


@task(name="archive-pages", **_TASK)
def archive_pages(
    results: Sequence[fetch.FetchResult], storage: Path | Storage, batch_id: str
) -> list[load.RawRef]:
    return load.archive_raw(storage, batch_id, results)


@task(name="load-pages", **_TASK)
def load_pages(
    pages: Sequence[load.PageArticle],
    raw_refs: Sequence[load.RawRef],
    batch_id: str,
    wh: Warehouse,
    ctx: load.RunContext,
    summary: load.RunSummary,
):
    rows = load.page_batch_rows(pages, raw_refs, ctx, batch_id, summary)
    return wh.load_batch(batch_id, ctx.run_id, rows)


@task(name="load-feeds", **_TASK)
def load_feeds(
    due: feeds.DueFeeds,
    outcomes: list[parse.FeedOutcome],
    plan: dedup.EntryPlan,
    wh: Warehouse,
    ctx: load.RunContext,
    settings: Settings,
    now: datetime,
) -> dict[str, int]:
    """Changed or failed feed documents to the raw archive and fetch_log, the entries that needed
    no fetch, then the feeds' new state and schedule (last: a crash before this point makes the
    next run fetch the feeds again rather than miss entries).

    A feed that did not change (304, or the same bytes) writes nothing but its state."""
    batch_id = ctx.next_batch_id()
    logged = [o for o in outcomes if not o.unchanged]
    refs = load.archive_raw(wh.storage, batch_id, [o.result for o in logged])
    rows: dict[str, list[dict]] = {
        "fetch_log": [
            load.fetch_log_row(o.result, "feed", ctx, batch_id, n, raw, (o.error_class, o.error_message))
            for n, (o, raw) in enumerate(zip(logged, refs, strict=True))
        ],
        "entries": load.known_entry_rows(plan.known, plan.no_link, ctx, batch_id),
    }
    counts = wh.load_batch(batch_id, ctx.run_id, rows)
    new_per_feed: dict[str, int] = {}
    for job in plan.pages:
        for p in job.entries:
            new_per_feed[p.feed_url] = new_per_feed.get(p.feed_url, 0) + 1
    for p in [*(p for p, _ in plan.known), *plan.no_link]:
        new_per_feed[p.feed_url] = new_per_feed.get(p.feed_url, 0) + 1
    # An entry whose page failed for a transient reason (timeout, 5xx, robots.txt unavailable...)
    # was not recorded, and entries over the per-feed limit were left for later: their feeds keep
    # their old validators, so the next poll reads the document again (a 304 or the same bytes
    # would skip it) and takes them.
    planned = [p for job in plan.pages for p in job.entries]
    recorded = wh.seen_entry_keys([p.entry_key for p in planned])
    to_retry = {p.feed_url for p in planned if p.entry_key not in recorded} | plan.feeds_over_limit
    specs = {s.url: s for s in due.due}
    previous = wh.feed_rows(list(specs))
    feed_rows, events = load.feed_rows(
        outcomes,
        specs,
        previous,
        new_per_feed,
        now,
        SchedulePolicy.from_settings(settings),
        run_id=ctx.run_id,
        keep_validators=to_retry,
    )
    wh.upsert_feeds(feed_rows, events)
    return counts


@task(name="feed-health", **_TASK)
def feed_health(specs: list[feeds.FeedSpec], wh: Warehouse) -> list[dict]:
    """One row per listed feed: state, last success, failures, last error, next due, rate."""
    return wh.feed_health([s.url for s in specs])


@task(name="load-known-entries", **_TASK)
def load_known_entries(plan: dedup.EntryPlan, wh: Warehouse, ctx: load.RunContext) -> dict[str, int]:
    """Entries that needed no fetch (link already stored, or no link), in a batch of their own."""
    batch_id = ctx.next_batch_id()
    return wh.load_batch(
        batch_id, ctx.run_id, {"entries": load.known_entry_rows(plan.known, plan.no_link, ctx, batch_id)}
    )


@task(name="load-source-fetches", **_TASK)
def load_source_fetches(records, kind: str, wh: Warehouse, ctx: load.RunContext) -> dict[str, int]:
    """fetch_log rows for what a backfill fetched to find its pages (sitemaps, feed pages)."""
    batch_id = ctx.next_batch_id()
    rows = [
        load.fetch_log_row(
            r.result, kind, ctx, batch_id, n, (None, None), (r.error_class, r.error_message), r.size
        )
        for n, r in enumerate(records)
    ]
    return wh.load_batch(batch_id, ctx.run_id, {"fetch_log": rows})


@task(name="record-run", **_TASK)
def record_run(wh: Warehouse, ctx: load.RunContext, summary: load.RunSummary, status: str) -> None:
    counts = summary.counts()
    wh.record_run(
        {
            "run_id": ctx.run_id,
            "flow": ctx.flow,
            "started_at": ctx.started_at,
            "finished_at": datetime.now(UTC),
            "status": status,
            **{k: counts[k] for k in (
                "feeds_listed", "feeds_due", "feeds_polled", "feeds_not_modified", "feeds_failed",
                "feeds_backed_off", "feeds_dead", "feeds_retired", "new_entries",
                "pages_fetched", "pages_failed", "articles_extracted", "duplicates",
                "entries_left_for_next_run", "skipped_known", "new_versions", "refetched_unchanged",
            )},
        }
    )  # fmt: skip
    wh.export_snapshots()


@task(name="select-reextraction", **_TASK)
def select_reextraction(wh: Warehouse, since, until, feed_url: str | None) -> list[reextract.Candidate]:
    return [reextract.Candidate(*row) for row in wh.reextraction_candidates(since, until, feed_url)]


@task(name="read-raw-pages", **_TASK)
def read_raw_pages(storage: Path | Storage, candidates: Sequence[reextract.Candidate]):
    return reextract.raw_jobs(storage, candidates)


@task(name="extract-raw-pages", **_TASK)
def extract_raw_pages(jobs: Sequence[ExtractJob], pool: ExtractorPool) -> list:
    return extract_batch(list(jobs), pool)


@task(name="apply-reextraction", **_TASK)
def apply_reextraction(wh: Warehouse, extracted, ctx: load.RunContext) -> int:
    batch_id = ctx.next_batch_id()
    current = wh.articles_with_entry([e.key for e in extracted])
    history, updates = reextract.changes(current, extracted, ctx.run_id, batch_id)
    return wh.apply_reextraction(batch_id, ctx.run_id, history, updates)

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
from prefect.utilities.annotations import quote

from newsflow.settings import Settings
from tasks import dedup, feeds, fetch, load, parse, reextract, robots
from tasks.extract import ExtractJob, ExtractorPool, extract_batch
from tasks.schedule import SchedulePolicy
from warehouse.storage import Storage
from warehouse.store import Warehouse

_TASK = dict(cache_policy=NO_CACHE, persist_result=False)


class BatchTask:
    """A Prefect task whose arguments reach its function whole: each is wrapped in ``quote``, so
    Prefect does not walk it element by element looking for futures to resolve and inputs to
    record, twice per call (task run inputs, then parameter resolution) over every page, header
    and extracted text of a batch. In the 974-page poll of benchmarks/throughput.py that walk
    held the GIL for 2.5 s (py-spy); with ``quote`` the command's own CPU went from 10.1 to
    8.4 s, on the cores extraction needs. The flows never pass a future to a task (they take
    ``.result()`` first), so there is nothing for the walk to find.

    ``fn`` is the plain function (unit tests call it without Prefect); ``task`` the Prefect task
    (what a task runner's ``submit`` takes; a runner that sends the parameters to other
    processes, such as Dask's, is given them plain)."""

    def __init__(self, fn, name: str):
        self.fn = fn
        self.name = name
        self.task = task(fn, name=name, **_TASK)
        self.__doc__ = fn.__doc__

    def __call__(self, *args, **kwargs):
        return self.task(*whole(args), **whole(kwargs))

    def submit(self, *args, **kwargs):
        return self.task.submit(*whole(args), **whole(kwargs))


def whole(values):
    """``values`` (a tuple of arguments or a dict of parameters), each wrapped in ``quote``."""
    if isinstance(values, dict):
        return {k: quote(v) for k, v in values.items()}
    return tuple(quote(v) for v in values)


def batch_task(name: str):
    return lambda fn: BatchTask(fn, name)


@batch_task("read-feed-list")
def read_feed_list(path: Path) -> list[feeds.FeedSpec]:
    return feeds.load_feed_list(path)


@batch_task("select-due-feeds")
def select_due_feeds(
    specs: list[feeds.FeedSpec], wh: Warehouse, now: datetime, poll_all: bool
) -> feeds.DueFeeds:
    return feeds.due_feeds(specs, wh.feed_rows([s.url for s in specs]), now, poll_all)


@batch_task("fetch-feeds")
def fetch_feeds(due: feeds.DueFeeds, wh: Warehouse, settings: Settings) -> list[fetch.FetchResult]:
    """The due feeds, conditionally, from where they live now. Feeds share each host's budget
    (concurrency, spacing, postponement) with the pages fetched later in the same run."""
    from prefect.runtime import flow_run

    specs = list(due.due)
    stored = wh.feed_validators([s.url for s in specs])
    validators = {url: feeds.FeedValidators(*v) for url, v in stored.items()}
    requests = feeds.feed_requests(specs, validators, settings.max_feed_bytes, due.fetch_urls)
    return fetch.fetch_all(requests, settings, robots.run_state(flow_run.id))


@batch_task("parse-feeds")
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


@batch_task("plan-entries")
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


@batch_task("fetch-pages")
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


@batch_task("extract-pages")
def extract_pages(results: Sequence[fetch.FetchResult], pool: ExtractorPool) -> list:
    """One ``Extracted`` per fetch result (None where there was no body), in order."""
    jobs, positions = page_extract_jobs(results)
    extracted: list = [None] * len(results)
    for position, one in zip(positions, extract_batch(jobs, pool), strict=True):
        extracted[position] = one
    return extracted


@batch_task("extract-on-worker")
def extract_on_worker(jobs: Sequence[ExtractJob]) -> list:
    """A chunk of a batch on a Dask worker (flows/dask_extraction.py), in the worker's own
    process: the cluster's worker processes are the pool."""
    return extract_batch(list(jobs))


@batch_task("dedup-articles")
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


@batch_task("archive-pages")
def archive_pages(
    results: Sequence[fetch.FetchResult], storage: Path | Storage, batch_id: str, settings: Settings
) -> list[load.RawRef]:
    return load.archive_raw(storage, batch_id, results, settings.raw_gzip_level)


@batch_task("load-pages")
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


@batch_task("load-feeds")
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
    refs = load.archive_raw(wh.storage, batch_id, [o.result for o in logged], settings.raw_gzip_level)
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


@batch_task("feed-health")
def feed_health(specs: list[feeds.FeedSpec], wh: Warehouse) -> list[dict]:
    """One row per listed feed: state, last success, failures, last error, next due, rate."""
    return wh.feed_health([s.url for s in specs])


@batch_task("load-known-entries")
def load_known_entries(plan: dedup.EntryPlan, wh: Warehouse, ctx: load.RunContext) -> dict[str, int]:
    """Entries that needed no fetch (link already stored, or no link), in a batch of their own."""
    batch_id = ctx.next_batch_id()
    return wh.load_batch(
        batch_id, ctx.run_id, {"entries": load.known_entry_rows(plan.known, plan.no_link, ctx, batch_id)}
    )


@batch_task("load-source-fetches")
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


@batch_task("record-run")
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


@batch_task("select-reextraction")
def select_reextraction(wh: Warehouse, since, until, feed_url: str | None) -> list[reextract.Candidate]:
    return [reextract.Candidate(*row) for row in wh.reextraction_candidates(since, until, feed_url)]


@batch_task("read-raw-pages")
def read_raw_pages(storage: Path | Storage, candidates: Sequence[reextract.Candidate]):
    return reextract.raw_jobs(storage, candidates)


@batch_task("extract-raw-pages")
def extract_raw_pages(jobs: Sequence[ExtractJob], pool: ExtractorPool) -> list:
    return extract_batch(list(jobs), pool)


@batch_task("apply-reextraction")
def apply_reextraction(wh: Warehouse, extracted, ctx: load.RunContext) -> int:
    batch_id = ctx.next_batch_id()
    current = wh.articles_with_entry([e.key for e in extracted])
    history, updates = reextract.changes(current, extracted, ctx.run_id, batch_id)
    return wh.apply_reextraction(batch_id, ctx.run_id, history, updates)

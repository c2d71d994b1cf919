"""Load: turn one batch of fetched, extracted, deduplicated pages into warehouse rows.

The raw bytes go to the WARC archive first, then the rows of entries, articles and fetch_log go
in as one transaction (``Warehouse.load_batch``), then out as Parquet.
"""

from __future__ import annotations

import itertools
import random
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path

from tasks.dedup import (
    DedupCandidate,
    DedupDecision,
    Known,
    PageJob,
    PlannedEntry,
    article_id_for,
    canonicalize_url,
    content_hash,
    decide_duplicates,
    trusted_canonical,
)
from tasks.extract import EXTRACTOR_NAME, EXTRACTOR_OPTIONS_JSON, Extracted, extractor_version
from tasks.fetch import FetchResult
from tasks.parse import FeedEntry, FeedOutcome
from tasks.schedule import (
    FeedOverride,
    FeedSchedule,
    PollObservation,
    SchedulePolicy,
    header_hint_seconds,
    next_schedule,
)
from warehouse.raw_archive import DEFAULT_GZIP_LEVEL, RawArchiveWriter, raw_path_for
from warehouse.storage import Storage

# A page that failed this way is tried again next run; any other failure is final for its entries.
TRANSIENT_PAGE_ERRORS = frozenset(
    {"timeout", "connect", "dns", "http_5xx", "protocol", "robots_unavailable", "host_postponed"}
)


@dataclass
class RunContext:
    run_id: str
    flow: str
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    _seq: itertools.count = field(default_factory=lambda: itertools.count(1), repr=False)

    @classmethod
    def new(cls, flow: str, run_id: str | None = None) -> RunContext:
        return cls(run_id=run_id or uuid.uuid4().hex, flow=flow)

    def next_batch_id(self) -> str:
        """Unique and sortable: start time, run, sequence number."""
        return f"{self.started_at:%Y%m%dT%H%M%S}-{self.run_id[:8]}-{next(self._seq):04d}"


@dataclass
class RunSummary:
    run_id: str
    feeds_listed: int = 0
    feeds_due: int = 0  # listed feeds whose next poll had come (all of them with --all)
    feeds_polled: int = 0
    feeds_not_modified: int = 0  # 304, or the same bytes: no parsing, no writes but their state
    feeds_failed: int = 0
    feeds_backed_off: int = 0  # after the run: listed feeds failing, waiting out their backoff
    feeds_dead: int = 0  # after the run: listed feeds given up on, re-probed rarely
    feeds_retired: int = 0  # after the run: listed feeds that answered 410 Gone
    new_entries: int = 0
    entries_left_for_next_run: int = 0
    pages_fetched: int = 0
    pages_failed: int = 0
    articles_extracted: int = 0
    duplicates: int = 0
    skipped_known: int = 0  # backfill: URLs already stored, not fetched again
    new_versions: int = 0  # stored URLs fetched again whose text changed: a new version each
    refetched_unchanged: int = 0  # stored URLs fetched again with the same text: no new row
    failures: list[dict] = field(default_factory=list)  # url, kind, error_class, message

    def counts(self) -> dict[str, int]:
        return {k: v for k, v in asdict(self).items() if isinstance(v, int)}

    def add_failure(self, kind: str, url: str, error_class: str | None, message: str | None) -> None:
        self.failures.append({"kind": kind, "url": url, "error_class": error_class, "error": message})


# --------------------------------------------------------------------------- dedup of fetched pages


@dataclass(frozen=True)
class StoredVersion:
    """The latest stored version of an article (a URL key), as a page fetched again finds it."""

    article_id: str
    article_key: str
    version: int
    content_hash: str | None
    story_id: str | None  # the story of its latest version that has one


@dataclass(frozen=True)
class PageArticle:
    job: PageJob
    result: FetchResult
    extracted: Extracted | None
    canonical_url: str | None
    content_hash: str | None
    decision: DedupDecision | None = None
    previous: StoredVersion | None = None  # the URL's latest stored version, when it has one

    @property
    def version(self) -> int:
        return self.previous.version + 1 if self.previous else 1

    @property
    def article_key(self) -> str:
        return self.previous.article_key if self.previous else self.job.article_id

    @property
    def article_id(self) -> str:
        """The id of the row this page becomes: version 1 keeps the job's id."""
        return self.job.article_id if self.version == 1 else article_id_for(self.job.url_key, self.version)

    @property
    def unchanged(self) -> bool:
        """A stored URL fetched again whose text is the latest version's (or has no text: a failed
        extraction is no new version): no article row."""
        return self.previous is not None and (
            self.content_hash is None or self.content_hash == self.previous.content_hash
        )

    @property
    def stored(self) -> bool:
        """It becomes an article row."""
        return self.result.ok and not self.unchanged


def identify_pages(
    jobs: Sequence[PageJob],
    results: Sequence[FetchResult],
    extracted: Sequence[Extracted | None],
    latest: Mapping[str, StoredVersion] | None = None,
):
    """Canonical URL and text hash of each successfully fetched page (the dedup keys), and the
    latest stored version of its URL (``latest``: url_key -> version) when it has one."""
    latest = latest or {}
    pages = []
    for job, result, ex in zip(jobs, results, extracted, strict=True):
        if not result.ok:
            pages.append(PageArticle(job, result, None, None, None))
            continue
        pages.append(
            PageArticle(
                job, result, ex, *page_identity(ex, result.final_url), previous=latest.get(job.url_key)
            )
        )
    return pages


def dedup_pages(
    pages: Sequence[PageArticle],
    known_canonical: Known,
    known_hash: Known,
    original_keys: Mapping[str, str] | None = None,
):
    """Decide the pages that become article rows (new articles and new versions) original or
    duplicate. See :func:`tasks.dedup.decide_duplicates` for ``known_*`` and ``original_keys``."""
    stored = [p for p in pages if p.stored]
    decisions = decide_duplicates(
        [
            DedupCandidate(
                p.article_id, p.canonical_url, p.content_hash, p.article_key if p.previous else None
            )
            for p in stored
        ],
        known_canonical,
        known_hash,
        original_keys,
    )
    by_id = {d.article_id: d for d in decisions}
    return [replace(p, decision=by_id.get(p.article_id) if p.stored else None) for p in pages]


# --------------------------------------------------------------------------- rows


def _published(entry_dt: datetime | None, page_date: str | None) -> datetime | None:
    if entry_dt is not None:
        return entry_dt
    if page_date:
        try:
            return datetime.combine(date.fromisoformat(page_date[:10]), datetime.min.time(), UTC)
        except ValueError:
            return None
    return None


def entry_row(
    p: PlannedEntry,
    ctx: RunContext,
    load_batch: str,
    seen_at: datetime,
    *,
    status: str,
    article_id: str | None = None,
    duplicate_of: str | None = None,
    duplicate_reason: str | None = None,
) -> dict:
    e = p.entry
    return {
        "entry_key": p.entry_key,
        "feed_url": p.feed_url,
        "guid": e.guid,
        "link": e.link,
        "link_key": p.link_key,
        "title": e.title,
        "published_at": e.published_at,
        "updated_at": e.updated_at,
        "summary": e.summary,
        "author": e.author,
        "categories": list(e.categories),
        "enclosures": [{"url": x.url, "type": x.type, "length": x.length} for x in e.enclosures],
        "article_id": article_id,
        "duplicate_of": duplicate_of,
        "duplicate_reason": duplicate_reason,
        "status": status,
        "first_seen_at": seen_at,
        "run_id": ctx.run_id,
        "load_batch": load_batch,
        "ingest_date": seen_at.date(),
    }


def fetch_log_row(
    result: FetchResult,
    kind: str,
    ctx: RunContext,
    load_batch: str,
    n: int,
    raw: tuple[str | None, int | None],
    error: tuple[str | None, str | None] | None = None,
    size: int | None = None,
) -> dict:
    """``error`` overrides the fetch's own: a feed fetched fine can still fail to parse.
    ``size`` stands for the body's length when the body is no longer kept."""
    error_class, error_message = error if error and error[0] else (result.error_class, result.error_message)
    return {
        "fetch_id": f"{load_batch}-{kind[0]}{n:05d}",
        "run_id": ctx.run_id,
        "kind": kind,
        "url": result.url,
        "final_url": result.final_url,
        "status": result.status,
        "bytes": size if size is not None else len(result.body) if result.body is not None else None,
        "elapsed_ms": result.elapsed_ms,
        "attempts": result.attempts,
        "redirects": list(result.redirects),
        "error_class": error_class,
        "error_message": error_message,
        "fetched_at": result.fetched_at,
        "raw_path": raw[0],
        "raw_offset": raw[1],
        "load_batch": load_batch,
        "ingest_date": result.fetched_at.date(),
    }


EXTRACTION_COLUMNS = (
    "title", "author", "published_at", "language", "sitename", "description", "categories", "tags", "image",
    "canonical_url", "text", "text_chars", "content_hash", "extractor", "extractor_version",
    "extractor_options", "extraction_error",
)  # fmt: skip  # what an extraction decides: what re-extraction replaces and keeps a copy of


def extraction_columns(
    ex: Extracted | None, entry: FeedEntry | None, canonical_url: str | None, text_hash: str | None
) -> dict:
    """The article columns an extraction decides. The feed entry's title, author and date win
    over the page's: publishers fill them in deliberately, pages often decorate them."""
    text = ex.text if ex else None
    return {
        "title": (entry.title if entry else None) or (ex.title if ex else None),
        "author": (entry.author if entry else None) or (ex.author if ex else None),
        "published_at": _published(entry.published_at if entry else None, ex.date if ex else None),
        "language": ex.language if ex else None,
        "sitename": ex.sitename if ex else None,
        "description": ex.description if ex else None,
        "categories": list(ex.categories)
        if ex and ex.categories
        else list(entry.categories if entry else ()),
        "tags": list(ex.tags) if ex else [],
        "image": ex.image if ex else None,
        "canonical_url": canonical_url,
        "text": text,
        "text_chars": len(text) if text else 0,
        "content_hash": text_hash,
        "extractor": EXTRACTOR_NAME,
        "extractor_version": extractor_version(),
        "extractor_options": EXTRACTOR_OPTIONS_JSON,
        "extraction_error": ex.error if ex else "not extracted",
    }


def page_identity(ex: Extracted | None, final_url: str) -> tuple[str | None, str | None]:
    """(canonical URL, content hash) of an extracted page: its dedup keys."""
    canonical = (ex and trusted_canonical(ex.page_url, final_url)) or canonicalize_url(final_url)
    return canonical, content_hash(ex.text if ex else None)


def article_row(
    page: PageArticle, ctx: RunContext, load_batch: str, raw: tuple[str | None, int | None]
) -> dict:
    job, result = page.job, page.result
    first = job.lead_entry
    decision = page.decision
    return {
        "article_id": page.article_id,
        "article_key": page.article_key,
        "version": page.version,
        "url": job.url,
        "url_key": job.url_key,
        "final_url": result.final_url,
        "feed_url": first.feed_url if first else None,
        "entry_key": first.entry_key if first else None,
        "guid": first.entry.guid if first else None,
        **extraction_columns(
            page.extracted, first.entry if first else None, page.canonical_url, page.content_hash
        ),
        "duplicate_of": decision.duplicate_of if decision else None,
        "duplicate_reason": decision.reason if decision else None,
        "http_status": result.status,
        "fetched_at": result.fetched_at,
        "raw_path": raw[0],
        "raw_offset": raw[1],
        "run_id": ctx.run_id,
        "load_batch": load_batch,
        "ingest_date": result.fetched_at.date(),
        # A new version keeps its article's story (warehouse.stories.assign_story_ids); a first
        # version is placed by its text.
        "story_id": page.previous.story_id if page.previous else None,
    }


RawRef = tuple[str | None, int | None]  # (WARC path under the data dir, record offset)


def archive_raw(
    location: Path | Storage,
    load_batch: str,
    results: Sequence[FetchResult],
    level: int = DEFAULT_GZIP_LEVEL,
) -> list[RawRef]:
    """Write the batch's response bodies to its WARC file (in the warehouse's storage: a data
    dir's recorded one, or the Storage given), gzipped at ``level``; one reference per result."""
    archive = RawArchiveWriter(location, raw_path_for(load_batch, datetime.now(UTC)), level)
    try:
        offsets = [archive.add(r) for r in results]
        path = archive.commit()
    except BaseException:
        archive.abort()
        raise
    return [(path, o) if o is not None else (None, None) for o in offsets]


def page_batch_rows(
    pages: Sequence[PageArticle],
    raw_refs: Sequence[RawRef],
    ctx: RunContext,
    load_batch: str,
    summary: RunSummary,
) -> dict[str, list[dict]]:
    """Rows for one batch of pages (entries, articles, fetch_log, and ``entry_updates``: the new
    state of stored entries whose page was fetched again); counts go to ``summary``."""
    rows: dict[str, list[dict]] = {"entries": [], "articles": [], "fetch_log": [], "entry_updates": []}
    now = datetime.now(UTC)
    for n, (page, raw) in enumerate(zip(pages, raw_refs, strict=True)):
        result = page.result
        rows["fetch_log"].append(fetch_log_row(result, "page", ctx, load_batch, n, raw))
        job = page.job
        entries = job.entries
        if result.ok:
            summary.pages_fetched += 1
            if page.unchanged:
                summary.refetched_unchanged += 1
            else:
                rows["articles"].append(article_row(page, ctx, load_batch, raw))
                summary.new_versions += 1 if page.previous else 0
                if page.extracted and page.extracted.text:
                    summary.articles_extracted += 1
                if page.decision and page.decision.duplicate_of:
                    summary.duplicates += 1
            for i, p in enumerate(entries):
                rows["entries"].append(
                    entry_row(
                        p, ctx, load_batch, now,
                        status="fetched" if i == 0 else "duplicate",
                        article_id=job.article_id,
                        duplicate_of=job.article_id if i else None,
                        duplicate_reason="url" if i else None,
                    )
                )  # fmt: skip
                summary.duplicates += 1 if i else 0
            rows["entry_updates"] += [
                entry_update_row(p, ctx, load_batch, now, resolved_to=job.article_id) for p in job.refreshed
            ]
            continue
        summary.pages_failed += 1
        summary.add_failure("page", result.url, result.error_class, result.error_message)
        transient = result.error_class in TRANSIENT_PAGE_ERRORS or result.status == 429
        if not transient:  # final: record the entries so they are not tried forever
            rows["entries"].extend(entry_row(p, ctx, load_batch, now, status="failed") for p in entries)
            rows["entry_updates"] += [entry_update_row(p, ctx, load_batch, now) for p in job.refreshed]
    return rows


def entry_update_row(
    p: PlannedEntry, ctx: RunContext, load_batch: str, seen_at: datetime, *, resolved_to: str | None = None
) -> dict:
    """The new state of a stored entry whose page was fetched again: the entry as the feed shows it
    now (its dates included, so that the same change does not trigger another fetch), and, when
    the page was fetched (``resolved_to``: its article), the article it resolves to.
    ``Warehouse.load_batch`` applies it in place (``first_seen_at``, ``run_id`` and ``load_batch``
    stay those of the first sighting)."""
    row = entry_row(p, ctx, load_batch, seen_at, status="fetched", article_id=resolved_to)
    row["page_fetched"] = resolved_to is not None
    return row


def known_entry_rows(
    known: Sequence[tuple[PlannedEntry, str]],
    no_link: Sequence[PlannedEntry],
    ctx: RunContext,
    load_batch: str,
) -> list[dict]:
    """Entries that needed no fetch: their link is already stored, or they have none."""
    now = datetime.now(UTC)
    rows = [
        entry_row(
            p, ctx, load_batch, now, status="duplicate", article_id=a, duplicate_of=a, duplicate_reason="url"
        )
        for p, a in known
    ]
    rows += [entry_row(p, ctx, load_batch, now, status="no_link") for p in no_link]
    return rows


def poll_observation(outcome: FeedOutcome, new_entries: int, now: datetime) -> PollObservation:
    """What one feed's poll tells its schedule."""
    r = outcome.result
    parsed = outcome.parsed
    dates = tuple(
        d for e in (parsed.entries if parsed else ()) for d in (e.published_at or e.updated_at,) if d
    )
    return PollObservation(
        at=now,
        ok=not outcome.failed,
        changed=parsed is not None,
        error_class=outcome.error_class,
        error_message=outcome.error_message,
        status=r.status,
        new_entries=new_entries,
        entries_in_feed=len(parsed.entries) if parsed else 0,
        entry_dates=dates,
        feed_hint_s=parsed.hint_interval_s if parsed else None,
        header_hint_s=header_hint_seconds(dict(r.headers), now) if r.status is not None else None,
        moved_to=r.permanently_moved_to,
    )


def feed_rows(
    outcomes: Sequence[FeedOutcome],
    specs: Mapping[str, object],
    previous: Mapping[str, Mapping],
    new_entry_counts: Mapping[str, int],
    now: datetime,
    policy: SchedulePolicy,
    rng: random.Random | None = None,
    run_id: str | None = None,
    keep_validators: Collection[str] = (),
) -> tuple[list[dict], list[dict]]:
    """The new state of each polled feed (validators, last status, schedule), and the events
    (moved, backoff, dead, revived, retired, recovered) to record beside it.

    Feeds in ``keep_validators`` keep their previous ETag, Last-Modified and body hash: the next
    poll then reads them whole again (entries of theirs still wait for a page)."""
    rows, events = [], []
    for o in outcomes:
        spec = specs[o.feed_url]
        prev = previous.get(o.feed_url) or {}
        r = o.result
        success = not o.failed
        parsed = o.parsed
        etag, last_modified = prev.get("etag"), prev.get("last_modified")
        retry = o.feed_url in keep_validators
        if success and r.status == 200 and not retry:
            etag, last_modified = r.header("etag"), r.header("last-modified")
        new_entries = new_entry_counts.get(o.feed_url, 0)
        update = next_schedule(
            o.feed_url,
            FeedSchedule.from_row(prev),
            poll_observation(o, new_entries, now),
            policy,
            getattr(spec, "override", None) or FeedOverride(),
            rng,
        )
        rows.append(
            {
                "feed_url": o.feed_url,
                "name": getattr(spec, "name", None) or prev.get("name"),
                "tags": list(getattr(spec, "tags", ()) or ()),
                "title": (parsed.title if parsed else None) or prev.get("title"),
                "site_url": (parsed.site_url if parsed else None) or prev.get("site_url"),
                "format": (parsed.format if parsed else None) or prev.get("format"),
                "language": (parsed.language if parsed else None) or prev.get("language"),
                "etag": etag,
                "last_modified": last_modified,
                "body_hash": o.body_hash if success and not retry else prev.get("body_hash"),
                "last_status": r.status,
                "last_fetched_at": now,
                "last_error_class": o.error_class,
                "last_error": o.error_message,
                "entries_seen": int(prev.get("entries_seen") or 0) + new_entries,
                "added_at": prev.get("added_at") or now,
                **update.schedule.columns(),
            }
        )
        events += [feed_event_row(e.feed_url, e.at, e.event, e.detail, run_id) for e in update.events]
    return rows, events


def feed_event_row(feed_url: str, at: datetime, event: str, detail: str | None, run_id: str | None) -> dict:
    return {
        "event_id": uuid.uuid4().hex,
        "feed_url": feed_url,
        "event_at": at,
        "event": event,
        "detail": (detail or "")[:1000] or None,
        "run_id": run_id,
    }

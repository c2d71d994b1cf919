"""Re-extraction: run the extractor again over the stored raw pages, without any network.

What changes is written in place on ``articles`` (the row then names the new extractor version and
options), and the values it replaces are kept in ``extraction_history``. An article whose new
extraction equals the stored one is left alone, so re-extracting twice changes nothing the
second time, and a killed re-extraction resumes where it stopped. ``duplicate_of`` is not
re-evaluated: a copy stays linked to its original.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tasks.extract import Extracted, ExtractJob
from tasks.load import EXTRACTION_COLUMNS, extraction_columns, page_identity
from tasks.parse import FeedEntry
from warehouse.raw_archive import read_raw_record
from warehouse.storage import Storage, as_storage


@dataclass(frozen=True)
class Candidate:
    article_id: str
    final_url: str
    raw_path: str
    raw_offset: int


def raw_jobs(location: Path | Storage, candidates: Sequence[Candidate]) -> tuple[list[ExtractJob], list[str]]:
    """Extraction jobs from the raw archive (a data dir's recorded storage, or the Storage given);
    the ids whose raw record is gone (pruned) apart."""
    storage = as_storage(location)  # resolved once, not per record
    jobs, missing = [], []
    for c in candidates:
        try:
            target, headers, body = read_raw_record(storage, c.raw_path, c.raw_offset)
        except (OSError, LookupError):
            missing.append(c.article_id)
            continue
        content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), None)
        jobs.append(
            ExtractJob(key=c.article_id, url=c.final_url or target, body=body, content_type=content_type)
        )
    return jobs, missing


def _entry_of(row: dict) -> FeedEntry | None:
    if not row.get("entry_key"):
        return None
    return FeedEntry(
        guid=row.get("guid"),
        link=row.get("url"),
        title=row.get("entry_title"),
        published_at=row.get("entry_published_at"),
        updated_at=None,
        summary=None,
        author=row.get("entry_author"),
        categories=tuple(row.get("entry_categories") or ()),
    )


def changes(
    current: Sequence[dict], extracted: Sequence[Extracted], run_id: str, load_batch: str
) -> tuple[list[dict], list[dict]]:
    """(history rows, updates) for the articles whose extraction differs from what is stored."""
    by_id = {row["article_id"]: row for row in current}
    now = datetime.now(UTC)
    history, updates = [], []
    for n, ex in enumerate(extracted):
        row = by_id.get(ex.key)
        if row is None:
            continue
        new = extraction_columns(ex, _entry_of(row), *page_identity(ex, row["final_url"]))
        if all(_same(row[c], new[c]) for c in EXTRACTION_COLUMNS):
            continue
        history.append(
            {
                "history_id": f"{load_batch}-{n:05d}",
                "article_id": row["article_id"],
                "replaced_at": now,
                **{c: row[c] for c in EXTRACTION_COLUMNS},
                "run_id": run_id,
                "load_batch": load_batch,
                "ingest_date": now.date(),
            }
        )
        updates.append({"article_id": row["article_id"], **new})
    return history, updates


def _same(stored, new) -> bool:
    if isinstance(stored, datetime) and isinstance(new, datetime):
        return stored == new
    if isinstance(stored, list | tuple) or isinstance(new, list | tuple):
        return list(stored or []) == list(new or [])
    return stored == new

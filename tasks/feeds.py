"""Feeds: the feed list (``feeds.toml``) and the conditional requests of one poll."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from tasks.fetch import ACCEPT_FEED, FetchRequest
from tasks.schedule import RETIRED, FeedOverride, FeedSchedule, is_due, parse_duration

OVERRIDE_KEYS = {"interval": "interval_s", "min_interval": "min_interval_s", "max_interval": "max_interval_s"}


@dataclass(frozen=True)
class FeedSpec:
    url: str
    name: str | None = None
    tags: tuple[str, ...] = ()
    override: FeedOverride = FeedOverride()  # per-feed `interval`, `min_interval`, `max_interval`


@dataclass(frozen=True)
class FeedValidators:
    """What the last successful fetch of a feed left us to send back (conditional GET)."""

    etag: str | None = None
    last_modified: str | None = None
    body_hash: str | None = None


@dataclass(frozen=True)
class DueFeeds:
    """The feeds one poll fetches, chosen from the list by their schedules."""

    due: tuple[FeedSpec, ...]
    schedules: Mapping[str, FeedSchedule]  # every listed feed's stored schedule (default when new)
    listed: int

    @property
    def fetch_urls(self) -> dict[str, str]:
        """Feeds that moved (permanent redirect): feed_url -> where to fetch it now."""
        return {s.url: self.schedules[s.url].fetch_url for s in self.due if self.schedules[s.url].fetch_url}


def due_feeds(
    specs: list[FeedSpec], stored: Mapping[str, Mapping], now: datetime, poll_all: bool = False
) -> DueFeeds:
    """The listed feeds whose next poll is due at ``now`` (new feeds are due at once).

    ``poll_all`` takes every listed feed, due or not, dead included, but never a retired one
    (it answered 410 Gone: ``newsflow feeds revive`` brings it back)."""
    schedules = {s.url: FeedSchedule.from_row(stored.get(s.url)) for s in specs}
    due = tuple(
        s for s in specs if (poll_all and schedules[s.url].state != RETIRED) or is_due(schedules[s.url], now)
    )
    return DueFeeds(due=due, schedules=schedules, listed=len(specs))


# --------------------------------------------------------------------------- feeds.toml


def load_feed_list(path: Path) -> list[FeedSpec]:
    """Read ``feeds.toml``: ``[[feeds]]`` tables with ``url``, optional ``name``, ``tags`` and
    schedule overrides ``interval`` (fixed), ``min_interval``, ``max_interval`` (``"15m"``, ``"2h"``,
    ``"1d"`` or seconds)."""
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    specs: list[FeedSpec] = []
    seen: set[str] = set()
    for i, item in enumerate(data.get("feeds", [])):
        url = item.get("url") if isinstance(item, dict) else None
        if not isinstance(url, str) or not url.strip():
            raise ValueError(f"{path}: feeds[{i}] has no url")
        url = url.strip()
        if url in seen:
            continue
        seen.add(url)
        tags = item.get("tags", [])
        if isinstance(tags, str):
            tags = [tags]
        if not isinstance(tags, list):
            raise ValueError(f"{path}: feeds[{i}].tags must be a string or a list of strings")
        override = {}
        for key, field_name in OVERRIDE_KEYS.items():
            if key in item:
                try:
                    override[field_name] = parse_duration(item[key])
                except ValueError as exc:
                    raise ValueError(f"{path}: feeds[{i}].{key}: {exc}") from None
        specs.append(
            FeedSpec(
                url=url,
                name=item.get("name"),
                tags=tuple(str(t) for t in tags),
                override=FeedOverride(**override),
            )
        )
    return specs


def feed_requests(
    specs: list[FeedSpec],
    validators: Mapping[str, FeedValidators],
    max_bytes: int,
    fetch_urls: Mapping[str, str] | None = None,
) -> list[FetchRequest]:
    """One conditional GET per feed: the stored ETag and Last-Modified are sent back, to the URL
    the feed moved to (``fetch_urls``, after a permanent redirect) or else its own."""
    requests = []
    for spec in specs:
        v = validators.get(spec.url, FeedValidators())
        requests.append(
            FetchRequest(
                url=(fetch_urls or {}).get(spec.url) or spec.url,
                max_bytes=max_bytes,
                etag=v.etag,
                last_modified=v.last_modified,
                accept=ACCEPT_FEED,
            )
        )
    return requests

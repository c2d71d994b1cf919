"""Feeds: the feed list (``feeds.toml``) and the conditional requests of one poll."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tasks.fetch import ACCEPT_FEED, FetchRequest


@dataclass(frozen=True)
class FeedSpec:
    url: str
    name: str | None = None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class FeedValidators:
    """What the last successful fetch of a feed left us to send back (conditional GET)."""

    etag: str | None = None
    last_modified: str | None = None
    body_hash: str | None = None


# --------------------------------------------------------------------------- feeds.toml


def load_feed_list(path: Path) -> list[FeedSpec]:
    """Read ``feeds.toml``: ``[[feeds]]`` tables with ``url``, optional ``name`` and ``tags``."""
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
        specs.append(FeedSpec(url=url, name=item.get("name"), tags=tuple(str(t) for t in tags)))
    return specs


def feed_requests(
    specs: list[FeedSpec], validators: Mapping[str, FeedValidators], max_bytes: int
) -> list[FetchRequest]:
    """One conditional GET per feed: the stored ETag and Last-Modified are sent back."""
    requests = []
    for spec in specs:
        v = validators.get(spec.url, FeedValidators())
        requests.append(
            FetchRequest(
                url=spec.url,
                max_bytes=max_bytes,
                etag=v.etag,
                last_modified=v.last_modified,
                accept=ACCEPT_FEED,
            )
        )
    return requests

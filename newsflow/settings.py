"""The one settings object. Built once per run (CLI command or flow run) and passed down.

Every field can be set from the environment with the ``NEWSFLOW_`` prefix, e.g.
``NEWSFLOW_DATA_DIR=/srv/news`` or ``NEWSFLOW_ALLOW_PRIVATE_NETWORKS=1``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from newsflow import __version__

DEFAULT_USER_AGENT = f"newsflow/{__version__} (+https://github.com/newsflow/newsflow; news archiving bot)"

DASK_LOCAL = "local"  # NEWSFLOW_DASK=local: a Dask cluster on this machine, for the run
_DASK_OFF = ("", "off", "none")
_DASK_ADDRESS = re.compile(r"^(tcp|tls|ws|wss|ucx)://[^\s/]+$")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NEWSFLOW_", frozen=True, extra="ignore")

    # Where things are
    data_dir: Path = Path("data")
    feeds_file: Path = Path("feeds.toml")
    storage_url: str | None = Field(
        None,
        description="Where the Parquet files and the raw archive are kept: any fsspec URL "
        "(file:///srv/news-files, s3://bucket/news with s3fs installed, memory:// in tests). Unset: "
        "the data dir. The DuckDB file and the writer lock stay in the data dir. The first writer "
        "records the URL in <data_dir>/newsflow.storage; readers follow the record, and a writer "
        "given another URL is refused (warehouse/storage.py).",
    )

    # Network safety
    allow_private_networks: bool = Field(
        False,
        description="Allow loopback, private, link-local, CGNAT and unique-local addresses "
        "(tests, the demo, intranets). Off by default: such addresses are refused on every hop.",
    )
    user_agent: str = DEFAULT_USER_AGENT
    connect_timeout: float = 10.0
    read_timeout: float = 20.0
    request_deadline: float = 45.0  # total wall time for one request, redirects included
    max_feed_bytes: int = 15 * 1024 * 1024  # decoded body cap for feed documents
    max_page_bytes: int = 10 * 1024 * 1024  # decoded body cap for article pages
    max_redirects: int = 5
    retries: int = 2  # extra attempts on transient failures only
    retry_backoff: float = 1.0  # seconds, doubled at each attempt
    retry_after_cap: float = 60.0  # never wait longer than this inside one run

    # Politeness
    host_concurrency: int = Field(2, ge=1, le=2)
    host_min_delay: float = 1.0  # seconds between the starts of two requests to one host
    global_concurrency: int = 32
    respect_robots: bool = Field(
        True,
        description="Ask each host's robots.txt (RFC 9309) before fetching an article page; "
        "a disallowed page is recorded, not fetched. Feeds are not checked (the user chose them).",
    )
    max_crawl_delay: float = Field(30.0, ge=0)  # cap on a robots.txt Crawl-delay, in seconds
    robots_cache_hours: float = Field(
        24.0,
        ge=0,
        description="How long a robots.txt a host answered (2xx, or 4xx = no rules) is reused by "
        "later runs; RFC 9309 section 2.4 advises against more than 24 hours. 0: every run asks. "
        "An unavailable robots.txt (5xx, unreachable) is never reused: the next run asks again.",
    )

    # Feed schedule (tasks/schedule.py), in seconds. Per-feed `interval`, `min_interval` and
    # `max_interval` in feeds.toml override the bounds.
    feed_min_interval: float = Field(300, gt=0)  # never poll a feed more often than this
    feed_max_interval: float = Field(86400, gt=0)  # nor less often than this while it answers
    feed_first_interval: float = Field(3600, gt=0)  # before anything is known of a feed's rate
    feed_backoff_base: float = Field(600, gt=0)  # first wait after a failure; doubles per failure
    feed_backoff_cap: float = Field(43200, gt=0)
    feed_dead_after_failures: int = Field(10, ge=1)  # failures in a row that make a feed dead
    feed_dead_after: float = Field(7 * 86400, gt=0)  # ... or failing for this long
    feed_dead_probe_interval: float = Field(3 * 86400, gt=0)  # how often a dead feed is re-probed

    # Work sizes
    max_entries_per_feed: int = 200  # new entries taken from one feed per run; the rest next run
    batch_size: int = 200  # pages fetched, extracted and loaded per transaction
    extract_workers: int = Field(default_factory=lambda: os.cpu_count() or 1)
    extract_timeout: float = Field(
        60.0,
        ge=0,
        description="Seconds one page may take to extract; a page over it is given up with an "
        "extraction error (its worker process is killed) and the run goes on. 0: no limit, and "
        "with one worker the extraction then runs in the flow's own process.",
    )

    feed_parse_timeout: float = Field(
        60.0,
        ge=0,
        description="Seconds one feed document may take to parse (in a worker process); a feed "
        "over it is recorded as a parse_error and the run goes on. Parsing costs about 20 us per "
        "element: a 15 MiB document of empty elements would hold a poll for over a minute. 0: no "
        "limit, and the feeds are then parsed in the flow's own process.",
    )

    dask: str | None = Field(
        None,
        description="Extract pages on a Dask cluster (prefect-dask's DaskTaskRunner; the 'dask' extra): "
        "'local' starts a distributed.LocalCluster of extract_workers processes on 127.0.0.1 for the "
        "run; 'tcp://host:8786' uses the scheduler running there. Unset or 'off': the run's own "
        "process pool. Fetching and the warehouse writes stay in the flow's process either way.",
    )

    # Retention (the maintenance flow): days of raw archive (WARC) to keep; None keeps everything.
    # Articles are never pruned; an article whose raw page is gone can no longer be re-extracted.
    raw_retention_days: int | None = Field(None, ge=0)
    # gzip level of the raw archive's records. 3 measured on the corpus's 173 MB of HTML: 1.0 s
    # and 37.1 MB, against 2.2 s and 33.1 MB at 6 (and 0.85 s, 39.5 MB at 1): CPU that a poll
    # otherwise takes from extraction, for an archive 12% larger. 9 for the smallest files.
    raw_gzip_level: int = Field(3, ge=1, le=9)

    # Warehouse writer lock
    lock_timeout: float = 900.0  # seconds a second writer waits before giving up cleanly

    @field_validator("dask", mode="before")
    @classmethod
    def _dask_target(cls, value: object) -> str | None:
        return dask_target(value)

    @property
    def duckdb_path(self) -> Path:
        return self.data_dir / "newsflow.duckdb"

    @property
    def parquet_dir(self) -> Path:
        return self.data_dir / "parquet"

    @property
    def raw_dir(self) -> Path:
        return self.data_dir / "raw"


def dask_target(value: object) -> str | None:
    """``NEWSFLOW_DASK`` as a run uses it: None (off), 'local', or a scheduler address
    ('host:8786' is read as TCP). Raises ValueError for anything else."""
    if value is None or str(value).strip().lower() in _DASK_OFF:
        return None
    value = str(value).strip()
    if value.lower() == DASK_LOCAL:
        return DASK_LOCAL
    if "://" not in value:
        value = f"tcp://{value}"
    if not _DASK_ADDRESS.match(value):
        raise ValueError(f"not 'local', 'off' or a Dask scheduler address (tcp://host:port): {value!r}")
    return value


def build_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit (non-None) overrides on top."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})

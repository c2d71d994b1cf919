"""Shared fixtures: loopback sites, settings for tests, one Prefect test harness per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from newsflow.loopback import LoopbackSite
from newsflow.settings import Settings

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("NEWSFLOW_CORPUS_DIR", REPO.parent / "shared" / "corpus"))

# Tests talk to loopback servers only, with no politeness delay and small timeouts.
TEST_ENV = {
    "NEWSFLOW_ALLOW_PRIVATE_NETWORKS": "1",
    "NEWSFLOW_HOST_MIN_DELAY": "0",
    "NEWSFLOW_EXTRACT_WORKERS": "1",
    # In-process extraction (no worker process to start per run); the time limit has its own tests.
    "NEWSFLOW_EXTRACT_TIMEOUT": "0",
    "NEWSFLOW_FEED_PARSE_TIMEOUT": "0",  # likewise for feed parsing
    "NEWSFLOW_CONNECT_TIMEOUT": "2",
    "NEWSFLOW_READ_TIMEOUT": "2",
    "NEWSFLOW_REQUEST_DEADLINE": "5",
    "NEWSFLOW_RETRY_BACKOFF": "0.05",
    "NEWSFLOW_LOCK_TIMEOUT": "120",
}


@pytest.fixture
def newsflow_env(monkeypatch, tmp_path) -> Path:
    """Environment for one in-process run; returns a fresh data dir."""
    for key in list(os.environ):
        if key.startswith("NEWSFLOW_"):
            monkeypatch.delenv(key)
    for key, value in TEST_ENV.items():
        monkeypatch.setenv(key, value)
    data_dir = tmp_path / "data"
    monkeypatch.setenv("NEWSFLOW_DATA_DIR", str(data_dir))
    return data_dir


@pytest.fixture
def settings(tmp_path) -> Settings:
    """Settings for calling stage functions directly (no environment involved)."""
    return Settings(
        data_dir=tmp_path / "data",
        allow_private_networks=True,
        host_min_delay=0,
        extract_workers=1,
        extract_timeout=0,
        feed_parse_timeout=0,
        connect_timeout=2,
        read_timeout=2,
        request_deadline=5,
        retry_backoff=0.05,
    )


@pytest.fixture
def site():
    with LoopbackSite("127.0.0.1") as s:
        yield s


@pytest.fixture
def site_factory():
    """Start extra sites, e.g. on 127.0.0.2 and 127.0.0.3 to simulate several hosts."""
    started: list[LoopbackSite] = []

    def make(host: str = "127.0.0.1", routes=None) -> LoopbackSite:
        s = LoopbackSite(host, 0, routes).start()
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


@pytest.fixture(scope="session")
def prefect_api():
    """One temporary Prefect server for the whole session; yields its API URL so that
    subprocesses (the CLI) can use it instead of starting their own."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_ANALYTICS_ENABLED, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    # The test server must not try to reach Prefect's telemetry host (only loopback here).
    with (
        temporary_settings({PREFECT_SERVER_ANALYTICS_ENABLED: False}),
        prefect_test_harness(server_startup_timeout=120),
    ):
        yield PREFECT_API_URL.value()


def subprocess_env(prefect_api: str, data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEWSFLOW_", "PREFECT_"))}
    env.update(TEST_ENV)
    env["NEWSFLOW_DATA_DIR"] = str(data_dir)
    env["PREFECT_API_URL"] = prefect_api
    env.update(extra)
    return env


def latest_artifact(key: str):
    """The newest Prefect artifact with this key (from the session's test server)."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def latest():
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
            )
            return max(found, key=lambda a: a.created)

    return asyncio.run(latest())


def warehouse_rows(data_dir: Path, sql: str, params=None) -> list[tuple]:
    """Rows of ``sql`` from the warehouse's DuckDB file, opened read-only (no writer running)."""
    import duckdb

    try:
        con = duckdb.connect(str(data_dir / "newsflow.duckdb"), read_only=True)
    except duckdb.IOException as exc:
        # A writer killed with a write-ahead log DuckDB must write to replay: read it as the
        # next writer will (the replay is what any next run does first).
        if "replaying WAL" not in str(exc):
            raise
        con = duckdb.connect(str(data_dir / "newsflow.duckdb"))
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()

"""The deployment path for real: prefect.yaml deployed to a Prefect server on loopback, run by a
process worker; and ``newsflow serve`` running the same deployments in one process."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import duckdb
import pytest
from builders import RSS, feeds_toml, make_story, measured, page_route, rss_feed
from conftest import TEST_ENV

from newsflow.loopback import Route

REPO = Path(__file__).resolve().parents[1]
PREFECT = [sys.executable, "-m", "prefect"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited: {proc.stdout.read() if proc.stdout else ''}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:  # noqa: S310 - loopback only
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError("prefect server did not become healthy")


@pytest.fixture
def feed_site(site, tmp_path):
    stories = [make_story(i, seed=11) for i in range(3)]
    for s in stories:
        site.routes[f"/d/{s.slug}.html"] = page_route(s)
    site.routes["/rss.xml"] = Route(
        body=rss_feed([(s, site.url(f"/d/{s.slug}.html"), s.slug) for s in stories]), content_type=RSS
    )
    feeds = tmp_path / "feeds.toml"
    feeds.write_text(feeds_toml([site.url("/rss.xml")]))
    site.feeds_file = feeds
    return site


def _env(api_url: str, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEWSFLOW_", "PREFECT_"))}
    env.update(TEST_ENV)
    env.update(
        PREFECT_API_URL=api_url,
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="WARNING",
    )
    return env


def _articles(data_dir: Path) -> int:
    con = duckdb.connect(str(data_dir / "newsflow.duckdb"), read_only=True)
    try:
        return con.execute("SELECT count(*) FROM articles WHERE text IS NOT NULL").fetchone()[0]
    finally:
        con.close()


def test_prefect_yaml_deployed_to_a_server_and_run_by_a_process_worker(tmp_path, feed_site):
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = _env(api, tmp_path / "prefect-home")
    server = subprocess.Popen(
        PREFECT + ["server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env={**env, "PREFECT_API_URL": ""}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        _wait_healthy(api, server)

        def prefect(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
            done = subprocess.run(
                PREFECT + ["--no-prompt", *args],
                env=env,
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            assert done.returncode == 0, (args, done.stdout[-3000:], done.stderr[-3000:])
            return done

        prefect("work-pool", "create", "newsflow", "--type", "process")
        deployed = prefect("deploy", "--all")
        for name in ("newsflow-poll/poll", "newsflow-maintenance/maintenance", "newsflow-backfill/backfill"):
            assert name in deployed.stdout, deployed.stdout[-2000:]
        shown = prefect("deployment", "inspect", "newsflow-poll/poll").stdout
        assert "*/15 * * * *" in shown and "UTC" in shown

        data = tmp_path / "data"
        prefect(
            "deployment", "run", "newsflow-poll/poll",
            "--param", f"feeds_file={feed_site.feeds_file}", "--param", f"data_dir={data}",
        )  # fmt: skip
        # A process worker picks the run up, executes it in a subprocess from the project directory.
        prefect("worker", "start", "--pool", "newsflow", "--run-once", timeout=240)
        assert _articles(data) == 3  # only the worker's run of the deployment can have written these
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


def test_newsflow_serve_runs_the_same_deployments(prefect_api, tmp_path, feed_site):
    data = tmp_path / "data"
    env = _env(prefect_api, tmp_path / "home")
    serve = subprocess.Popen(
        [sys.executable, "-m", "newsflow.cli", "serve", "--prefect-file", str(REPO / "prefect.yaml"),
         "--data-dir", str(data), "--feeds", str(feed_site.feeds_file)],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        from prefect.deployments import run_deployment

        async def run_poll():
            deadline = time.monotonic() + 90
            while True:  # until serve has registered its deployments
                try:
                    return await run_deployment("newsflow-poll/poll", timeout=180)
                except Exception:
                    if time.monotonic() > deadline or serve.poll() is not None:
                        raise
                    await asyncio.sleep(1)

        flow_run = asyncio.run(run_poll())
        assert flow_run.state.is_completed(), flow_run.state
        assert flow_run.parameters["data_dir"] == str(data)
        assert _articles(data) == 3
    finally:
        os.killpg(serve.pid, signal.SIGINT)
        try:
            serve.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)


def _start_serve(env: dict, data: Path, feeds: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "newsflow.cli", "serve", "--prefect-file", str(REPO / "prefect.yaml"),
         "--data-dir", str(data), "--feeds", str(feeds)],
        env=env, cwd=REPO, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def _stop(proc: subprocess.Popen, sig: int = signal.SIGINT) -> None:
    try:
        os.killpg(proc.pid, sig)
        proc.wait(timeout=20)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def test_a_runner_killed_mid_poll_leaves_no_stuck_slot_and_no_zombie_run(prefect_api, tmp_path, site):
    """``newsflow serve`` killed with SIGKILL while its poll run holds the warehouse: Prefect
    still shows that run "Running" and its deployment's only concurrency slot taken (its lease
    would expire in 5 minutes on a server, never on a temporary one). The next ``newsflow serve``
    finds the dead writer in the lock file, marks its run crashed (which frees the slot), and the
    next poll runs at once and completes the work; nothing is lost or doubled."""
    import threading

    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    held = threading.Event()
    release = threading.Event()
    stories = [make_story(i, seed=13) for i in range(2)]
    slow_page = page_route(stories[0])

    def held_page(h):  # the first run's request waits here until its runner has been killed
        held.set()
        release.wait(60)
        h.send_response(200)
        h.send_header("Content-Type", slow_page.content_type)
        h.send_header("Content-Length", str(len(slow_page.body)))
        h.end_headers()
        h.wfile.write(slow_page.body)

    site.routes["/held.html"] = Route(handler=held_page)
    site.routes["/quick.html"] = page_route(stories[1])
    site.routes["/rss.xml"] = Route(
        body=rss_feed(
            [(stories[0], site.url("/held.html"), "a"), (stories[1], site.url("/quick.html"), "b")]
        ),
        content_type=RSS,
    )
    feeds = tmp_path / "feeds.toml"
    feeds.write_text(feeds_toml([site.url("/rss.xml")]))
    data = tmp_path / "data"
    env = _env(prefect_api, tmp_path / "home")

    def start_poll(timeout: float, serve: subprocess.Popen, log: Path):
        # Only once this serve has registered its deployments: registering the same deployment
        # again (an earlier test or serve did) deletes the runs it has scheduled.
        deadline = time.monotonic() + 120
        while "being served" not in log.read_text():
            assert serve.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        return run_deployment("newsflow-poll/poll", timeout=timeout)

    async def state_of(run_id):
        async with get_client() as client:
            return (await client.read_flow_run(run_id)).state

    first_serve = _start_serve(env, data, feeds, tmp_path / "serve1.log")
    second_serve = None
    try:
        first = start_poll(0, first_serve, tmp_path / "serve1.log")
        assert held.wait(120), (tmp_path / "serve1.log").read_text()[-3000:]
        os.killpg(first_serve.pid, signal.SIGKILL)  # the runner and its flow run's process
        first_serve.wait(timeout=20)
        assert asyncio.run(state_of(first.id)).is_running()  # Prefect cannot know
        assert (data / ".writer.lock").read_text().strip()  # the dead holder's name is still there
        release.set()

        second_serve = _start_serve(env, data, feeds, tmp_path / "serve2.log")
        started = time.monotonic()
        second = start_poll(150, second_serve, tmp_path / "serve2.log")
        took = time.monotonic() - started
        log = (tmp_path / "serve2.log").read_text()
        measured(
            "crashed_slot_holder",
            "runner killed mid-poll: seconds until the next poll completed",
            seconds=took,
        )
        assert second.state.is_completed(), (second.state, log[-3000:])
        assert took < 90, took
        crashed = asyncio.run(state_of(first.id))
        assert crashed.is_crashed(), crashed
        assert "died while it held the warehouse" in crashed.message and str(first.id) in crashed.message
        assert "died without finishing" in log, log[-3000:]
    finally:
        release.set()
        _stop(first_serve, signal.SIGKILL)
        if second_serve is not None:
            _stop(second_serve)
    con = duckdb.connect(str(data / "newsflow.duckdb"), read_only=True)
    try:
        urls = [u for (u,) in con.execute("SELECT url FROM articles WHERE text IS NOT NULL").fetchall()]
    finally:
        con.close()
    assert sorted(urls) == sorted([site.url("/held.html"), site.url("/quick.html")])  # none lost, none twice

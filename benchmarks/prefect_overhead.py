"""Prefect overhead: what a flow run and a task run cost, the fixed start-up cost of a command, and
how many task runs a real poll of ~1,000 articles creates.

    python benchmarks/prefect_overhead.py                  # all three parts (~15 min on 2 cores)
    python benchmarks/prefect_overhead.py --parts micro startup --runs 1 --output /tmp/po.json

Parts:
- ``micro``: in a fresh interpreter, an empty flow run and flows of ``--tasks`` trivial task runs
  (called, and submitted to the flow's thread pool), against a running ``prefect server start``
  on loopback and against the temporary server a bare command starts (no ``PREFECT_API_URL``):
  ms per flow run, ms per task run (the slope), the first flow run, the temporary server's start.
- ``startup``: the fixed cost of ``newsflow poll`` on an empty feed list, broken down in one
  instrumented interpreter (imports of prefect, of the rest of newsflow, temporary server start,
  first and second poll run, delivery of the last events, exit), and the whole command timed in
  variants: temporary server (first run ever, and later runs), Prefect settings that lighten the
  temporary server, a running server (``PREFECT_API_URL``).
- ``poll``: the corpus served on loopback (``corpus_sites.py``), then ``newsflow poll`` against a
  running server; the task runs of that flow run read back with the Prefect client (by task name),
  and the share of the poll's wall time spent in Prefect bookkeeping (task runs x the per-task cost
  of ``micro`` + the flow run's cost). PASS when a poll of ~1,000 articles creates < 100 task runs.

Every measure runs ``--runs`` times (default 3): medians, with min and max. Everything talks to
loopback only; Prefect's home (its SQLite database) is a temporary directory, never ``~/.prefect``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

from bench_common import environment, print_table, write_results

REPO_ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve()
MAX_TASK_RUNS = 100  # per poll of ~1,000 articles: one task per batch, never one per article
# What `newsflow` sets for itself (newsflow.cli._quiet_prefect); the micro flows get the same.
QUIET_PREFECT = {
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_LOGGING_LEVEL": "ERROR",
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    "PREFECT_CLIENT_MAX_RETRIES": "2",
}
# Only a limit (no effect on a start that succeeds): Prefect's 20 s default is not always enough
# for a first run (migrations of a new database) on a loaded 2-core machine.
STARTUP_TIMEOUT = {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}
# Variants of the temporary server, each the environment added to a bare `newsflow poll`.
STARTUP_VARIANTS: dict[str, dict[str, str]] = {
    "temporary server, later runs (default)": {},
    "temporary server, no block registration, no migration check": {
        "PREFECT_API_BLOCKS_REGISTER_ON_START": "false",
        "PREFECT_API_DATABASE_MIGRATE_ON_START": "false",
    },
    "temporary server, in-memory database": {
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": "sqlite+aiosqlite:///:memory:",
    },
}


# --------------------------------------------------------------------------- helpers


def _stats(values: Sequence[float], digits: int = 1) -> dict[str, Any]:
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "runs": [round(v, digits) for v in values],
    }


def _free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(
    prefect_home: Path, api_url: str | None = None, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """This environment without any Prefect API or profile choice, Prefect's home in a temporary
    directory, newsflow's own quiet settings, the repository importable."""
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_PROFILE")}
    env.update(QUIET_PREFECT)
    env.update(STARTUP_TIMEOUT)
    env["PREFECT_HOME"] = str(prefect_home)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(REPO_ROOT)]))
    if api_url:
        env["PREFECT_API_URL"] = api_url
    env.update(extra or {})
    return env


def _command(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise FileNotFoundError(f"the {name} command is not installed")
    return found


def timed_run(cmd: Sequence[str], env: dict[str, str], timeout: float = 600.0) -> tuple[float, int, str]:
    """(seconds, exit code, end of stderr) of a command in its own process group."""
    started = time.perf_counter()
    with subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as proc:
        try:
            _, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, stderr = proc.communicate()
    return time.perf_counter() - started, proc.returncode, (stderr or "")[-1500:]


def run_child(
    mode: str, env: dict[str, str], args: Sequence[str] = (), timeout: float = 900.0, attempts: int = 3
) -> dict[str, Any]:
    """This script in a fresh interpreter (``--child MODE``); its JSON result, plus
    ``spawn_wall`` (time.time() just before the start) and ``exit_wall`` (after it ended)."""
    with tempfile.TemporaryDirectory(prefix="newsflow-po-child-") as tmp:
        out = Path(tmp) / "out.json"
        cmd = [sys.executable, str(HERE), "--child", mode, "--child-output", str(out), *args]
        for attempt in range(1, attempts + 1):
            spawn = time.time()
            seconds, code, stderr = timed_run(cmd, env, timeout)
            if code == 0 and out.exists():
                break
            # On a loaded machine the SQLite-backed API may answer 503 (database busy): counted, retried.
            FAILURES.append({"what": f"child {mode}", "exit_code": code, "stderr_tail": stderr[-600:]})
            print(f"  child {mode} failed (exit {code}), attempt {attempt}/{attempts}", file=sys.stderr)
        else:
            raise RuntimeError(f"child {mode} failed (exit {code}): {stderr}")
        data = json.loads(out.read_text(encoding="utf-8"))
    data.update(spawn_wall=spawn, exit_wall=spawn + seconds, seconds=seconds)
    return data


FAILURES: list[dict[str, Any]] = []  # failed attempts that were retried, reported in the JSON


class RunningServer:
    """``prefect server start`` on 127.0.0.1 (UI off), its database in ``home``."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = _free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.log = home / "server.log"
        self.proc: subprocess.Popen | None = None
        self.ready_seconds: float | None = None

    def start(self, timeout: float = 120.0) -> RunningServer:
        import httpx

        cmd = [_command("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(self.port),
               "--no-ui", "--analytics-off"]  # fmt: skip
        started = time.perf_counter()
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                cmd, env=base_env(self.home), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        while time.perf_counter() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"prefect server exited ({self.proc.returncode}): {self.log.read_text()[-1500:]}"
                )
            try:
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    self.ready_seconds = time.perf_counter() - started
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"prefect server not ready after {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def __enter__(self) -> RunningServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def code_measured() -> dict[str, Any]:
    """Which newsflow code ran: the checkout the ``tasks`` package is imported from (a private
    worktree via PYTHONPATH, or this repository), its commit, and whether it had local changes."""
    import importlib.util

    spec = importlib.util.find_spec("tasks")
    where = Path(spec.origin).resolve().parents[1] if spec and spec.origin else REPO_ROOT

    def git(*args: str) -> str:
        proc = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "path": str(where),
        "commit": git("rev-parse", "--short", "HEAD") or None,
        "local_changes": bool(status),
    }


# --------------------------------------------------------------------------- children


def child_micro(out: Path, n_tasks: int, reps: int) -> None:
    """Empty flow runs and flows of n trivial task runs, timed in this interpreter."""
    t0 = time.perf_counter()
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE

    imported = time.perf_counter() - t0
    result: dict[str, Any] = {"import_prefect_s": imported, "temporary_server_start_s": None}
    if not os.environ.get("PREFECT_API_URL"):
        from prefect.server.api.server import SubprocessASGIServer

        t = time.perf_counter()
        SubprocessASGIServer().start()  # what the first flow run would do (the same instance)
        result["temporary_server_start_s"] = time.perf_counter() - t

    @task(cache_policy=NO_CACHE, persist_result=False)
    def trivial(i: int) -> int:
        return i

    @flow(name="bench-empty")
    def empty() -> None:
        return None

    @flow(name="bench-called")
    def called(n: int) -> int:
        return sum(trivial(i) for i in range(n))

    @flow(name="bench-submitted")
    def submitted(n: int) -> int:
        return sum(f.result() for f in [trivial.submit(i) for i in range(n)])

    def clock(fn: Callable[[], object]) -> float:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    result["first_flow_run_s"] = clock(empty)
    result["empty_flow_run_s"] = [clock(empty) for _ in range(reps)]
    result["called_flow_run_s"] = [clock(lambda: called(n_tasks)) for _ in range(reps)]
    result["submitted_flow_run_s"] = [clock(lambda: submitted(n_tasks)) for _ in range(reps)]
    result["n_tasks"] = n_tasks
    # The same empty flow run without the heartbeat thread, whose join ends every flow run: it
    # sleeps in 1 s steps (prefect/flow_engine.py _send_heartbeats), and no setting turns it off
    # (PREFECT_FLOWS_HEARTBEAT_FREQUENCY is an int >= 30). Patched here only to measure it.
    import prefect.flow_engine as engine

    engine.BaseFlowRunEngine.heartbeat_seconds = property(lambda self: None)  # type: ignore[assignment]
    result["empty_flow_run_no_heartbeat_s"] = [clock(empty) for _ in range(reps)]
    t = time.perf_counter()
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=30, at_exit=False)
    result["drain_events_s"] = time.perf_counter() - t
    out.write_text(json.dumps(result), encoding="utf-8")


def child_startup(out: Path, work: Path) -> None:
    """``newsflow poll`` on an empty feed list, its stages timed one by one (wall clock, so that
    the parent can add the interpreter's start and exit)."""
    marks: dict[str, float] = {"entry": time.time()}
    from newsflow import cli

    cli._quiet_prefect()
    import prefect  # noqa: F401
    from prefect import flow  # noqa: F401

    marks["prefect_imported"] = time.time()
    import flows.poll  # noqa: F401  (trafilatura, duckdb, pyarrow, ... what cmd_poll imports)

    marks["newsflow_imported"] = time.time()
    if not os.environ.get("PREFECT_API_URL"):
        from prefect.server.api.server import SubprocessASGIServer

        SubprocessASGIServer().start()
    marks["server_ready"] = time.time()
    feeds = work / "feeds.toml"
    feeds.write_text("# no feeds\n")
    codes = []
    for n in (1, 2):
        codes.append(cli.main(["poll", "--feeds", str(feeds), "--data-dir", str(work / f"data{n}")]))
        marks[f"poll_{n}_done"] = time.time()
    cli._deliver_prefect_events(cli.PREFECT_EXIT_WAIT)
    marks["events_delivered"] = time.time()
    out.write_text(json.dumps({"marks": marks, "exit_codes": codes}), encoding="utf-8")
    sys.stdout.flush()


# --------------------------------------------------------------------------- part micro


def measure_micro(runs: int, n_tasks: int, reps: int, work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"n_tasks": n_tasks, "repetitions_per_run": reps}
    home = work / "home-micro-running"
    home.mkdir()
    with RunningServer(home) as server:
        out["running_server_ready_s"] = round(server.ready_seconds or 0, 2)
        out["running"] = _micro_runs(runs, _prefect_defaults(base_env(home, server.api_url)), n_tasks, reps)
    home = work / "home-micro-temporary"
    home.mkdir()
    env = _prefect_defaults(base_env(home))
    run_child("micro", env, ["--tasks", "2", "--reps", "1"])  # first run ever: migrations
    out["temporary"] = _micro_runs(runs, env, n_tasks, reps)
    return out


def _prefect_defaults(env: dict[str, str]) -> dict[str, str]:
    """The micro flows measure Prefect itself: its own client retries, not newsflow's 2."""
    env.pop("PREFECT_CLIENT_MAX_RETRIES", None)
    return env


def _micro_runs(runs: int, env: dict[str, str], n_tasks: int, reps: int) -> dict[str, Any]:
    per: dict[str, list[float]] = {k: [] for k in (
        "command_s", "import_prefect_s", "temporary_server_start_s", "first_flow_run_ms", "flow_run_ms",
        "flow_run_no_heartbeat_ms", "task_run_called_ms", "task_run_submitted_ms", "drain_events_s",
    )}  # fmt: skip
    for n in range(runs):
        r = run_child("micro", env, ["--tasks", str(n_tasks), "--reps", str(reps)])
        empty = statistics.median(r["empty_flow_run_s"])
        per["command_s"].append(r["seconds"])
        per["import_prefect_s"].append(r["import_prefect_s"])
        if r["temporary_server_start_s"] is not None:
            per["temporary_server_start_s"].append(r["temporary_server_start_s"])
        per["first_flow_run_ms"].append(1000 * r["first_flow_run_s"])
        per["flow_run_ms"].append(1000 * empty)
        per["flow_run_no_heartbeat_ms"].append(1000 * statistics.median(r["empty_flow_run_no_heartbeat_s"]))
        per["task_run_called_ms"].append(1000 * (statistics.median(r["called_flow_run_s"]) - empty) / n_tasks)
        per["task_run_submitted_ms"].append(
            1000 * (statistics.median(r["submitted_flow_run_s"]) - empty) / n_tasks
        )
        per["drain_events_s"].append(r["drain_events_s"])
        print(f"  micro run {n + 1}/{runs}: flow {1000 * empty:.0f} ms, task "
              f"{per['task_run_called_ms'][-1]:.1f} ms called / {per['task_run_submitted_ms'][-1]:.1f} ms "
              f"submitted", file=sys.stderr, flush=True)  # fmt: skip
    return {k: _stats(v, 2 if k.endswith("_s") else 1) for k, v in per.items() if v}


# --------------------------------------------------------------------------- part startup


def measure_startup(runs: int, work: Path, empty_feeds: Path) -> dict[str, Any]:
    newsflow = _command("newsflow")
    out: dict[str, Any] = {}

    def poll_cmd(n: object) -> list[str]:
        return [
            newsflow,
            "poll",
            "--feeds",
            str(empty_feeds),
            "--data-dir",
            str(work / f"d-{time.time_ns()}-{n}"),
        ]

    # References: the interpreter alone, and the imports a poll needs.
    env0 = base_env(work / "home-unused")
    out["python_bare_s"] = _stats(
        [timed_run([sys.executable, "-c", "pass"], env0)[0] for _ in range(runs)], 2
    )
    out["python_import_prefect_s"] = _stats(
        [
            timed_run([sys.executable, "-c", "import prefect; from prefect import flow"], env0)[0]
            for _ in range(runs)
        ],
        2,
    )
    out["python_import_flows_poll_s"] = _stats(
        [timed_run([sys.executable, "-c", "import flows.poll"], env0)[0] for _ in range(runs)], 2
    )
    out["python_import_prefect_server_s"] = _stats(
        [timed_run([sys.executable, "-c", "import prefect.server.api.server"], env0)[0] for _ in range(runs)],
        2,
    )

    # The stages of one bare command (temporary server), in one instrumented interpreter.
    home = work / "home-breakdown"
    home.mkdir()
    run_child("startup", base_env(home), ["--work", str(work / "warm-breakdown")])  # first run ever
    stages: dict[str, list[float]] = {}
    for n in range(runs):
        r = run_child("startup", base_env(home), ["--work", str(work / f"breakdown-{n}")])
        m = r["marks"]
        points = [("interpreter start", r["spawn_wall"], m["entry"]),
                  ("import prefect", m["entry"], m["prefect_imported"]),
                  ("import the rest of newsflow (flows.poll)", m["prefect_imported"], m["newsflow_imported"]),
                  ("temporary server start", m["newsflow_imported"], m["server_ready"]),
                  ("first poll run (empty feed list)", m["server_ready"], m["poll_1_done"]),
                  ("second poll run (empty feed list)", m["poll_1_done"], m["poll_2_done"]),
                  ("deliver last events", m["poll_2_done"], m["events_delivered"]),
                  ("exit (temporary server stopped)", m["events_delivered"], r["exit_wall"])]  # fmt: skip
        for name, a, b in points:
            stages.setdefault(name, []).append(b - a)
    out["breakdown_temporary_server_s"] = {k: _stats(v, 2) for k, v in stages.items()}

    # The whole command, as a user runs it.
    commands: dict[str, Any] = {}
    cold = []
    for n in range(runs):
        fresh = work / f"home-cold-{n}"
        fresh.mkdir()
        cold.append(run_ok(lambda a, n=n: poll_cmd(f"{n}-{a}"), base_env(fresh), "first run ever"))
    commands["temporary server, first run ever (fresh PREFECT_HOME)"] = _stats(cold, 2)
    for name, extra in STARTUP_VARIANTS.items():
        home = work / f"home-{len(commands)}"
        home.mkdir()
        run_ok(lambda a: poll_cmd(f"w-{a}"), base_env(home), "warm-up poll")  # migrations, blocks
        times = []
        for n in range(runs):
            times.append(run_ok(lambda a, n=n: poll_cmd(f"{n}-{a}"), base_env(home, extra=extra), name))
        commands[name] = {**_stats(times, 2), "env": extra}
        print(f"  startup: {name}: {statistics.median(times):.2f} s", file=sys.stderr, flush=True)
    home = work / "home-running"
    home.mkdir()
    with RunningServer(home) as server:
        run_ok(lambda a: poll_cmd(f"w-{a}"), base_env(home, server.api_url), "warm-up poll")
        times = []
        for n in range(runs):
            times.append(
                run_ok(lambda a, n=n: poll_cmd(f"{n}-{a}"), base_env(home, server.api_url), "running server")
            )
        commands["running server (PREFECT_API_URL)"] = {
            **_stats(times, 2),
            "env": {"PREFECT_API_URL": "http://127.0.0.1:<port>/api"},
        }
        # Where the command's remaining time goes with a running server.
        r = run_child("startup", base_env(home, server.api_url), ["--work", str(work / "breakdown-running")])
        m = r["marks"]
        out["breakdown_running_server_s"] = {
            "interpreter start": round(m["entry"] - r["spawn_wall"], 2),
            "import prefect": round(m["prefect_imported"] - m["entry"], 2),
            "import the rest of newsflow (flows.poll)": round(
                m["newsflow_imported"] - m["prefect_imported"], 2
            ),
            "first poll run (empty feed list)": round(m["poll_1_done"] - m["server_ready"], 2),
            "second poll run (empty feed list)": round(m["poll_2_done"] - m["poll_1_done"], 2),
            "deliver last events": round(m["events_delivered"] - m["poll_2_done"], 2),
            "exit": round(r["exit_wall"] - m["events_delivered"], 2),
        }
    out["commands_s"] = commands
    # Ephemeral mode refused and no API URL: not a speed-up, a guard (the command fails at once).
    home = work / "home-no-ephemeral"
    home.mkdir()
    seconds, code, err = timed_run(
        poll_cmd(0), base_env(home, extra={"PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "false"})
    )
    out["no_api_url_ephemeral_mode_off"] = {
        "seconds": round(seconds, 2), "exit_code": code, "stderr_tail": err.strip().splitlines()[-1:] if err else []
    }  # fmt: skip
    return out


def run_ok(cmd: Callable[[int], list[str]], env: dict[str, str], what: str, attempts: int = 3) -> float:
    """Seconds of the first attempt that exits 0 (``cmd(attempt)``: a fresh data dir each time);
    failed attempts are kept in FAILURES."""
    for attempt in range(1, attempts + 1):
        seconds, code, err = timed_run(cmd(attempt), env, timeout=1800)
        if code == 0:
            return seconds
        FAILURES.append(
            {"what": what, "exit_code": code, "seconds": round(seconds, 2), "stderr_tail": err[-600:]}
        )
        print(f"  {what}: newsflow poll exited {code}, attempt {attempt}/{attempts}", file=sys.stderr)
    raise RuntimeError(f"{what}: newsflow poll exited {code}: {err}")


# --------------------------------------------------------------------------- part poll


def measure_poll(
    runs: int, work: Path, n_sites: int, max_pages: int | None, micro: dict | None
) -> dict[str, Any]:
    from corpus_sites import load_corpus, serve_corpus
    from throughput import POLL_ENV, warehouse_counts

    pages = load_corpus(max_pages=max_pages)
    home = work / "home-poll"
    home.mkdir()
    newsflow = _command("newsflow")
    polls: list[dict[str, Any]] = []
    with RunningServer(home) as server, serve_corpus(n_sites, pages=pages) as corpus:
        env = base_env(home, server.api_url, POLL_ENV)
        for n in range(runs):
            dirs: list[Path] = []

            def cmd(attempt: int, n: int = n, dirs: list[Path] = dirs) -> list[str]:
                dirs.append(work / f"poll-{n}-{attempt}")
                feeds = corpus.write_feeds_toml(dirs[-1] / "feeds.toml")
                return [newsflow, "poll", "--feeds", str(feeds), "--data-dir", str(dirs[-1])]

            seconds = run_ok(cmd, env, "corpus poll")
            data_dir = dirs[-1]
            counts = warehouse_counts(data_dir)
            task_runs = read_task_runs(server.api_url, str(data_dir))
            polls.append({"seconds": round(seconds, 2), "articles": counts["articles"], **task_runs})
            print(f"  poll {n + 1}/{runs}: {counts['articles']} articles in {seconds:.1f} s, "
                  f"{task_runs['task_runs']} task runs", file=sys.stderr, flush=True)  # fmt: skip
    out: dict[str, Any] = {
        "pages_served": len(pages),
        "sites": n_sites,
        "poll_env": POLL_ENV,
        "polls": polls,
        "seconds": _stats([p["seconds"] for p in polls], 2),
        "task_runs": max(p["task_runs"] for p in polls),
        "task_runs_by_name": polls[0]["task_runs_by_name"],
        "articles": polls[0]["articles"],
    }
    out["check"] = {
        "rule": f"task runs < {MAX_TASK_RUNS} for a poll of ~1,000 articles",
        "passed": out["task_runs"] < MAX_TASK_RUNS,
    }
    if micro and "running" in micro:
        out["bookkeeping_estimate"] = bookkeeping(out, micro["running"])
    return out


def read_task_runs(api_url: str, data_dir: str, settle: float = 60.0) -> dict[str, Any]:
    """The task runs of the poll flow run whose ``data_dir`` parameter is ``data_dir``, by task
    name. Task runs reach the server as events: wait until every one is in a final state and the
    count holds still."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId

    with SyncPrefectClient(api_url) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["newsflow-poll"])))
        run = next(r for r in runs if r.parameters.get("data_dir") == data_dir)
        flt = FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
        deadline, previous, task_runs = time.monotonic() + settle, -1, []
        while time.monotonic() < deadline:
            task_runs = client.read_task_runs(flow_run_filter=flt, limit=200)
            final = all(t.state is not None and t.state.is_final() for t in task_runs)
            if final and len(task_runs) == previous:
                break
            previous = len(task_runs)
            time.sleep(1.0)
    by_name = Counter(t.name.rsplit("-", 1)[0] for t in task_runs)
    states = Counter(t.state.type.value if t.state else "none" for t in task_runs)
    return {
        "flow_run_id": str(run.id),
        "flow_run_state": run.state.type.value if run.state else None,
        "task_runs": len(task_runs),
        "task_runs_by_name": dict(sorted(by_name.items(), key=lambda kv: (-kv[1], kv[0]))),
        "task_run_states": dict(states),
    }


SUBMITTED_TASKS = ("fetch-pages", "extract-pages", "archive-pages")  # flows/pipeline.py: .submit()


def bookkeeping(poll: dict[str, Any], running: dict[str, Any]) -> dict[str, Any]:
    """Prefect's share of the poll's wall time: task runs x per-task cost (called or submitted, as
    the poll runs them) + one flow run's cost (an empty flow run), against a running server."""
    by_name = poll["task_runs_by_name"]
    submitted = sum(n for name, n in by_name.items() if name in SUBMITTED_TASKS)
    called = sum(by_name.values()) - submitted
    called_ms = max(0.0, running["task_run_called_ms"]["median"])
    submitted_ms = max(0.0, running["task_run_submitted_ms"]["median"])
    flow_ms = running["flow_run_ms"]["median"]
    total_ms = called * called_ms + submitted * submitted_ms + flow_ms
    return {
        "task_runs_called": called,
        "task_runs_submitted": submitted,
        "ms_per_task_run_called": called_ms,
        "ms_per_task_run_submitted": submitted_ms,
        "ms_per_flow_run": flow_ms,
        "estimated_ms": round(total_ms, 1),
        "poll_seconds_median": poll["seconds"]["median"],
        "share_of_poll": round(total_ms / 1000 / poll["seconds"]["median"], 4),
    }


# --------------------------------------------------------------------------- report


def _print(results: dict[str, Any]) -> None:
    if micro := results.get("micro"):
        rows = []
        for name, key in (("running server (prefect server start)", "running"),
                          ("temporary server (no PREFECT_API_URL)", "temporary")):  # fmt: skip
            m = micro[key]
            server = m.get("temporary_server_start_s", {}).get("median")
            rows.append([name, m["flow_run_ms"]["median"], m["flow_run_no_heartbeat_ms"]["median"],
                         m["task_run_called_ms"]["median"],
                         m["task_run_submitted_ms"]["median"], m["first_flow_run_ms"]["median"],
                         m["import_prefect_s"]["median"], server, m["command_s"]["median"]])  # fmt: skip
        print_table(
            f"Prefect cost per run (medians of {len(micro['running']['flow_run_ms']['runs'])} runs; "
            f"task runs: slope over {micro['n_tasks']} trivial tasks)",
            ["API", "flow run ms", "without heartbeat join ms", "task called ms", "task submitted ms", "1st flow run ms",
             "import prefect s", "server start s", "whole script s"],
            rows,
        )  # fmt: skip
    if startup := results.get("startup"):
        rows = [
            [k, v["median"], v["min"], v["max"]] for k, v in startup["breakdown_temporary_server_s"].items()
        ]
        print_table("newsflow poll, empty feed list, temporary server: where the time goes (s)",
                    ["stage", "median", "min", "max"], rows)  # fmt: skip
        rows = [["python -c pass", *_mmm(startup["python_bare_s"])],
                ["python -c 'import prefect'", *_mmm(startup["python_import_prefect_s"])],
                ["python -c 'import flows.poll'", *_mmm(startup["python_import_flows_poll_s"])],
                ["python -c 'import prefect.server.api.server'", *_mmm(startup["python_import_prefect_server_s"])]]  # fmt: skip
        rows += [[f"newsflow poll: {k}", *_mmm(v)] for k, v in startup["commands_s"].items()]
        print_table("Fixed start-up cost of a command (s)", ["command", "median", "min", "max"], rows)
        off = startup["no_api_url_ephemeral_mode_off"]
        print(f"PREFECT_SERVER_ALLOW_EPHEMERAL_MODE=false, no PREFECT_API_URL: exit {off['exit_code']} "
              f"after {off['seconds']} s {off['stderr_tail']}")  # fmt: skip
    if poll := results.get("poll"):
        rows = [[name, n] for name, n in poll["task_runs_by_name"].items()]
        rows.append(["total", poll["task_runs"]])
        print_table(f"Task runs of one newsflow poll of {poll['articles']} articles (running server)",
                    ["task", "task runs"], rows)  # fmt: skip
        s = poll["seconds"]
        print(f"poll wall time: median {s['median']} s (min {s['min']}, max {s['max']}, runs {s['runs']})")
        if est := poll.get("bookkeeping_estimate"):
            print(f"Prefect bookkeeping (estimate): {est['task_runs_called']} called x {est['ms_per_task_run_called']} ms "
                  f"+ {est['task_runs_submitted']} submitted x {est['ms_per_task_run_submitted']} ms + one flow run "
                  f"{est['ms_per_flow_run']} ms = {est['estimated_ms']} ms = {100 * est['share_of_poll']:.2f} % "
                  f"of the poll")  # fmt: skip
        verdict = "PASS" if poll["check"]["passed"] else "FAIL"
        print(
            f"{verdict}: {poll['task_runs']} task runs for {poll['articles']} articles ({poll['check']['rule']})"
        )


def _mmm(s: dict[str, Any]) -> list[float]:
    return [s["median"], s["min"], s["max"]]


# --------------------------------------------------------------------------- main


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="What Prefect costs newsflow.")
    parser.add_argument(
        "--parts", nargs="+", choices=("micro", "startup", "poll"), default=["micro", "startup", "poll"]
    )
    parser.add_argument("--runs", type=int, default=3, help="repetitions of every measure (default 3)")
    parser.add_argument(
        "--tasks", type=int, default=100, help="trivial task runs per micro flow (default 100)"
    )
    parser.add_argument(
        "--reps", type=int, default=5, help="flow runs of each kind per micro run (default 5)"
    )
    parser.add_argument("--sites", type=int, default=20, help="loopback sites for the poll (default 20)")
    parser.add_argument("--max-pages", type=int, help="poll only this many corpus pages")
    parser.add_argument("--keep-data", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--output", type=Path, help="results JSON (default benchmarks/results/prefect_overhead.json)"
    )
    parser.add_argument("--child", choices=("micro", "startup"), help=argparse.SUPPRESS)
    parser.add_argument("--child-output", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.child == "micro":
        child_micro(args.child_output, args.tasks, args.reps)
        return 0
    if args.child == "startup":
        args.work.mkdir(parents=True, exist_ok=True)
        child_startup(args.child_output, args.work)
        return 0
    if "poll" in args.parts:
        from corpus_sites import CorpusMissing, require_corpus

        try:
            require_corpus()
        except CorpusMissing as exc:
            print(f"skipped: {exc}")
            return 0
    work = Path(tempfile.mkdtemp(prefix="newsflow-prefect-overhead-"))
    # This process reads task runs with the Prefect client: its home is temporary too.
    os.environ["PREFECT_HOME"] = str(work / "home-parent")
    os.environ.pop("PREFECT_API_URL", None)
    empty_feeds = work / "empty-feeds.toml"
    empty_feeds.write_text("# no feeds: the fixed cost of one poll run\n")
    from importlib.metadata import version

    results: dict[str, Any] = {
        "benchmark": "prefect_overhead",
        "environment": {**environment(), "prefect": version("prefect")},
        "newsflow_code": code_measured(),
        "runs": args.runs,
        "loadavg_1min_before": round(os.getloadavg()[0], 2),
    }
    try:
        if "micro" in args.parts:
            print("micro: empty flows and trivial task runs", file=sys.stderr, flush=True)
            results["micro"] = measure_micro(args.runs, args.tasks, args.reps, work)
        if "startup" in args.parts:
            print("startup: newsflow poll with an empty feed list", file=sys.stderr, flush=True)
            results["startup"] = measure_startup(args.runs, work, empty_feeds)
        if "poll" in args.parts:
            print("poll: newsflow poll of the corpus against a running server", file=sys.stderr, flush=True)
            results["poll"] = measure_poll(args.runs, work, args.sites, args.max_pages, results.get("micro"))
    finally:
        if not args.keep_data:
            shutil.rmtree(work, ignore_errors=True)
    results["loadavg_1min_after"] = round(os.getloadavg()[0], 2)
    results["failed_attempts_retried"] = FAILURES
    _print(results)
    print(f"results: {write_results(results, 'prefect_overhead.json', args.output)}")
    poll = results.get("poll")
    return 1 if poll and not poll["check"]["passed"] else 0


if __name__ == "__main__":
    sys.exit(main())

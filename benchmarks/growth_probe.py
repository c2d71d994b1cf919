"""``newsflow`` with timers on the warehouse's steps: what ``growth.py`` runs instead of the bare
command, to name where a poll's time goes as the warehouse grows.

    python benchmarks/growth_probe.py OUT.json poll --feeds F --data-dir D --all

Runs ``newsflow.cli.main`` with the given arguments, exactly as the ``newsflow`` command does,
after wrapping the warehouse methods below (total seconds and calls of each, in this process;
extraction runs in worker processes and is read from Prefect's task runs instead), and writes
them to OUT.json. The wrappers add a ``perf_counter`` pair per call: nothing measurable.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

# (module, object, attribute) -> the name of the step in the breakdown
STEPS = {
    ("warehouse.store", "Warehouse", "__init__"): "open (migrations)",
    ("warehouse.store", "Warehouse", "recover"): "recover",
    ("warehouse.store", "Warehouse", "close"): "close (checkpoint)",
    ("warehouse.store", "Warehouse", "entry_dates"): "entry lookups",
    ("warehouse.store", "Warehouse", "known_url_keys"): "entry lookups",
    ("warehouse.store", "Warehouse", "seen_entry_keys"): "entry lookups",
    ("warehouse.store", "Warehouse", "latest_versions"): "dedup lookups",
    ("warehouse.store", "Warehouse", "known_canonical_rows"): "dedup lookups",
    ("warehouse.store", "Warehouse", "known_hash_rows"): "dedup lookups",
    ("warehouse.store", "Warehouse", "article_keys"): "dedup lookups",
    ("warehouse.store", None, "assign_story_ids"): "story clustering",
    ("warehouse.stories", None, "postings"): "story: index lookup",
    ("warehouse.stories", None, "stored_articles"): "story: candidates",
    ("warehouse.store", "Warehouse", "load_batch"): "load_batch (all)",
    ("warehouse.store", "Warehouse", "_export_batch"): "load: Parquet export",
    ("warehouse.store", "Warehouse", "upsert_feeds"): "feeds: state",
    ("warehouse.store", "Warehouse", "feed_rows"): "feeds: state",
    ("warehouse.store", "Warehouse", "feed_validators"): "feeds: state",
    ("warehouse.store", "Warehouse", "feed_health"): "feeds: health",
    ("warehouse.store", "Warehouse", "record_run"): "snapshots",
    ("warehouse.store", "Warehouse", "export_snapshots"): "snapshots",
    ("warehouse.hosts", None, "seed_state"): "politeness state",
    ("warehouse.hosts", None, "save_state"): "politeness state",
}

totals: dict[str, float] = defaultdict(float)
calls: dict[str, int] = defaultdict(int)
_depth: dict[str, int] = defaultdict(int)


def _timed(step: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if _depth[step]:  # a step calling itself (or another function of the same step): once
            return fn(*args, **kwargs)
        _depth[step] += 1
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            totals[step] += time.perf_counter() - started
            calls[step] += 1
            _depth[step] -= 1

    return wrapper


def install() -> None:
    import importlib

    for (module_name, owner_name, attr), step in STEPS.items():
        module = importlib.import_module(module_name)
        owner = getattr(module, owner_name) if owner_name else module
        setattr(owner, attr, _timed(step, getattr(owner, attr)))


def main() -> int:
    out = Path(sys.argv[1])
    started = time.perf_counter()
    install()
    from newsflow.cli import main as newsflow_main

    code = 1
    try:
        code = newsflow_main(sys.argv[2:])
    finally:
        data = {
            "steps": {k: {"seconds": round(v, 3), "calls": calls[k]} for k, v in sorted(totals.items())},
            "command_seconds": round(time.perf_counter() - started, 3),
            "returncode": code,
        }
        out.write_text(json.dumps(data, indent=2))
    return code


if __name__ == "__main__":
    raise SystemExit(main())

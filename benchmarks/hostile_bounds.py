"""The measured bounds of newsflow's defences, family by family (issue 6's closing table).

Runs the hostile-input and fault tests (``tests/hostile/``, the crash, disk-full, Prefect-API
and killed-runner tests) with ``HOSTILE_MEASURES_FILE`` set: each case writes down what it
measured (peak memory above the process's size before the case, seconds to give up, requests that
reached a forbidden address). The tests assert their bounds as always; this script collects the
numbers, prints one row per family (the worst case of the family) and writes them as JSON.

    python benchmarks/hostile_bounds.py                 # ~6 min on 2 cores
    python benchmarks/hostile_bounds.py --output /tmp/hb.json -k ssrf
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import environment, print_table, write_results

REPO = Path(__file__).resolve().parents[1]
TESTS = [
    "tests/hostile",
    "tests/test_crash.py",
    "tests/test_disk_full.py",
    "tests/test_prefect_unreachable.py",
    "tests/test_deploy.py::test_a_runner_killed_mid_poll_leaves_no_stuck_slot_and_no_zombie_run",
]


def worst_by_family(rows: list[dict]) -> dict[str, dict]:
    """Per family: how many cases, and the largest value of each measure with the case it came from."""
    families: dict[str, dict] = {}
    for row in rows:
        family = families.setdefault(row["family"], {"cases": 0})
        family["cases"] += 1
        for key, value in row.items():
            if key in ("family", "case") or not isinstance(value, int | float):
                continue
            best = family.get(key)
            if best is None or value > best["value"]:
                family[key] = {"value": value, "case": row["case"]}
    return families


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--output", type=Path, help="results file (default benchmarks/results/hostile_bounds.json)"
    )
    parser.add_argument("-k", help="only the tests matching this pytest expression")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        measures = Path(tmp) / "measures.jsonl"
        env = {**os.environ, "HOSTILE_MEASURES_FILE": str(measures)}
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS]
        if args.k:
            command += ["-k", args.k]
        started = time.monotonic()
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)  # noqa: S603
        took = time.monotonic() - started
        summary = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
        if done.returncode != 0:
            print(done.stdout[-5000:], done.stderr[-3000:], file=sys.stderr)
            print(f"the tests failed ({summary}): no bounds recorded", file=sys.stderr)
            return 1
        rows = [json.loads(line) for line in measures.read_text().splitlines()] if measures.exists() else []

    families = worst_by_family(rows)
    print(f"{summary} in {took:.0f} s; load average {os.getloadavg()[0]:.1f}")

    def worst(family: dict, key: str, fmt: str) -> str | None:
        found = family.get(key)
        return f"{found['value']:{fmt}} ({found['case']})" if found else None

    print_table(
        "newsflow's defences: the worst case of each family",
        ["family", "cases", "peak memory MB", "seconds", "forbidden hits", "other"],
        [
            [
                name,
                family["cases"],
                worst(family, "peak_mb", ".1f"),
                worst(family, "seconds", ".2f"),
                family["forbidden_hits"]["value"] if "forbidden_hits" in family else None,
                ", ".join(
                    f"{key} {value['value']:g}"
                    for key, value in family.items()
                    if key not in ("cases", "peak_mb", "seconds", "forbidden_hits")
                )
                or None,
            ]
            for name, family in sorted(families.items())
        ],
    )
    path = write_results(
        {
            "environment": environment(),
            "load_average": os.getloadavg(),
            "tests": summary,
            "seconds": round(took, 1),
            "families": families,
            "cases": rows,
        },
        "hostile_bounds.json",
        args.output,
    )
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

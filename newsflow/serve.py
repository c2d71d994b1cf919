"""``newsflow serve``: the deployments of ``prefect.yaml`` served from one process.

For a user without a work pool: the same flows, schedules, parameters and concurrency limits as
``prefect deploy --all``, read from the same file, so the two never drift apart.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml
from prefect import Flow
from prefect.client.schemas.objects import ConcurrencyLimitConfig
from prefect.schedules import Cron


def load_flow(entrypoint: str, root: Path) -> Flow:
    """``flows/poll.py:poll_flow`` -> the flow object (the file is imported as its module)."""
    path, name = entrypoint.rsplit(":", 1)
    module_name = Path(path).with_suffix("").as_posix().replace("/", ".")
    spec = importlib.util.spec_from_file_location(module_name, root / path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {entrypoint}")
    try:
        module = importlib.import_module(module_name)  # the installed package, when it is one
    except ImportError:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return getattr(module, name)


def deployments_from_yaml(prefect_yaml: Path, overrides: dict | None = None) -> list:
    """RunnerDeployments for every deployment in ``prefect.yaml``; ``overrides`` replace
    parameters of every deployment that has them (e.g. ``data_dir``)."""
    config = yaml.safe_load(prefect_yaml.read_text())
    root = prefect_yaml.parent
    out = []
    for d in config.get("deployments", []):
        flow = load_flow(d["entrypoint"], root)
        parameters = dict(d.get("parameters") or {})
        for key, value in (overrides or {}).items():
            if key in parameters and value is not None:
                parameters[key] = value
        limit = d.get("concurrency_limit")
        if isinstance(limit, dict):
            limit = ConcurrencyLimitConfig(**limit)
        schedules = [
            Cron(s["cron"], timezone=s.get("timezone"), active=s.get("active", True))
            for s in d.get("schedules") or []
            if "cron" in s
        ]
        out.append(
            flow.to_deployment(
                name=d["name"],
                description=d.get("description"),
                parameters=parameters,
                schedules=schedules or None,
                concurrency_limit=limit,
            )
        )
    return out


def reclaim_dead_writers(data_dirs: list[Path], logger) -> list[dict]:
    """At start-up: for each warehouse whose last writer died holding it (a runner killed with
    SIGKILL, say), report it and mark its flow run crashed, which frees its deployment's
    concurrency slot. Without this, the poll deployment (concurrency limit 1) would wait for the
    dead run's slot lease to expire: about 5 minutes on a Prefect server, and for ever on the
    temporary one, whose leases live in memory. A warehouse being written right now is left
    alone. Returns the dead holders found."""
    from flows.reporting import dead_writer_reporter
    from warehouse.lock import WarehouseBusy, WriterLock

    found = []
    for data_dir in dict.fromkeys(data_dirs):
        if not (data_dir / ".writer.lock").exists():
            continue
        lock = WriterLock(
            data_dir,
            0,
            "newsflow serve start-up check",
            on_dead_holder=dead_writer_reporter("newsflow serve at start-up", logger),
        )
        try:
            with lock:
                pass
        except WarehouseBusy:
            continue  # a live writer has it
        if lock.dead_holder is not None:
            found.append(lock.dead_holder)
    return found


def warehouse_dirs(deployments: list) -> list[Path]:
    """The ``data_dir`` parameters of the deployments."""
    return [Path(d.parameters["data_dir"]) for d in deployments if d.parameters.get("data_dir")]

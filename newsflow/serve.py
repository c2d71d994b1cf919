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

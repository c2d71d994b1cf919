"""Prefect flows: thin orchestration of the tasks in ``tasks``."""

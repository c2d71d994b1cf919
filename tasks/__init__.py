"""The units of work, one module per stage: feeds -> fetch -> parse -> extract -> dedup.

The modules here are plain typed functions that know nothing of Prefect (they run in worker
processes too). ``tasks.prefect_tasks`` wraps them as Prefect tasks for the flows.
"""

"""Fuzzing harness: one target per parser (targets.py), run by run.py."""

"""Benchmarks (``make bench``): Conveyor against raw Celery and a bare endpoint, measured in the same run."""

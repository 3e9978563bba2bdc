"""Benchmarks of the kit against what a user would write without it; run `python benchmarks/run.py`."""

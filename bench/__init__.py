"""Benchmarks for AICode Manager: ``make bench`` (``python bench/run.py``); see docs/performance.md."""

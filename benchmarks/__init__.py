"""Benchmark suites (pytest-benchmark) and the report generator (``python -m benchmarks.report``)."""

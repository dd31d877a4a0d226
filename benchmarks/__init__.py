"""Benchmarks: commands that write JSON + Markdown tables (never timed unit tests)."""

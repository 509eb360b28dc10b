"""Benchmarks: not steps of the flow. `quality` (`make bench-quality`), `speed` (`make bench`), `doc` (their shared docs/benchmarks.md sections)."""

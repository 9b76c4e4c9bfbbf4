"""Speed and probe scripts beside the benchmark rows; run from the repository root as ``python -m benchmarks.NAME``
(README.md lists them)."""

"""The streaming benchmark: `python -m bench.run --help`. Results and method: docs/performance.md."""

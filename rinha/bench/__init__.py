"""Benchmarks as code: `python -m rinha.bench` (micro-benchmarks of the hot path) and
`python -m rinha.bench k6` (an official scenario against the whole stack, see k6run.py)."""

"""BluPow benchmarks: ``scripts/bench`` runs :mod:`bench.run` (see docs/performance.md)."""

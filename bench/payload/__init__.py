"""Scripts that run inside containers during the benchmarks (standard library only)."""

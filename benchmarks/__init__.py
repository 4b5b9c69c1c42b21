"""Benchmark harness for aserve (see benchmarks/README.md)."""

"""Benchmarks: each prints JSON figures beside a naive baseline measured in the same run."""

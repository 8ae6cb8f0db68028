"""Benchmarks: each prints its figures next to a bare baseline measured in the same run."""

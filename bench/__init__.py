"""Reproducible benchmarks: each prints its raw baseline and ratio and writes a result file."""

"""Reproducible benchmarks; each prints its raw baseline, the ratio and the machine."""

"""Tests of the indexer package: builds, seals, segment folders, the store, the worker."""

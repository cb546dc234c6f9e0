"""Searcher role: segment loading, the live tail, query execution and the Redis query protocol."""

"""Indexer role: consumer workers, segments, FAISS builds, snapshots and registry writes."""

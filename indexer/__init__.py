"""Indexer role: consumer workers, growing and sealed segments, FAISS builds, snapshots, registry writes."""

"""The model lifecycle: aliases, challenges, generations, compaction, snapshots, gc, the lock."""

"""The model lifecycle: collections, aliases, challenges, generations, compaction, snapshots, gc."""

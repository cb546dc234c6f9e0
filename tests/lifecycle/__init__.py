"""Tests of the lifecycle package: aliases, challenges, generations, gc, snapshots."""

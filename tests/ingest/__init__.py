"""Tests of the ingest package: names, partitions, records, specs, the producer."""

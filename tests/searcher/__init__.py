"""Tests of the searcher package: protocol, search, tail, engine, server, client."""

"""What the command modules share: parsing a collection name and a positive count."""

from __future__ import annotations

import argparse

from ingest.names import CollectionName


def collection_arg(text: str) -> str:
    """A validated, normalised collection name from the command line; InvalidName if not one."""
    return str(CollectionName.parse(text))


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value

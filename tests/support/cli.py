"""The `streamvec` command line as tests call it: the test's connections, then the command."""

from __future__ import annotations

from streamvec.settings import Settings


def argv(settings: Settings, *args: str) -> list[str]:
    """`streamvec` argv that points at the test's Kafka, Redis and segment store."""
    return ["--kafka", settings.kafka, "--redis", settings.redis_url, "--store",
            str(settings.store), *args]

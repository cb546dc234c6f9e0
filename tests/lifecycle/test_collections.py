"""Collection administration against real Kafka and Redis, through the API and the CLI."""

from __future__ import annotations

import pytest
from confluent_kafka.admin import AdminClient

from ingest import admin, catalog
from ingest.errors import CollectionExists, CollectionNotFound, IngestError
from ingest.spec import CollectionSpec
from lifecycle import collections
from streamvec.commands import main
from tests.support.cli import argv

pytestmark = pytest.mark.integration


def topics(settings) -> set[str]:
    return set(AdminClient(settings.kafka_config()).list_topics(timeout=10).topics)


def cli(settings, *args: str) -> int:
    """Run the `streamvec` command against the test's servers and store."""
    return main(argv(settings, *args))


def test_create_is_idempotent_and_refuses_another_spec(settings, collection_name):
    spec = CollectionSpec(collection_name, dim=8, metric="cosine", partitions=3)
    assert admin.create_collection(settings, spec) is True
    assert admin.create_collection(settings, spec) is False
    with pytest.raises(CollectionExists, match=r"dim: 8 != 16"):
        admin.create_collection(settings, CollectionSpec(collection_name, dim=16, partitions=3,
                                                         metric="cosine"))
    info = admin.describe_collection(settings, collection_name)
    assert info["spec"] == spec
    assert [p.partition for p in info["partitions"]] == [0, 1, 2]
    assert {f"sv.{collection_name}", f"sv.{collection_name}.dlq"} <= topics(settings)
    assert collection_name in [s.name for s in admin.list_collections(settings)]


def test_versioned_name_maps_to_its_own_topics(settings, collection_name):
    spec = CollectionSpec(f"{collection_name}@v2", dim=4, partitions=1)
    admin.create_collection(settings, spec)
    assert spec.model_version == "v2"
    assert {f"sv.{collection_name}.v2", f"sv.{collection_name}.v2.dlq"} <= topics(settings)
    stored = catalog.load_spec(settings.redis_client(), f"{collection_name}@v2")
    assert stored.model_version == "v2"
    assert settings.redis_client().exists(f"sv:{{{collection_name}@v2}}:spec") == 1


def test_drop_removes_topics_keys_and_snapshots(settings, collection_name):
    admin.create_collection(settings, CollectionSpec(collection_name, dim=4, partitions=2))
    folder = settings.store / collection_name
    folder.mkdir(parents=True)
    (folder / "seg").write_text("x")
    client = settings.redis_client()
    client.set(f"sv:{{{collection_name}}}:checkpoint", "1")
    collections.drop_collection(settings, collection_name)
    assert not folder.exists()
    assert list(client.scan_iter(match=f"sv:{{{collection_name}}}:*")) == []
    assert collection_name not in catalog.list_names(client)
    with pytest.raises(CollectionNotFound, match="does not exist"):
        admin.describe_collection(settings, collection_name)


def test_unbuildable_index_is_refused_before_anything_exists(settings, collection_name):
    with pytest.raises(IngestError, match=r"index 'IVF16,PQ7' cannot be built for dim 16"):
        admin.create_collection(settings, CollectionSpec(collection_name, dim=16,
                                                         index="IVF16,PQ7"))
    assert catalog.list_names(settings.redis_client()).count(collection_name) == 0
    assert f"sv.{collection_name}" not in topics(settings)


def test_cli_round_trip(settings, collection_name, capsys):
    assert cli(settings, "collection", "create", collection_name, "--dim", "12",
               "--partitions", "2") == 0
    assert f"collection {collection_name} created" in capsys.readouterr().out
    assert cli(settings, "collection", "describe", collection_name) == 0
    out = capsys.readouterr().out
    assert "dim            12" in out and f"sv.{collection_name}.dlq" in out
    assert cli(settings, "collection", "list") == 0
    assert collection_name in capsys.readouterr().out
    assert cli(settings, "collection", "drop", collection_name) == 2
    assert "add --yes" in capsys.readouterr().err
    assert cli(settings, "collection", "drop", collection_name, "--yes") == 0
    assert cli(settings, "collection", "describe", collection_name) == 3  # not found
    assert "does not exist" in capsys.readouterr().err


def test_cli_rejects_bad_names_and_specs(settings, capsys):
    assert cli(settings, "collection", "create", "Bad.Name", "--dim", "4") == 2
    assert "must match [a-z0-9][a-z0-9_-]{0,63}" in capsys.readouterr().err
    assert cli(settings, "collection", "create", "ok", "--dim", "0") == 2
    assert "dim must be 1..65536" in capsys.readouterr().err
    assert cli(settings, "collection", "create", "ok@dlq", "--dim", "4") == 2
    assert "reserved" in capsys.readouterr().err

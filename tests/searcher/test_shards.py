"""Shards without servers: labels, partition assignment, the map format, keys and the merge."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from searcher import protocol, shards
from searcher.errors import QueryError, SearchError, ShardMapError, ShardTimeout
from searcher.execute import Searchable, execute, validate
from searcher.query import Consistency, QueryAnswer, QueryRequest
from searcher.search import Source
from searcher.shards import Selection, Shard, ShardMap
from streamvec import redisconn


def test_labels_are_ascending_runs_and_parse_back() -> None:
    assert shards.label([9, 4, 5, 6, 7]) == "4-7,9"
    assert shards.label([0]) == "0"
    assert shards.label([3, 1]) == "1,3"
    assert shards.parse_partitions("4-7,9") == (4, 5, 6, 7, 9)
    assert shards.parse_partitions(" 2, 0-1 ") == (0, 1, 2)
    for parts in [(0, 1, 2, 3), (1, 3, 5), (0, 2, 3, 4, 1023)]:
        assert shards.parse_partitions(shards.label(parts)) == parts


@pytest.mark.parametrize(("text", "message"), [
    ("", "got nothing"),
    ("4-x", "'4-x' is not a partition number or a range"),
    ("7-4", "range 7-4 runs backwards"),
    ("1000-1024", "partition 1024 is over the limit of 1023"),
    ("1,,2", "'' is not a partition number"),
])
def test_bad_partition_lists_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(ShardMapError, match=message):
        shards.parse_partitions(text)


@pytest.mark.parametrize(("text", "message"), [
    ("2", "a shard is I/N"), ("0/2", "1 <= I <= N"), ("3/2", "1 <= I <= N"),
    ("1/2000", "N <= 1024"),
])
def test_bad_shard_choices_are_refused(text: str, message: str) -> None:
    with pytest.raises(ShardMapError, match=message):
        shards.parse_shard(text)


def test_shards_are_contiguous_blocks_that_cover_every_partition_once() -> None:
    assert [shards.block(8, i, 2) for i in (1, 2)] == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert [shards.block(10, i, 3) for i in (1, 2, 3)] == [
        (0, 1, 2, 3), (4, 5, 6), (7, 8, 9)]
    for total in range(1, 40):
        for count in range(1, total + 1):
            blocks = [shards.block(total, i, count) for i in range(1, count + 1)]
            assert [p for b in blocks for p in b] == list(range(total))
            assert max(map(len, blocks)) - min(map(len, blocks)) <= 1
    with pytest.raises(ShardMapError, match="3 shards need 1..2 of them"):
        shards.block(2, 1, 3)


def test_a_selection_resolves_against_the_topic() -> None:
    assert Selection.parse().resolve(8).whole
    second = Selection.parse(shard="2/2").resolve(8)
    assert (second.partitions, second.label, second.name) == ((4, 5, 6, 7), "4-7", "4-7")
    assert Selection.parse(partitions="0-7").resolve(8).label is None
    assert Selection.parse(partitions="6,1").resolve(8).label == "1,6"
    with pytest.raises(ShardMapError, match=r"partition\(s\) 8-9 do not exist: the collection "
                                            r"has 8 partitions"):
        Selection.parse(partitions="7-9").resolve(8)
    with pytest.raises(ShardMapError, match="not both"):
        Selection.parse(shard="1/2", partitions="0")


def test_shard_keys_carry_their_own_hash_tag_and_the_unsharded_keys_stay() -> None:
    assert protocol.queue_key("products") == "sv:{products}:q"
    assert protocol.queue_key("products", "4-7,9") == "sv:{products~4-7,9}:q"
    assert protocol.reply_key("products@v2", "ab", "0-3") == "sv:{products@v2~0-3}:r:ab"
    assert protocol.done_key("products", "ab", "0-3") == "sv:{products~0-3}:done:ab"
    keys = [protocol.queue_key("products", "0-3"), protocol.reply_key("products", "x", "0-3"),
            protocol.done_key("products", "x", "0-3")]
    assert redisconn.same_slot(keys)  # the reply script's three keys
    assert redisconn.same_slot([protocol.shard_map_key("products"),
                                protocol.shard_version_key("products"),
                                protocol.searchers_key("products"), "sv:{products}:spec"])
    with pytest.raises(ValueError, match="is not a list of partitions"):
        protocol.queue_key("products", "0-3}:x")


def test_a_shards_request_names_the_shards_reply_key() -> None:
    request = QueryRequest("r1", "products", np.ones((1, 3), np.float32), 5)
    fields = {k.encode(): v for k, v in protocol.encode_request(request, "4-7").items()}
    decoded = protocol.decode_request("products", fields, dim=3, shard="4-7")
    assert decoded.reply_key == "sv:{products~4-7}:r:r1"
    with pytest.raises(QueryError, match=r"field 'reply': must be 'sv:\{products\}:r:r1'"):
        protocol.decode_request("products", fields, dim=3)


def plan(version: int = 3) -> ShardMap:
    return ShardMap.plan(8, 2, version, actor="ops", updated_at=1.5)


def test_the_map_round_trips_through_its_json() -> None:
    stored = plan()
    doc = json.loads(stored.to_json())
    assert doc == {"format": 1, "version": 3, "partitions": 8,
                   "shards": [{"partitions": [0, 1, 2, 3]}, {"partitions": [4, 5, 6, 7]}],
                   "updated_at": 1.5, "actor": "ops"}
    assert ShardMap.from_json(stored.to_json()) == stored
    assert shards.map_of(b"3", stored.to_json().encode()) == stored
    assert shards.map_of(None, None) is None
    assert stored.owner(5).label == "4-7"
    assert stored.names(Shard((0, 1, 2, 3), 8)) and not stored.names(Shard((0, 1), 8))


def _doc(**change: object) -> str:
    doc = json.loads(plan().to_json())
    doc.update(change)
    return json.dumps(doc)


@pytest.mark.parametrize(("raw", "message"), [
    ("{", "shard map is not JSON"),
    ("[]", "must be a JSON object"),
    (_doc(format=2), "format must be 1, got '2'"),
    (_doc(version=0), "version must be an integer >= 1"),
    (_doc(version="3"), "version must be an integer >= 1"),
    (_doc(partitions=0), "partitions must be 1..1024"),
    (_doc(shards=[]), "shards must be a list of 1..8 shards"),
    (_doc(shards=[{"partitions": [0, 1, 2, 3]}, {"partitions": "4-7"}]),
     "shard 1: partitions must be a non-empty list of integers 0..7"),
    (_doc(shards=[{"partitions": [0, 1, 2, 3]}, {"partitions": [4, 5, 6, 8]}]),
     "shard 1: partitions must be a non-empty list of integers 0..7"),
    (_doc(shards=[{"partitions": [0, 1, 2, 3]}, {"partitions": [3, 4, 5, 6, 7]}]),
     "partition 3 is in two shards"),
    (_doc(shards=[{"partitions": [0, 1, 2, 3]}, {"partitions": [4, 5]}]),
     r"partition\(s\) 6-7 are in no shard"),
    (_doc(shards=[{"partitions": [0, 1, 2, 3]}, {"partitions": [7, 6, 5, 4]}]),
     "must be ascending and distinct"),
    ("{" + " " * shards.MAX_MAP_BYTES + "}", "over the limit"),
])
def test_a_malformed_map_is_refused_with_a_clear_error(raw: str, message: str) -> None:
    with pytest.raises(ShardMapError, match=message):
        ShardMap.from_json(raw)


def test_the_map_and_its_version_key_must_agree() -> None:
    with pytest.raises(ShardMapError, match="holds version 3, its version key 4"):
        shards.map_of(b"4", plan().to_json())
    with pytest.raises(ShardMapError, match="version is 2 but the map is missing"):
        shards.map_of(b"2", None)
    with pytest.raises(ShardMapError, match="'x1' is not a non-negative integer"):
        shards.map_of(b"x1", plan().to_json())


def test_a_layout_of_one_shard_is_the_whole_collection() -> None:
    assert shards.Layout.of(None, "ip") == shards.Layout(0, (), "ip")
    assert shards.Layout.of(ShardMap.plan(8, 1, 5), "l2") == shards.Layout(5, (), "l2")
    assert [s.label for s in shards.Layout.of(plan(), "l2").shards] == ["0-3", "4-7"]


def test_session_offsets_go_to_the_shard_that_serves_them() -> None:
    request = QueryRequest("r", "products", np.ones((1, 3), np.float32), 2,
                           consistency=Consistency("session", offsets={1: 10, 5: 20, 6: 0}))
    parts = shards.split(request, plan().shards)
    assert [(s.label, p.consistency.offsets, p.reply_key) for s, p in parts] == [
        ("0-3", {1: 10}, "sv:{products~0-3}:r:r"), ("4-7", {5: 20, 6: 0}, "sv:{products~4-7}:r:r")]
    strong = Consistency("strong")
    assert shards.consistency_for(strong, plan().shards[0]) is strong
    # The searcher side: a partition of another shard is not waited for; one that does not
    # exist still is, so the request times out saying so.
    assert shards.session_offsets({1: 10, 5: 20, 9: 1}, (4, 5, 6, 7), 8) == {5: 20, 9: 1}


def answer(ids: list[list[str]], scores: list[list[float]], offsets: dict[int, int] | None = None,
           metadata: list[list[dict | None]] | None = None, **timings: float) -> QueryAnswer:
    return QueryAnswer(ids, scores, metadata, offsets or {}, dict(timings))


def test_the_merge_orders_by_score_then_id_and_keeps_k() -> None:
    a = answer([["a3", "a1"], ["x"]], [[0.5, 1.0], [2.0]], {0: 4, 1: 7}, search=1.0)
    b = answer([["b0", "a0", "b2"], []], [[0.5, 0.9, 1.0], []], {5: 9}, search=3.0, wait=0.5)
    got = shards.merge([a, b], 3, "l2")
    # Equal scores (0.5, and 1.0 at the cut) are ordered by id, whichever shard holds them.
    assert got.ids == [["a3", "b0", "a0"], ["x"]]
    assert got.scores == [[0.5, 0.5, 0.9], [2.0]]
    assert got.offsets == {0: 4, 1: 7, 5: 9}
    assert got.timings_ms == {"search": 3.0, "wait": 0.5}
    assert got.metadata is None


def test_the_merge_of_similarities_puts_the_highest_first() -> None:
    a = answer([["p", "q"]], [[0.9, 0.1]])
    b = answer([["r", "s"]], [[0.9, 0.5]])
    for metric in ("ip", "cosine"):
        got = shards.merge([a, b], 3, metric)
        assert (got.ids, got.scores) == ([["p", "r", "s"]], [[0.9, 0.9, 0.5]])


def test_the_merge_skips_empty_slots_and_keeps_fewer_than_k() -> None:
    padded = answer([["a", None, None]], [[1.0, math.nan, math.nan]],
                    metadata=[[{"m": 1}, None, None]])
    short = answer([["b"]], [[0.5]], metadata=[[None]])
    got = shards.merge([padded, short], 10, "l2")
    assert (got.ids, got.scores, got.metadata) == ([["b", "a"]], [[0.5, 1.0]],
                                                  [[None, {"m": 1}]])
    assert shards.merge([answer([[]], [[]])], 4, "l2").ids == [[]]


def test_combine_names_the_shard_that_failed_or_marks_the_answer_partial() -> None:
    first, second = plan().shards
    ok = answer([["a"]], [[1.0]])
    with pytest.raises(ShardTimeout) as timeout:
        shards.combine("products", [(first, ok), (second, None)], 2, "l2", waited_s=7)
    assert timeout.value.shard == "4-7"
    assert str(timeout.value) == (
        "shard 4-7 of 'products' (stream sv:{products~4-7}:q) did not answer within 7s: is "
        "`streamvec searcher --collection products --partitions 4-7` running?")
    with pytest.raises(SearchError) as failed:
        shards.combine("products", [(first, QueryError("consistency_timeout", "late")),
                                    (second, ok)], 2, "l2")
    assert (failed.value.code, failed.value.message) == (
        "consistency_timeout", "shard 0-3 of products: late")
    partial = shards.combine("products", [(first, ok), (second, None)], 2, "l2", partial=True)
    assert (partial.answer.ids, partial.partial, partial.missing) == ([["a"]], True, ("4-7",))
    whole = shards.combine("products", [(first, ok), (second, ok)], 2, "l2", partial=True)
    assert not whole.partial
    with pytest.raises(ShardTimeout, match="shard 0-3"):
        shards.combine("products", [(first, None), (second, None)], 2, "l2", partial=True)


def test_a_searcher_orders_equal_scores_by_id_as_the_merge_does() -> None:
    # Four rows at the same distance from the query, stored in reverse id order in two sources.
    rows = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], np.float32)
    first, second = ["d", "c"], ["b", "a"]
    items = [Searchable(Source(rows[:2]), first.__getitem__, lambda r: None),
             Searchable(Source(rows[2:]), second.__getitem__, lambda r: None)]
    request = QueryRequest("r", "c", np.zeros((1, 2), np.float32), 3)
    got = execute([request], [validate(request, 2)], items, "l2", {})[0]
    assert got.ids == [["a", "b", "c"]] and got.scores == [[1.0, 1.0, 1.0]]


def test_adverts_round_trip_and_only_live_ready_ones_serve_a_shard() -> None:
    advert = shards.Advert("r1", "0-3", (0, 1, 2, 3), shards.ACTIVE, True, None, 2,
                           {0: 3, 1: 2, 2: 0, 3: 1}, {0: 10, 1: 9, 2: 0, 3: 4}, 100.0)
    assert shards.Advert.from_json(advert.to_json()) == advert
    assert advert.key == "0-3/r1"
    not_ready = shards.Advert("r2", "0-3", (0, 1, 2, 3), shards.STANDBY, False, "behind", 2,
                              {}, {}, 100.0)
    other = shards.Advert("r3", "4-7", (4, 5, 6, 7), shards.ACTIVE, True, None, 2, {}, {}, 100.0)
    first = plan().shards[0]
    assert shards.serving([advert, not_ready, other], first) == [advert]

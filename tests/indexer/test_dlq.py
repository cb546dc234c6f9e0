"""Dead letters as sent: headers naming the reason and origin, payloads cut to the copy limit."""

from __future__ import annotations

from indexer.dlq import HEADER_RESERVE_BYTES, MAX_KEY_COPY_BYTES, _recut, copy_limit, make_letter
from ingest.errors import RecordError


def letter_of(value: bytes, key: bytes | None = None, limit: int = 1024):
    """The dead letter of a bad_magic message at sv.products[2]@41."""
    return make_letter(
value, key, topic="sv.products", partition=2, offset=41,
                       error=RecordError("bad_magic", "magic is b'xyz'"), limit=limit)


def test_a_small_payload_is_copied_whole_with_its_reason_and_origin():
    letter = letter_of(b"garbage", key=b"id-1")
    assert letter.value == b"garbage"
    assert letter.key == b"id-1"
    assert dict(letter.headers) == {
        "sv-reason": b"bad_magic",
        "sv-error": b"magic is b'xyz'",
        "sv-source-topic": b"sv.products",
        "sv-source-partition": b"2",
        "sv-source-offset": b"41",
    }
    assert letter.origin == "sv.products[2]@41"


def test_a_payload_over_the_limit_is_cut_and_says_how_long_it_was():
    payload = bytes(range(256)) * 40  # 10240 bytes
    letter = letter_of(payload, limit=1000)
    assert letter.value == payload[:1000]
    headers = dict(letter.headers)
    assert headers["sv-truncated"] == b"10240"
    assert headers["sv-reason"] == b"bad_magic"
    assert headers["sv-source-offset"] == b"41"


def test_a_long_key_is_cut_too():
    letter = letter_of(b"x", key=b"k" * 5000)
    assert letter.key == b"k" * MAX_KEY_COPY_BYTES
    assert dict(letter.headers)["sv-truncated-key"] == b"5000"


def test_the_copy_limit_leaves_room_for_headers_under_the_topic_limit():
    assert copy_limit(16 * 2**20, 2**20) == 2**20
    assert copy_limit(2**20, 2**20) == 2**20 - HEADER_RESERVE_BYTES
    assert copy_limit(100, 2**20) == 0


def test_the_dead_letter_of_a_tombstone_is_a_tombstone_whatever_the_limit():
    letter = make_letter(None, None, topic="sv.products", partition=0, offset=7, limit=0,
                         error=RecordError("bad_id", "json: the record has no key"))
    assert letter.value is None and letter.key is None
    assert "sv-truncated" not in dict(letter.headers)
    assert dict(letter.headers)["sv-reason"] == b"bad_id"
    assert _recut(letter, 0) is letter
    assert letter.nbytes == sum(len(v) for _, v in letter.headers)

"""Consistency levels: when each one counts as reached."""

from __future__ import annotations

import threading

from searcher.consistency import Progress, reached
from searcher.query import Consistency

POSITIONS = {0: 10, 1: 4, 2: 0}


def test_eventual_is_always_reached() -> None:
    assert reached(Consistency("eventual"), None, {}, {}, 0.0)


def test_session_needs_every_named_offset_below_the_position() -> None:
    assert reached(Consistency("session", offsets={0: 9, 1: 3}), None, POSITIONS, {}, 0.0)
    assert not reached(Consistency("session", offsets={0: 10}), None, POSITIONS, {}, 0.0)
    assert not reached(Consistency("session", offsets={7: 0}), None, POSITIONS, {}, 0.0)
    assert reached(Consistency("session", offsets={}), None, POSITIONS, {}, 0.0)


def test_strong_needs_the_high_watermarks_seen_at_arrival() -> None:
    assert reached(Consistency("strong"), {0: 10, 1: 4, 2: 0}, POSITIONS, {}, 0.0)
    assert not reached(Consistency("strong"), {0: 11, 1: 4, 2: 0}, POSITIONS, {}, 0.0)
    assert not reached(Consistency("strong"), None, POSITIONS, {}, 0.0)


def test_bounded_needs_every_partition_caught_up_recently() -> None:
    level = Consistency("bounded", bound_ms=500)
    recent = {0: 99.8, 1: 99.6, 2: 100.0}
    assert reached(level, None, POSITIONS, recent, 100.0)
    assert not reached(level, None, POSITIONS, recent, 100.2)
    assert not reached(level, None, POSITIONS, {0: 100.0, 1: 100.0}, 100.0)


def test_progress_wakes_a_waiter_once_it_moved_past_what_the_waiter_saw() -> None:
    progress = Progress()
    seen = progress.version
    assert not progress.wait(seen, 0.001)  # nothing moved: the wait runs out
    progress.notify()
    assert progress.version == seen + 1
    assert progress.wait(seen, 30)  # moved since `seen`: answered without waiting
    now = progress.version
    woke: list[bool] = []
    waiter = threading.Thread(target=lambda: woke.append(progress.wait(now, 30)))
    waiter.start()
    progress.notify()  # before or after the waiter blocks: either way it returns True
    waiter.join(30)
    assert woke == [True]

"""Background threads lower their own priority, and only their own."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from streamvec import background


def in_thread(nice: int) -> tuple[int, int]:
    """(what lower_priority returned, the thread's niceness after) in a new thread."""
    got: list[int] = []

    def run() -> None:
        got.append(background.lower_priority(nice))
        got.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return got[0], got[1]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
def test_a_thread_lowers_its_own_priority_and_the_process_keeps_its_own() -> None:
    before = os.getpriority(os.PRIO_PROCESS, 0)
    returned, after = in_thread(3)
    assert returned == after == min(background.MAX_NICE, before + 3)
    assert os.getpriority(os.PRIO_PROCESS, 0) == before
    assert in_thread(100)[0] == background.MAX_NICE  # capped, not refused


def test_zero_changes_nothing_and_a_negative_value_is_refused() -> None:
    assert in_thread(0)[0] == -1
    with pytest.raises(ValueError, match="nice must be >= 0, got -1"):
        background.lower_priority(-1)
